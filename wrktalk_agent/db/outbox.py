"""The notification outbox: notifications leased to an agent, each send recorded before it
goes out and each recipient's outcome after; and whom it mails (the active admins, the
SMTP settings of deployment_config). Statements: :mod:`wrktalk_agent.db.queries.outbox`."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal
from uuid import UUID

import asyncpg

from wrktalk_agent.db.base import RepositoryBase, bounded
from wrktalk_agent.db.queries import outbox as q
from wrktalk_agent.db.tasks import EventStatus
from wrktalk_agent.interfaces import Recipient, SmtpConfig
from wrktalk_agent.log import get_logger
from wrktalk_agent.safe_text import storable

_ADDRESS = re.compile(r"[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+")


def address_problem(email: object) -> str | None:
    """What makes an admin's email column unusable as an address (None: usable). Control
    characters and line ends could forge mail headers."""
    if not isinstance(email, str) or not email.strip():
        return "email is empty"
    if len(email) > 254 or not _ADDRESS.fullmatch(email):
        return f"email {storable(email, limit=80)!r} is not an address"
    return None


class OutboxMixin(RepositoryBase):
    """The outbox and its recipients."""

    @bounded
    async def claim_notifications(
        self, agent_id: str, lease_seconds: float, notifiers: Sequence[str], limit: int = 20
    ) -> list[asyncpg.Record]:
        """Due notifications, each leased to this agent for ``lease_seconds`` under a new
        ``lease_token`` (which every later write presents); ``age`` in seconds."""
        return list(
            await self.pool.fetch(
                q.CLAIM_NOTIFICATIONS, agent_id, lease_seconds, list(notifiers), limit
            )
        )

    @bounded
    async def renew_notification(
        self, notification_id: UUID, lease_token: UUID, lease_seconds: float
    ) -> bool:
        """Extend the lease; False when it was taken away (or the row is no longer pending)."""
        row = await self.pool.fetchval(
            q.RENEW_NOTIFICATION, notification_id, lease_token, lease_seconds
        )
        return row is not None

    @bounded
    async def notification_recipients(
        self, notification_id: UUID, lease_token: UUID
    ) -> list[asyncpg.Record]:
        """Each recipient's state, after sends left unanswered by an earlier holder are
        counted as unknown outcomes."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(q.SETTLE_UNANSWERED, notification_id, lease_token)
            return list(await conn.fetch(q.NOTIFICATION_RECIPIENTS, notification_id))

    @bounded
    async def begin_send(
        self, notification_id: UUID, recipient: str, lease_token: UUID, lease_seconds: float
    ) -> int | None:
        """Record that a message to ``recipient`` is about to go out; the send's number
        (1, or 2 for the one repeat), or ``None``: do not send."""
        sends = await self.pool.fetchval(
            q.BEGIN_SEND, notification_id, recipient, lease_token, lease_seconds
        )
        return int(sends) if sends is not None else None

    @bounded
    async def report_delivery(
        self,
        notification_id: UUID,
        lease_token: UUID,
        *,
        recipient: str,
        outcome: str,
        detail: str,
        attempts: int,
    ) -> str | None:
        """Record one recipient's outcome; its new state, or ``None`` when nothing changed
        (the lease is gone, or the recipient was settled already)."""
        state = await self.pool.fetchval(
            q.REPORT_DELIVERY, notification_id, recipient, lease_token, outcome, detail, attempts
        )
        return str(state) if state is not None else None

    @bounded
    async def settle_attempt(
        self,
        notification_id: UUID,
        lease_token: UUID,
        *,
        dropped: Sequence[str] = (),
        give_up: bool = False,
    ) -> list[asyncpg.Record] | None:
        """End an attempt: unanswered sends become unknown outcomes, ``dropped``
        recipients (no longer named by the notifier) are set aside, and with ``give_up``
        whoever still waits for a retry is failed. The recipients' states, or ``None``
        when the lease was taken away (nothing was changed)."""
        async with self.pool.acquire() as conn, conn.transaction():
            if (
                await conn.fetchval(q.LOCK_LEASED_NOTIFICATION, notification_id, lease_token)
                is None
            ):
                return None
            await conn.execute(q.SETTLE_UNANSWERED, notification_id, lease_token)
            if dropped:
                await conn.execute(q.DROP_RECIPIENTS, notification_id, list(dropped))
            if give_up:
                await conn.execute(q.GIVE_UP_RECIPIENTS, notification_id)
            return list(await conn.fetch(q.NOTIFICATION_RECIPIENTS, notification_id))

    @bounded
    async def finish_notification(
        self,
        notification_id: UUID,
        lease_token: UUID,
        *,
        status: Literal["pending", "delivered", "failed"],
        deliveries: list[dict[str, Any]],
        retry_in: float = 0.0,
        timeline: tuple[EventStatus, str, str] | None = None,
    ) -> None:
        """Release the lease with the notification's status (``pending``: try again in
        ``retry_in`` seconds); the deliveries also go into the task's result, and
        ``timeline`` (status, message, agent id) into its timeline, in the same statement."""
        status_, message, agent_id = timeline or (None, None, None)
        await self.pool.execute(
            q.FINISH_NOTIFICATION, notification_id, lease_token, status, deliveries, retry_in,
            status_, message, agent_id,
        )  # fmt: skip

    @bounded
    async def pending_notifications(self) -> int:
        return int(await self.pool.fetchval(q.PENDING_NOTIFICATIONS))

    @bounded
    async def smtp_config(self) -> SmtpConfig:
        row = await self.pool.fetchrow(q.SMTP_CONFIG)
        if row is None:
            return SmtpConfig()
        return SmtpConfig(
            host=row["smtp_host"],
            port=row["smtp_port"],
            user=row["smtp_user"],
            password=row["smtp_password"],
            sender=row["smtp_from"],
        )

    async def add_admin(self, name: str, email: str, *, active: bool = True) -> None:
        """What the backend does when an admin is created (the demo plays the backend)."""
        await self.pool.execute(q.INSERT_ADMIN, name, email, active)

    async def set_smtp(self, *, host: str, port: int, sender: str) -> None:
        """The SMTP columns of deployment_config, as the backend sets them."""
        await self.pool.execute(q.SET_SMTP, host, port, sender)

    @bounded
    async def active_admins(self) -> list[Recipient]:
        """Active admins with an address mail can go to; a row without one is left out
        and named in the log (one bad row never stops the mail to the others)."""
        recipients = []
        for r in await self.pool.fetch(q.ACTIVE_ADMINS):
            problem = address_problem(r["email"])
            if problem is not None:
                get_logger().warning("admin.unusable", admin_id=str(r["id"]), problem=problem)
                continue
            recipients.append(
                Recipient(name=" ".join(str(r["name"] or "").split()), email=r["email"])
            )
        return recipients
