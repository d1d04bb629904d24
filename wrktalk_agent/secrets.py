"""What counts as a secret, decided once.

Every place that hides something asks this module: the log filter (:mod:`wrktalk_agent.log`),
the redaction of deploy output and task results (:mod:`wrktalk_agent.redact`), the
dashboard (:mod:`wrktalk_agent.tui.format`) and the settings errors of plugins
(:mod:`wrktalk_agent.plugins`). docs/operator.md ("What is masked") repeats the rule.

A *name* (a setting, a log key, a ``.env`` variable, a ``values.yaml`` key, a key of a task
result, a DSN query parameter) is secret when

* written without separators and in lower case (``apiKey``, ``API-KEY`` and ``api_key``
  all become ``apikey``) it contains one of :data:`SECRET_WORDS` — ``password``,
  ``passwd``, ``passphrase``, ``secret``, ``token``, ``credential``, ``apikey``,
  ``privatekey``, ``accesskey``, ``authorization``...; or
* one of its words (split at ``_ - . /``, spaces and lower-to-upper case changes) is one
  of :data:`SECRET_TOKENS` — ``auth``, ``key``, ``pwd``, ``pass``, ``dsn``, ``cookie``...
  These short words only count whole, so ``author``, ``monkey`` and ``passenger`` are
  not secrets; or
* it is one of :data:`SECRET_FIELDS`, the columns that hold a release's whole ``.env`` or
  ``values.yaml`` text.

In free *text*, :func:`mask_text` masks the password of ``scheme://user:password@host``,
a ``password=`` query parameter, and the value of ``NAME=value`` or ``NAME: value`` where
NAME is secret by the rule above.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "MASK",
    "SECRET_FIELDS",
    "SECRET_TOKENS",
    "SECRET_WORDS",
    "is_secret_name",
    "mask_mapping",
    "mask_text",
    "may_hold_secret",
    "url_passwords",
]

MASK = "***"

#: Found anywhere in a name once separators are removed and it is lower-cased.
SECRET_WORDS: tuple[str, ...] = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "credential",
    "apikey",
    "privatekey",
    "accesskey",
    "signingkey",
    "encryptionkey",
    "authorization",
    "authtoken",
    "sessionid",
    "connectionstring",
)
#: Count only as a whole word of the name (short words that occur inside harmless ones).
SECRET_TOKENS: frozenset[str] = frozenset(
    {
        "auth",
        "oauth",
        "basicauth",
        "key",
        "privkey",
        "pwd",
        "pass",
        "pw",
        "dsn",
        "cookie",
        "salt",
        "session",
        "private",
        "cert",
        "signature",
        "license",
        "jwt",
        "bearer",
        "otp",
        "pin",
    }
)
#: Columns holding a release's whole ``.env`` / ``values.yaml`` text.
SECRET_FIELDS: frozenset[str] = frozenset({"env_data", "values_data"})

_COMPACT = re.compile(r"[^a-z0-9]")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SPLIT = re.compile(r"[^A-Za-z0-9]+")
_WORDS = re.compile("|".join(SECRET_WORDS))

#: The password of ``scheme://user:password@host`` (group 1: everything before it).
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][\w+.-]*://[^\s:/@]*:)([^\s@/]+)(@)")
#: ``password=...`` in a query string or a libpq keyword/value DSN.
_QUERY_PASSWORD = re.compile(r"(\bpassword=)([^&\s]+)", re.I)
#: ``NAME=`` and ``NAME:``; the value after it is :data:`_VALUE` (a quoted value whole).
_NAME_SEP = re.compile(r"\b([A-Za-z_][\w.-]*)\s*[=:]\s*")
_VALUE = re.compile(r""""[^"\n]*"|'[^'\n]*'|[^\s"',;]+""")


def is_secret_name(name: object) -> bool:
    """Whether a value under this name must never be shown (see the module docstring)."""
    text = str(name)
    if not text:
        return False
    lowered = text.lower()
    if lowered in SECRET_FIELDS:
        return True
    if _WORDS.search(_COMPACT.sub("", lowered)):
        return True
    words = _SPLIT.split(_CAMEL.sub("_", text))
    return any(word.lower() in SECRET_TOKENS for word in words)


#: Words of names whose values are addresses that may carry a password (``user:pw@``).
_ADDRESS_WORDS = frozenset({"url", "uri", "dsn", "endpoint"})


def may_hold_secret(name: object) -> bool:
    """Secret names, and addresses that may embed a password (``database_url``): a
    message about a bad value of such a setting does not quote the value."""
    words = _SPLIT.split(_CAMEL.sub("_", str(name)))
    return is_secret_name(name) or any(word.lower() in _ADDRESS_WORDS for word in words)


def url_passwords(text: str) -> list[str]:
    """The passwords of every ``scheme://user:password@host`` in ``text``."""
    return [match.group(2) for match in _URL_PASSWORD.finditer(text)]


def mask_text(text: str) -> str:
    """``text`` with URL passwords, ``password=`` parameters and the values of
    secret-named assignments replaced by :data:`MASK`."""
    if not text:
        return text
    if "://" in text:
        text = _URL_PASSWORD.sub(rf"\1{MASK}\3", text)
    if "=" in text or ":" in text:
        text = _QUERY_PASSWORD.sub(rf"\1{MASK}", text)
        text = _mask_assignments(text)
    return text


#: ``KeyError: 'x'``, ``InvalidToken: ...``: an exception's name says what went wrong;
#: what follows it is a message, not a value.
_EXCEPTION_NAME = re.compile(r"(?:Error|Exception|Warning|Invalid\w*)$")


def _mask_assignments(text: str) -> str:
    """The value after each secret ``NAME=`` / ``NAME:`` masked. A harmless name does not
    swallow what follows (``failed: DB_PASSWORD=x`` still masks ``x``)."""
    parts: list[str] = []
    done = 0
    for match in _NAME_SEP.finditer(text):
        name = match.group(1)
        if match.start() < done or not is_secret_name(name) or _EXCEPTION_NAME.search(name):
            continue
        value = _VALUE.match(text, match.end())
        if value is None or value.group(0) == MASK:
            continue
        parts += [text[done : match.end()], MASK]
        done = value.end()
    return "".join(parts) + text[done:] if parts else text


def mask_mapping(value: Any) -> Any:
    """A copy of a JSON-like value: values under secret names become :data:`MASK` (``None``
    stays ``None``: nothing to hide), and every string passes :func:`mask_text`."""
    if isinstance(value, dict):
        return {
            key: MASK if item is not None and is_secret_name(key) else mask_mapping(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [mask_mapping(item) for item in value]
    if isinstance(value, str):
        return mask_text(value)
    return value
