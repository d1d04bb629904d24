"""Text made safe at the two edges: storable in PostgreSQL, and safe to show on a terminal.

:func:`storable` is the one door from bytes (a command's output, a plugin's text, an
exception's message) to text PostgreSQL accepts in ``text`` and ``jsonb``: NUL and bytes
that are not UTF-8 become visible escapes (``\\x00``, ``\\xff``), lone surrogates too
(what ``surrogateescape`` leaves behind, or a plugin's broken string), and the length is
bounded. :func:`storable_value` does the same for every string of a JSON-like value, and
makes the value itself something ``jsonb`` accepts (no NaN, no infinity, no objects JSON
cannot hold, bounded depth and size). Both are idempotent: storable text passes unchanged.

:func:`visible`, used by the CLI, the dashboard and the console log: every
character that could move the cursor, recolour or clear the screen, reorder what follows
(bidirectional overrides) or fail to encode (lone surrogates from undecodable bytes) is
replaced by a visible escape such as ``\\x1b`` or ``\\u202e``. Printable text, including
non-Latin scripts, is kept as it is. The result never interprets anything: markup such as
``[bold]`` stays literal text as long as the caller does not hand it to a markup parser.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Literal

__all__ = ["MAX_TEXT_CHARS", "storable", "storable_value", "visible", "visible_value"]

#: Longest text :func:`storable` returns unless told otherwise (characters).
MAX_TEXT_CHARS = 64 * 1024
#: How deep :func:`storable_value` follows nested lists and objects.
MAX_DEPTH = 32
#: Most items :func:`storable_value` keeps of one list or object.
MAX_ITEMS = 1000
#: Marks where :func:`storable` cut a text.
CUT = "…"

# NUL and the surrogate range: what PostgreSQL (or the UTF-8 encoder) refuses.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _escape_unstorable(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, kept by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    return _escape(code)


def storable(
    data: str | bytes | bytearray | None,
    *,
    limit: int = MAX_TEXT_CHARS,
    keep: Literal["head", "tail"] = "head",
) -> str:
    """Text PostgreSQL stores as it is, from any bytes or string.

    Bytes are decoded as UTF-8; what is not UTF-8 and every NUL become ``\\xNN`` escapes,
    a lone surrogate ``\\uXXXX``. Longer than ``limit`` characters, the text is cut and the
    cut marked with ``…``: ``keep="head"`` keeps the start (a message), ``"tail"`` the end
    (a command's output). Cut only text whose secrets are already masked: a cut can leave
    half a secret that no longer matches. ``None`` becomes the empty string.
    """
    if data is None:
        return ""
    if isinstance(data, bytes | bytearray):
        text = bytes(data).decode("utf-8", errors="surrogateescape")
    elif isinstance(data, str):
        text = data
    else:
        text = str(data)
    if _UNSTORABLE.search(text):
        text = _UNSTORABLE.sub(_escape_unstorable, text)
    if len(text) > limit:
        room = max(limit - len(CUT), 0)
        text = CUT + text[len(text) - room :] if keep == "tail" else text[:room] + CUT
    return text


def storable_value(value: Any, *, limit: int = MAX_TEXT_CHARS, _depth: int = 0) -> Any:
    """A copy of a JSON-like value that ``jsonb`` accepts: every string (keys included)
    through :func:`storable`; NaN and infinities as strings; bytes as text; other objects
    JSON cannot hold by their ``str()``; at most :data:`MAX_DEPTH` levels and
    :data:`MAX_ITEMS` items per list or object (the rest is replaced by a note)."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str | bytes | bytearray):
        return storable(value, limit=limit)
    if _depth >= MAX_DEPTH:
        return f"{CUT} (nested deeper than {MAX_DEPTH} levels)"
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for n, (key, item) in enumerate(value.items()):
            if n >= MAX_ITEMS:
                out[CUT] = f"{len(value) - MAX_ITEMS} more entries not kept"
                break
            name = storable(key if isinstance(key, str) else str(key), limit=1024)
            out[name] = storable_value(item, limit=limit, _depth=_depth + 1)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        items = list(value)
        kept = [storable_value(v, limit=limit, _depth=_depth + 1) for v in items[:MAX_ITEMS]]
        if len(items) > MAX_ITEMS:
            kept.append(f"{CUT} {len(items) - MAX_ITEMS} more items not kept")
        return kept
    return storable(str(value), limit=limit)


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
