"""A task's timeline entries, buffered and written in batches."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from wrktalk_agent.db.repository import CONNECTION_ERRORS, EventStatus, Repository
from wrktalk_agent.guard import describe
from wrktalk_agent.pipeline.redaction import Secrets
from wrktalk_agent.safe_text import storable

#: Errors worth retrying a write for: the database went away, not a bad statement.
DB_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    asyncpg.PostgresConnectionError,
)
#: Errors after which a write is left for later (an outage, or a write that took too long).
FLUSH_ERRORS: tuple[type[BaseException], ...] = (*DB_ERRORS, TimeoutError)


@dataclass(frozen=True)
class PendingEvent:
    at: datetime
    step: str
    status: EventStatus
    message: str


class Timeline:
    """A task's timeline entries, buffered with their own times and written in one
    statement before anything slow and with the outcome: a fast task costs a few round
    trips, not one per entry, and an outage only delays them."""

    def __init__(
        self,
        repo: Repository,
        task_id: UUID,
        agent_id: str,
        log: Any,
        secrets: Secrets | None = None,
        claim_token: UUID | None = None,
    ) -> None:
        self.repo = repo
        self.task_id = task_id
        self.agent_id = agent_id
        #: entries are written only while this claim owns the task
        self.claim_token = claim_token
        self.log = log
        self.secrets = secrets or Secrets()
        self.unsaved: list[PendingEvent] = []
        self._last_at: datetime | None = None
        # the live output writes from a task of its own: one write at a time, or two
        # could send the same entries
        self._writing = asyncio.Lock()

    async def add(
        self, step: str, status: EventStatus, message: str = "", *, flush: bool = False
    ) -> None:
        self.append(step, status, message)
        if flush:
            await self.flush()

    def append(
        self, step: str, status: EventStatus, message: str = "", *, at: datetime | None = None
    ) -> None:
        # masked before it is made storable: storable() may cut a long message
        message = storable(self.secrets.redact(storable(message, limit=1 << 24)))
        # one order: entries are kept as they come, and their times never go backwards
        # (a wall clock may step back; the timeline's order stays the order of events)
        at = at or datetime.now(UTC)
        if self._last_at is not None and at < self._last_at:
            at = self._last_at
        self._last_at = at
        self.unsaved.append(PendingEvent(at, storable(step), status, message))

    async def flush(self, timeout: float | None = None) -> None:
        async with self._writing:
            if not self.unsaved:
                return
            batch = list(self.unsaved)
            try:
                written = await asyncio.wait_for(
                    self.repo.add_events(self.task_id, batch, self.agent_id, self.claim_token),
                    timeout,
                )
            except FLUSH_ERRORS as exc:
                self.log.warning("event.deferred", count=len(batch), error=describe(exc))
                return
            except asyncpg.PostgresError as exc:  # refused (e.g. no INSERT privilege):
                # the outcome write tries again and, refused again, ends the task without
                self.log.error("event.refused", count=len(batch), error=describe(exc))
                return
            del self.unsaved[: len(batch)]
            if not written:  # the task is no longer ours: what we saw is not its story
                self.log.warning("event.fenced", count=len(batch))
