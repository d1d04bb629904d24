"""Text from the database or a subprocess, made safe to show on a terminal.

One function, :func:`visible`, used by the CLI, the dashboard and the console log: every
character that could move the cursor, recolour or clear the screen, reorder what follows
(bidirectional overrides) or fail to encode (lone surrogates from undecodable bytes) is
replaced by a visible escape such as ``\\x1b`` or ``\\u202e``. Printable text, including
non-Latin scripts, is kept as it is. The result never interprets anything: markup such as
``[bold]`` stays literal text as long as the caller does not hand it to a markup parser.
"""

from __future__ import annotations

from typing import Any

__all__ = ["visible", "visible_value"]


def _escape(code: int) -> str:
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def _table(*, keep_newlines: bool) -> dict[int, str]:
    codes: list[int] = [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]
    # bidi marks, embeddings, overrides and isolates; line and paragraph separators
    codes += [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
    codes += [0x2028, 0x2029, 0xFEFF]
    codes += range(0xD800, 0xE000)  # lone surrogates: what surrogateescape leaves behind
    table = {code: _escape(code) for code in codes}
    if keep_newlines:
        del table[ord("\n")]
        del table[ord("\t")]
    return table


_SINGLE_LINE = _table(keep_newlines=False)
_MULTI_LINE = _table(keep_newlines=True)


def visible(text: object, *, newlines: bool = False) -> str:
    """``text`` with every control character written as a visible escape.

    ``newlines=True`` keeps line feeds and tabs (a tool's output shown as a block); a
    ``\\r\\n`` pair then counts as one line feed. Otherwise the result is one line.
    ``None`` becomes the empty string; other objects are converted with ``str()``.
    """
    if text is None:
        return ""
    if not isinstance(text, str):
        text = str(text)
    if newlines:
        return text.replace("\r\n", "\n").translate(_MULTI_LINE)
    return text.translate(_SINGLE_LINE)


def visible_value(value: Any, *, newlines: bool = False) -> Any:
    """:func:`visible` applied to every string inside a JSON-like value (keys included)."""
    if isinstance(value, str):
        return visible(value, newlines=newlines)
    if isinstance(value, dict):
        return {
            visible(key) if isinstance(key, str) else key: visible_value(item, newlines=newlines)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [visible_value(item, newlines=newlines) for item in value]
    return value
