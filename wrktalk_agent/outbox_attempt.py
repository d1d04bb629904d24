"""The core's delivery attempt: a notifier says, per recipient, when a message is about to
go out and how it ended, and each is written to the outbox under the notification's lease
before the notifier goes on (see :mod:`wrktalk_agent.outbox`)."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import asyncpg

from wrktalk_agent.db.repository import CONNECTION_ERRORS
from wrktalk_agent.guard import describe
from wrktalk_agent.interfaces import Delivery, DeliveryAttempt
from wrktalk_agent.safe_text import visible

#: Longest recipient detail stored (a server's reply, an error).
_DETAIL_LIMIT = 500
#: Bound of one outbox statement made on a notifier's behalf.
_DB_BOUND = 10.0


class OutboxAttempt(DeliveryAttempt):
    """The core's :class:`DeliveryAttempt`: every send and outcome is written to the
    outbox under the lease, before the notifier goes on."""

    def __init__(
        self,
        repo: Any,
        notification_id: UUID,
        lease_token: UUID,
        lease_seconds: float,
        log: Any,
        skip: frozenset[str] = frozenset(),
        repeats: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(skip, repeats)
        self.repo = repo
        self.notification_id = notification_id
        self.lease_token = lease_token
        self.lease_seconds = lease_seconds
        self.log = log
        #: set when the lease was taken away: nothing more is sent
        self.lost = False
        #: what was recorded per recipient in this attempt: (outcome, detail)
        self.recorded: dict[str, tuple[str, str]] = {}

    async def sending(self, recipient: str) -> bool:
        if self.lost or recipient in self.skip:
            return False
        try:
            async with asyncio.timeout(_DB_BOUND):
                sends = await self.repo.begin_send(
                    self.notification_id, recipient, self.lease_token, self.lease_seconds
                )
        except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            # unrecorded, a send could be repeated without limit: don't send
            self.log.warning("notify.send_unrecorded", recipient=recipient, error=describe(exc))
            return False
        if sends is None:
            self.log.warning(
                "notify.send_withheld",
                recipient=recipient,
                detail="lease lost or this recipient's one repeat is used up",
            )
            return False
        if sends > 1:
            self.log.info("notify.repeat", recipient=recipient, send=sends)
        return True

    async def report(self, delivery: Delivery) -> None:
        key = (delivery.result, delivery.detail)
        if self.recorded.get(delivery.recipient) == key:
            return  # reported already, now returned as well
        try:
            async with asyncio.timeout(_DB_BOUND):
                await self.repo.report_delivery(
                    self.notification_id,
                    self.lease_token,
                    recipient=delivery.recipient,
                    outcome=delivery.result,
                    # server replies are not ours: storable whatever bytes they carried
                    detail=visible(delivery.detail)[:_DETAIL_LIMIT],
                    attempts=max(0, delivery.attempts),
                )
        except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            # a send left 'sending' counts as an unknown outcome: never more than one repeat
            self.log.warning(
                "notify.outcome_unrecorded", recipient=delivery.recipient, error=describe(exc)
            )
            return
        self.recorded[delivery.recipient] = key
