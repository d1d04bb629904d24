"""What a task must never let out, and the one place that masks it."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from wrktalk_agent.config import AgentSettings
from wrktalk_agent.redact import Redactor


class Secrets:
    """What a task must never let out: its releases' ``.env`` values and secret-looking
    ``values.yaml`` scalars (see :mod:`wrktalk_agent.redact` for the rule) and the
    database and SMTP passwords. Every timeline entry, error, task result, notification
    and log line of the task passes through :meth:`redact` before it leaves."""

    def __init__(self, extra: Sequence[str | None] = ()) -> None:
        self._redactors = [Redactor(extra=extra)]

    def add_release(self, env_data: str | None, values_data: str | None) -> None:
        if env_data or values_data:
            self._redactors.append(Redactor(env_data, values_data))

    def add(self, secret: str) -> None:
        self._redactors.append(Redactor(extra=[secret]))

    def redact(self, text: str) -> str:
        for redactor in self._redactors:
            text = redactor.redact(text)
        return text

    def redact_value(self, value: Any) -> Any:
        for redactor in self._redactors:
            value = redactor.redact_value(value)
        return value

    @property
    def longest(self) -> int:
        """Characters of the longest secret (see :class:`wrktalk_agent.redact.Masker`)."""
        return max(r.longest for r in self._redactors)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where the secrets occur in ``text`` (see :class:`wrktalk_agent.redact.Masker`)."""
        return [span for r in self._redactors for span in r.spans(text)]


def known_passwords(settings: AgentSettings) -> list[str | None]:
    """The database password, from the settings or the DSN."""
    found: list[str | None] = []
    if settings.db_password is not None:
        found.append(settings.db_password.get_secret_value())
    with contextlib.suppress(ValueError):
        found.append(urlsplit(settings.dsn()).password)
    return found
