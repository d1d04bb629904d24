"""Masking a release's secrets in what a deploy prints before anyone stores or shows it.

A :class:`Redactor` is built per task from the release's ``.env`` text, its ``values.yaml``
text and the passwords the agent itself holds (database, SMTP). Its :meth:`Redactor.redact`
replaces every occurrence of those secrets in a text with ``***``; longer secrets win over
shorter ones that they contain. Which values count as secrets (docs/operator.md repeats it):

* every value of a ``.env`` assignment, quotes removed, except values shorter than
  :data:`MIN_LENGTH` characters and plain numbers, versions (``1.2.3``) or booleans
  whose key does not look secret;
* every scalar of ``values.yaml`` whose key, or the key of a mapping around it, is a
  secret name (:func:`wrktalk_agent.secrets.is_secret_name`: password, secret, token,
  api_key, credential, private_key, auth, key, dsn...) and that has at least
  :data:`MIN_LENGTH` characters;
* every other ``values.yaml`` string of :data:`OPAQUE_LENGTH` characters or more with no
  whitespace that mixes upper case, lower case and digits (how generated tokens look);
* the password part of any ``scheme://user:password@host`` found in either file;
* the extra secrets given (DB and SMTP passwords), when at least :data:`MIN_LENGTH` long.

Besides these known values, :meth:`Redactor.redact` masks what
:func:`wrktalk_agent.secrets.mask_text` recognises in any text (a URL's password, the value
of ``API_KEY=...``) and :meth:`Redactor.redact_value` the values under secret names.

A multi-line secret is also masked line by line, and a value with quotes or backslashes
also in its JSON-escaped form. Bad input never raises: ``.env`` text with NUL bytes or
that is not UTF-8 is read as far as it goes, invalid YAML (or YAML over
:data:`MAX_YAML_BYTES`) is scanned line by line for ``key: value`` pairs instead, and at
most :data:`MAX_SECRETS` secrets are kept, so building and redacting stay bounded however
large the release's files are.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import yaml

from wrktalk_agent.secrets import MASK, is_secret_name, mask_text, url_passwords

__all__ = ["MASK", "Masker", "Redactor", "masked_tail", "merged_spans", "safe_cut"]

#: Shorter values are never masked: masking "on" or "80" would garble every line.
MIN_LENGTH = 4
#: Strings at least this long that look generated are masked whatever their key.
OPAQUE_LENGTH = 24
#: Larger values.yaml texts are scanned line by line instead of parsed.
MAX_YAML_BYTES = 1_000_000
#: The most secrets one redactor holds (the longest are kept).
MAX_SECRETS = 10_000
#: Secrets longer than this are replaced one by one before the combined pattern runs.
_LONG = 200
#: Nodes visited in a parsed values.yaml (aliases can make a small text a huge tree).
_MAX_NODES = 200_000

_PLAIN = re.compile(
    r"[+-]?\d+(?:\.\d+)?|v?\d+(?:\.\d+)+(?:-[0-9A-Za-z.]+)?|true|false|yes|no|on|off|null|none",
    re.I,
)
_ENV_LINE = re.compile(r"\s*(?:export\s+)?([A-Za-z_][\w.-]*)\s*=(.*)")
_YAML_LINE = re.compile(r"""\s*(?:-\s+)?["']?([\w.-]+)["']?\s*:\s+(.+?)\s*$""")
_WHITESPACE = re.compile(r"\s")


class Redactor:
    """Replaces known secrets with :data:`MASK`; see the module docstring for the rule."""

    def __init__(
        self,
        env_data: str | bytes | None = None,
        values_data: str | bytes | None = None,
        extra: Iterable[str | None] = (),
    ) -> None:
        found: set[str] = set()
        for value in _env_secrets(_text(env_data)):
            _add(found, value)
        for value in _values_secrets(_text(values_data)):
            _add(found, value)
        for secret in extra:
            if secret:
                _add(found, secret)
        ordered = sorted(found, key=lambda s: (-len(s), s))[:MAX_SECRETS]
        self._long = [s for s in ordered if len(s) > _LONG]
        short = [s for s in ordered if len(s) <= _LONG]
        self._pattern = re.compile(_trie_pattern(short)) if short else None
        self.count = len(ordered)
        #: characters of the longest secret: a text cut anywhere can hold a piece of a
        #: secret at most this long that no longer matches
        self.longest = len(ordered[0]) if ordered else 0

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where secrets occur in ``text`` (start, end), possibly overlapping."""
        found: list[tuple[int, int]] = []
        for secret in self._long:
            start = text.find(secret)
            while start != -1:
                found.append((start, start + len(secret)))
                start = text.find(secret, start + len(secret))
        if self._pattern is not None:
            found += [m.span() for m in self._pattern.finditer(text) if m.end() > m.start()]
        return found

    def redact(self, text: str) -> str:
        """``text`` with every secret replaced by ``***``."""
        if not text:
            return text
        for secret in self._long:
            text = text.replace(secret, MASK)
        if self._pattern is not None:
            text = self._pattern.sub(MASK, text)
        return mask_text(text)

    def redact_value(self, value: Any) -> Any:
        """A copy of a JSON-like value (a task result) with every string redacted and the
        value under every secret name masked."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {
                key: MASK if item is not None and is_secret_name(key) else self.redact_value(item)
                for key, item in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.redact_value(item) for item in value]
        return value


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        return data.decode("utf-8", errors="replace")
    return data


