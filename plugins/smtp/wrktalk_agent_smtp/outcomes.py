"""What became of one SMTP send: the gate before ``DATA`` (the point of no return), and
how a failure counts — retried now, left to the outbox, or never repeated.

Nothing here imports aiosmtplib at load time: loading the plugin (``wrktalk-agent
plugins``, an agent that sends no mail) does not pay for it.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from wrktalk_agent.interfaces import DeliveryOutcome


class Withheld(Exception):
    """The outbox said not to send to this recipient now."""


class Unanswered(Exception):
    """The message went out (SMTP ``DATA``) and no reply came: it may have arrived."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class Gate:
    """Where one SMTP session stands: asks before ``DATA`` (the point of no return) and
    remembers whether the message went out and whether the server took it."""

    def __init__(self, ask: Callable[[], Awaitable[bool]] | None = None) -> None:
        self.ask = ask
        self.sent = False
        self.accepted = False


def is_temporary(exc: BaseException) -> bool:
    """Worth retrying: 4xx replies, lost or refused connections, timeouts.

    5xx replies, certificate problems and missing server features are permanent.
    """
    if isinstance(exc, Unanswered | Withheld):
        return True
    if isinstance(exc, aiosmtplib_module().SMTPRecipientsRefused):
        return all(is_temporary(r) for r in exc.recipients)
    if isinstance(exc, aiosmtplib_module().SMTPResponseException):
        return 400 <= exc.code < 500
    if _caused_by(exc, ssl.SSLCertVerificationError):
        return False
    # OSError covers refused connections, aiosmtplib's disconnect/connect errors and
    # (since Python 3.11, where asyncio.TimeoutError is TimeoutError) its timeouts.
    return isinstance(exc, OSError)


def worth_retrying_now(exc: BaseException) -> bool:
    """Retried within this attempt: temporary failures before the message went out, and
    replies refusing it. Never an unanswered send (only the outbox may repeat it) nor a
    send the outbox withheld."""
    return not isinstance(exc, Unanswered | Withheld) and is_temporary(exc)


def delivery_outcome(exc: BaseException) -> DeliveryOutcome:
    """How a failed send is recorded for the outbox."""
    if isinstance(exc, Unanswered):
        return "unknown"
    return "temporary" if is_temporary(exc) else "permanent"


def aiosmtplib_module() -> Any:
    """aiosmtplib, imported on first use (for its exception classes)."""
    import aiosmtplib

    return aiosmtplib


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether ``exc`` or an exception it was raised from is a ``kind``
    (aiosmtplib wraps TLS failures in its own connection errors)."""
    current: BaseException | None = exc
    seen: set[int] = set()
    while current is not None and id(current) not in seen:  # chains can loop
        if isinstance(current, kind):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
