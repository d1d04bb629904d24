"""Tasks as the CLI and the dashboard see them (create, read, list, cancel) and their
timelines (agent_task_event); the claim and the outcome are in
:mod:`~wrktalk_agent.db.claims`. Statements: :mod:`wrktalk_agent.db.queries.tasks`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal, Protocol
from uuid import UUID

from wrktalk_agent.db.base import RepositoryBase, bounded
from wrktalk_agent.db.models import Task, TaskEvent
from wrktalk_agent.db.queries import tasks as q
from wrktalk_agent.safe_text import storable

EventStatus = Literal["started", "succeeded", "failed", "skipped", "info"]


class PendingEventLike(Protocol):
    @property
    def at(self) -> datetime: ...
    @property
    def step(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def message(self) -> str: ...


def event_columns(events: Sequence[PendingEventLike]) -> tuple[list[Any], ...]:
    """Timeline entries as the arrays the INSERT_EVENTS statements unnest (time, step,
    status, message), their text made storable."""
    return (
        [e.at for e in events],
        [storable(e.step, limit=200) for e in events],
        [e.status for e in events],
        [storable(e.message) for e in events],
    )


class TasksMixin(RepositoryBase):
    """Tasks and their timelines."""

    @bounded
    async def add_events(
        self,
        task_id: UUID,
        events: Sequence[PendingEventLike],
        agent_id: str | None,
        claim_token: UUID | None = None,
    ) -> bool:
        """Several timeline entries, each with its own time, in one statement. With
        ``claim_token`` (a task owner's entries) only while that claim owns the task: a
        stale owner writes nothing. False: nothing was written for that reason."""
        if claim_token is None:
            await self.pool.execute(
                q.INSERT_EVENTS_UNFENCED, task_id, *event_columns(events), agent_id
            )
            return True
        written = await self.pool.fetchval(
            q.INSERT_EVENTS, task_id, *event_columns(events), agent_id, claim_token
        )
        return bool(written)

    async def add_event(
        self,
        task_id: UUID,
        step: str,
        status: EventStatus,
        message: str = "",
        agent_id: str | None = None,
    ) -> None:
        await self.pool.execute(
            q.INSERT_EVENT, task_id, storable(step, limit=200), status, storable(message), agent_id
        )

    async def create_task(
        self,
        task_type: Literal["deploy", "rollback"],
        release_id: UUID | None,
        execute_after: datetime | None = None,
    ) -> Task:
        row = await self.pool.fetchrow(q.INSERT_TASK, task_type, release_id, execute_after)
        assert row is not None
        return Task.model_validate(dict(row))

    async def get_task(self, task_id: UUID) -> Task | None:
        row = await self.pool.fetchrow(q.GET_TASK, task_id)
        return Task.model_validate(dict(row)) if row else None

    async def list_tasks(
        self, *, status: str | None = None, task_type: str | None = None, limit: int = 50
    ) -> list[Task]:
        rows = await self.pool.fetch(q.LIST_TASKS, status, task_type, limit)
        return [Task.model_validate(dict(r)) for r in rows]

    async def cancel_task(self, task_id: UUID, *, by: str, via: str) -> Task | None:
        """Cancel a pending task (``None``: it was not pending): stored as failed with
        the error "cancelled by BY (VIA)" and the result ``{"cancelled": true, "by": BY}``,
        whoever cancels it (the CLI, the dashboard)."""
        row = await self.pool.fetchrow(
            q.CANCEL_TASK, task_id, f"cancelled by {by} ({via})", {"cancelled": True, "by": by}
        )
        return Task.model_validate(dict(row)) if row else None

    async def task_ids_with_prefix(self, low: UUID, high: UUID, limit: int) -> list[UUID]:
        """Task ids between ``low`` and ``high`` (a typed prefix), at most ``limit``."""
        rows = await self.pool.fetch(q.TASK_IDS_BETWEEN, low, high, limit)
        return [UUID(str(r["id"])) for r in rows]

    async def pending_rollback(self) -> UUID | None:
        """The oldest pending rollback task, if any."""
        found = await self.pool.fetchval(q.PENDING_ROLLBACK)
        return None if found is None else UUID(str(found))

    async def task_events(self, task_id: UUID) -> list[TaskEvent]:
        rows = await self.pool.fetch(q.TASK_EVENTS, task_id)
        return [TaskEvent.model_validate(dict(r)) for r in rows]
