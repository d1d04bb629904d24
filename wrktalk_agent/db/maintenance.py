"""Maintenance as recorded: the flag the backend reads, the holds (who keeps maintenance
on, and why) and the lock every change of them runs under. The decisions and the proxy
calls are :mod:`wrktalk_agent.maintenance`'s. Statements:
:mod:`wrktalk_agent.db.queries.maintenance`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from uuid import UUID

import asyncpg

from wrktalk_agent.db.base import RepositoryBase, bounded
from wrktalk_agent.db.models import MaintenanceHold, MaintenanceState
from wrktalk_agent.db.queries import maintenance as q


class MaintenanceMixin(RepositoryBase):
    """Maintenance: the record, and the lock to change it under
    (:meth:`locked_maintenance`)."""

    @asynccontextmanager
    async def locked_maintenance(
        self, *, wait: bool = True
    ) -> AsyncIterator[MaintenanceRecord | None]:
        """The maintenance record in one transaction holding the maintenance lock (an
        advisory lock polls never take: a slow proxy called meanwhile delays no claim).
        ``None`` when ``wait`` is off and another agent holds the lock."""
        async with self.pool.acquire() as conn, conn.transaction():
            if wait:
                await conn.execute(q.MAINTENANCE_LOCK, q.MAINTENANCE_LOCK_KEY)
            elif not await conn.fetchval(q.MAINTENANCE_TRY_LOCK, q.MAINTENANCE_LOCK_KEY):
                yield None
                return
            yield MaintenanceRecord(conn)

    @bounded
    async def maintenance_state(self) -> MaintenanceState:
        row = await self.pool.fetchrow(q.MAINTENANCE_STATE)
        assert row is not None
        return MaintenanceState.model_validate(dict(row))

    async def maintenance_flag(self) -> bool:
        return (await self.maintenance_state()).enabled

    @bounded
    async def hold_maintenance(self, holder: str, reason: str | None = None) -> None:
        """Record a hold and the flag, without switching anything (tests, the demo)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(q.MAINTENANCE_LOCK, q.MAINTENANCE_LOCK_KEY)
            await conn.fetchrow(q.OPERATOR_HOLD, holder, reason)
            await conn.execute(q.RECORD_MAINTENANCE_ON)


class MaintenanceRecord:
    """Maintenance as recorded (the flag, the holds, a failing switch-off) while
    :meth:`Repository.locked_maintenance` holds the maintenance lock: one method per
    statement, the decisions and the proxy calls stay with :mod:`wrktalk_agent.maintenance`."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def state(self) -> MaintenanceState:
        row = await self._conn.fetchrow(q.MAINTENANCE_STATE)
        return MaintenanceState.model_validate(dict(row)) if row else MaintenanceState()

    async def hold_for_task(self, task_id: UUID, claim_token: UUID, reason: str) -> bool:
        """The task's hold, only while its claim owns the task (False: it does not)."""
        return await self._conn.fetchval(q.TASK_HOLD, task_id, claim_token, reason) is not None

    async def hold_for_operator(self, holder: str, reason: str) -> bool:
        """An operator's window (a second one updates the reason); True when new."""
        row = await self._conn.fetchrow(q.OPERATOR_HOLD, holder, reason)
        assert row is not None
        return bool(row["created"])

    async def release_task_hold(self, task_id: UUID, claim_token: UUID) -> list[MaintenanceHold]:
        """The task's hold goes, fenced by its claim; returns what went."""
        return _holds(await self._conn.fetch(q.RELEASE_TASK_HOLD, task_id, claim_token))

    async def release_hold(self, holder: str) -> list[MaintenanceHold]:
        return _holds(await self._conn.fetch(q.RELEASE_HOLD, holder))

    async def release_all_holds(self) -> list[MaintenanceHold]:
        return _holds(await self._conn.fetch(q.RELEASE_ALL_HOLDS))

    async def release_ended_task_holds(self) -> list[MaintenanceHold]:
        """Holds of tasks that have ended or vanished (this statement proves it)."""
        return _holds(await self._conn.fetch(q.RELEASE_ENDED_TASK_HOLDS))

    async def record_on(self) -> None:
        """The flag on, and the summary of the holds beside it."""
        await self._conn.execute(q.RECORD_MAINTENANCE_ON)

    async def record_holds(self) -> None:
        await self._conn.execute(q.RECORD_HOLDS)

    async def record_off(self) -> None:
        """The proxy is off: recorded only while no hold has appeared meanwhile."""
        await self._conn.execute(q.RECORD_MAINTENANCE_OFF)

    async def record_off_pending(self, error: str) -> None:
        """The last hold went but the switch-off failed: still on, to be retried."""
        await self._conn.execute(q.RECORD_OFF_PENDING, error)

    async def note_in_timelines(self, task_ids: Sequence[UUID], message: str) -> None:
        """A line in the timelines of the tasks whose holds an operator ended."""
        await self._conn.execute(q.MAINTENANCE_NOTE, list(task_ids), message)


def _holds(rows: Sequence[asyncpg.Record]) -> list[MaintenanceHold]:
    return [MaintenanceHold.model_validate(dict(r)) for r in rows]