def _add(found: set[str], value: str) -> None:
    """A secret with its variants: each line of a multi-line one, the JSON-escaped form."""
    value = value.strip("\r\n")
    candidates = [value]
    if "\n" in value:
        candidates += [line.strip() for line in value.splitlines()]
    escaped = json.dumps(value)[1:-1]
    if escaped != value:
        candidates.append(escaped)
    for candidate in candidates:
        if len(candidate) >= MIN_LENGTH:
            found.add(candidate)
    for password in url_passwords(value):
        if len(password) >= MIN_LENGTH:
            found.add(password)


def _env_secrets(text: str) -> Iterator[str]:
    for line in text.splitlines():
        match = _ENV_LINE.match(line)
        if match is None:
            continue
        key, raw = match.group(1), match.group(2).strip()
        values = [raw]
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
            inner = raw[1:-1]
            values = [inner]
            if raw[0] == '"':
                values.append(inner.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\"))
        elif " #" in raw:
            values.append(raw.split(" #", 1)[0].rstrip())
        for value in values:
            if is_secret_name(key) or not _PLAIN.fullmatch(value):
                yield value
            else:
                yield from url_passwords(value)


def _values_secrets(text: str) -> Iterator[str]:
    if not text.strip():
        return
    if len(text) <= MAX_YAML_BYTES:
        try:
            # the safe loader (its C version when built): plain data, no Python objects
            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            tree = yaml.load(text, Loader=loader)  # noqa: S506
        except (yaml.YAMLError, ValueError, RecursionError):
            pass
        else:
            yield from _walk(tree)
            return
    yield from _scan_lines(text)


def _walk(tree: Any) -> Iterator[str]:
    """Scalars to mask in a parsed YAML document, iteratively and with a node budget."""
    stack: list[tuple[Any, bool]] = [(tree, False)]
    seen: set[int] = set()
    budget = _MAX_NODES
    while stack and budget > 0:
        node, secret = stack.pop()
        budget -= 1
        if isinstance(node, dict | list):
            if id(node) in seen:  # an alias: already walked
                continue
            seen.add(id(node))
            items = node.items() if isinstance(node, dict) else ((None, v) for v in node)
            for key, item in items:
                named = secret or (key is not None and is_secret_name(key))
                stack.append((item, named))
            continue
        if node is None or isinstance(node, bool):
            continue
        value = str(node)
        if secret or _looks_generated(value):
            yield value
        else:
            yield from url_passwords(value)


def _scan_lines(text: str) -> Iterator[str]:
    """``key: value`` lines of a YAML text too large or too broken to parse."""
    for line in text.splitlines():
        match = _YAML_LINE.match(line)
        if match is None:
            continue
        key, value = match.group(1), match.group(2)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        if value in ("|", ">", "|-", ">-") or value.startswith(("&", "*")):
            continue
        if is_secret_name(key) or _looks_generated(value):
            yield value
        else:
            yield from url_passwords(value)


def _looks_generated(value: str) -> bool:
    return (
        len(value) >= OPAQUE_LENGTH
        and not _WHITESPACE.search(value)
        and any(c.isupper() for c in value)
        and any(c.islower() for c in value)
        and any(c.isdigit() for c in value)
    )


def _trie_pattern(words: list[str]) -> str:
    """One regular expression matching any of ``words``, the longest one at each position
    (a trie: alternatives share their prefixes, so the cost does not grow with the number
    of secrets the way a plain alternation does)."""
    root: dict[str, Any] = {}
    for word in words:
        node = root
        for char in word:
            node = node.setdefault(char, {})
        node[""] = {}

    def build(node: dict[str, Any]) -> str:
        # chains of single children become one literal (keeps the nesting shallow)
        parts: list[str] = []
        while len(node) == 1 and "" not in node:
            ((char, node),) = node.items()
            parts.append(re.escape(char))
        prefix = "".join(parts)
        ends = "" in node
        branches = [re.escape(char) + build(child) for char, child in node.items() if char]
        if not branches:
            return prefix
        group = "(?:" + "|".join(branches) + ")"
        return prefix + (group + "?" if ends else group)

    return build(root)


class Masker(Protocol):
    """What cuts need to know of the secrets (a :class:`Redactor`, or the pipeline's
    ``Secrets`` holding several)."""

    @property
    def longest(self) -> int: ...

    def spans(self, text: str) -> list[tuple[int, int]]: ...

    def redact(self, text: str) -> str: ...


def merged_spans(masker: Masker, text: str) -> list[tuple[int, int]]:
    """The secrets' spans in ``text``, sorted, overlapping ones merged."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(masker.spans(text)):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def safe_cut(spans: list[tuple[int, int]], at: int, floor: int = 0) -> int:
    """Where to cut near ``at`` without splitting a secret (``spans`` merged): ``at``
    itself, or the start of the secret it falls in, or, when that secret starts at
    ``floor`` (the beginning of what is being cut), its end."""
    for start, end in spans:
        if start < at < end:
            return start if start > floor else end
        if start >= at:
            break
    return at


def _apply(text: str, spans: list[tuple[int, int]], begin: int) -> str:
    parts, position = [], begin
    for start, end in spans:
        if end <= begin:
            continue
        start = max(start, begin)
        parts.append(text[position:start])
        parts.append(MASK)
        position = end
    parts.append(text[position:])
    return "".join(parts)


def masked_tail(text: str, masker: Masker | None, limit: int, *, head_cut: bool) -> str:
    """The end of ``text``, at most ``limit`` bytes of UTF-8, with the secrets masked
    before anything is cut.

    ``head_cut``: the beginning of ``text`` was already dropped (a bounded buffer kept
    only the end of a command's output), so its first characters may be the end of a
    secret that no longer matches: of the first ``masker.longest`` characters nothing but
    whole secrets (masked) is kept, and the result starts with ``…``. Without a masker
    the text is only cut."""
    spans = merged_spans(masker, text) if masker is not None else []
    begin = 0
    if head_cut and masker is not None:
        begin = safe_cut(spans, min(masker.longest, len(text)))
    masked = _apply(text, spans, begin)
    if masker is not None:  # what is masked by its shape (NAME=value), before the cut too
        masked = masker.redact(masked)
    if head_cut:
        masked = "…" + masked
    data = masked.encode("utf-8", errors="surrogatepass")
    if len(data) <= limit:
        return masked
    # cutting masked text is safe: what is left of a secret there is a piece of ***
    return data[-limit:].decode("utf-8", errors="ignore")
