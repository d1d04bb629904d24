"""The SMTP client with a gate before ``DATA`` (imported when the first mail goes out)."""

from __future__ import annotations

from typing import Any, Literal

import aiosmtplib
from aiosmtplib.response import SMTPResponse
from aiosmtplib.typing import Default

from wrktalk_agent_smtp.outcomes import Gate, Withheld


class GatedSMTP(aiosmtplib.SMTP):
    """aiosmtplib's client with a gate before ``DATA``: everything before it (connect,
    TLS, AUTH, ``MAIL``, ``RCPT``) can fail and be retried without anyone getting the
    message; from ``DATA`` on, a failure without a reply leaves the outcome unknown."""

    def __init__(self, gate: Gate, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = gate

    async def data(
        self,
        message: str | bytes,
        /,
        *,
        timeout: float | Literal[Default.token] | None = Default.token,
    ) -> SMTPResponse:
        if self.gate.ask is not None and not await self.gate.ask():
            raise Withheld()
        self.gate.sent = True
        response = await super().data(message, timeout=timeout)
        self.gate.accepted = True
        return response
