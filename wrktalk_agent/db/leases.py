"""A running task's lease and the agent's process: the renewal, the failover check that
starts a quiet period, the process record (agent_instance) and the leases the start-up
clean-up asks about. Their statements are in :mod:`wrktalk_agent.db.queries.leases`."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

import asyncpg

from wrktalk_agent.db.base import RepositoryBase, bounded
from wrktalk_agent.db.queries import leases as q


class LeasesMixin(RepositoryBase):
    """Leases, the failover check and the agent's process record."""

    @bounded
    async def failover_check(self, quiet_seconds: float) -> float:
        """Record the primary's WAL timeline; when it is new (a standby was promoted),
        no task is claimed or taken over for ``quiet_seconds``. Returns the seconds left
        of a quiet period (0: none)."""
        return float(await self.pool.fetchval(q.FAILOVER_CHECK, quiet_seconds) or 0.0)

    async def heartbeat(
        self,
        task_id: UUID,
        claim_token: UUID,
        agent_id: str,
        instance_id: UUID,
        *,
        timeout: float | None = None,
    ) -> bool:
        """Renew the lease, within ``timeout`` (default DB_TIMEOUT). True while this claim
        still owns the task."""
        owned = await self.within(
            self.call_timeout if timeout is None else timeout,
            lambda: self.pool.fetchval(q.HEARTBEAT, task_id, claim_token, agent_id, instance_id),
        )
        return owned is not None

    @bounded
    async def task_status(self, task_id: UUID) -> str | None:
        return await self.pool.fetchval(q.TASK_STATUS, task_id)

    @bounded
    async def instance(self, agent_id: str) -> asyncpg.Record | None:
        """The process last seen with ``agent_id``: instance_id, hostname, pid, age, ..."""
        return await self.pool.fetchrow(q.INSTANCE, agent_id)

    @bounded
    async def instance_stopped(self, agent_id: str, instance_id: UUID) -> None:
        await self.pool.execute(q.INSTANCE_STOPPED, agent_id, instance_id)

    @bounded
    async def task_leases(
        self, task_ids: Sequence[UUID], default_lease: float
    ) -> dict[UUID, tuple[bool, str | None]]:
        """For each task found: whether it is inProgress under a live lease, and the agent
        id that holds (or last held) it."""
        rows = await self.pool.fetch(q.TASK_LEASES, list(task_ids), default_lease)
        return {r["id"]: (bool(r["leased"]), r["claimed_by"]) for r in rows}
