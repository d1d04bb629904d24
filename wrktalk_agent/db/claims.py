"""The claim and the outcome: the poll that claims a task (and rejects rows no agent can
run, takes over a task whose lease ran out), a claim lost in a failover taken back for
recovery, and the outcome written in one transaction, only while the claim owns the task.
Their statements are in :mod:`wrktalk_agent.db.queries.claims`."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from typing import Any, Literal
from uuid import UUID

import asyncpg
from pydantic import ValidationError

import wrktalk_agent  # its __version__ when first polled (metadata: not at import)
from wrktalk_agent.db.base import RepositoryBase, bounded
from wrktalk_agent.db.models import PollResult, Task, tolerant_rows
from wrktalk_agent.db.queries import claims as q
from wrktalk_agent.db.queries.tasks import INSERT_EVENTS_UNFENCED
from wrktalk_agent.db.releases import FlagChange, apply_flags
from wrktalk_agent.db.tasks import PendingEventLike, event_columns
from wrktalk_agent.safe_text import storable, storable_value


class ClaimsMixin(RepositoryBase):
    """The agent loop's claim and outcome (see :meth:`poll`, :meth:`finish_task`)."""

    @bounded
    async def poll(
        self,
        agent_id: str,
        lease_seconds: float,
        *,
        claim_token: UUID,
        instance_id: UUID,
        notifiers: Sequence[str] = (),
        installation: str = "",
        release_types: Sequence[str] | None = None,
        seen_every: float = 0.0,
    ) -> PollResult:
        """Claim the oldest task that can run (one statement, :data:`queries.POLL`, that
        writes nothing when there is nothing to claim); reject the rows at the head of the
        queue that no agent can run and take over a task whose lease ran out, each with a
        statement of its own, only when the poll saw one. ``release_types``: the types the
        installed deployers declare; a pending task whose release has another type is
        rejected (``None``: any type but a blank one). ``seen_every``: renew this process's
        last_seen when it is older than that, even when nothing else changes."""
        types = None if release_types is None else list(release_types)
        row = await self.pool.fetchrow(
            q.POLL,
            agent_id,
            socket.gethostname(),
            os.getpid(),
            wrktalk_agent.__version__,
            lease_seconds,
            claim_token,
            instance_id,
            seen_every,
            types,
        )
        assert row is not None
        rejected: list[tuple[UUID, str]] = []
        if row["bad_waiting"]:
            swept = await self.pool.fetchval(
                q.SWEEP_BAD, agent_id, list(notifiers), installation, types
            )
            rejected = [(UUID(r["id"]), r["error"]) for r in swept]
        claimed = await self._claimed_task(
            row["claimed"], claim_token, agent_id, notifiers, installation, rejected
        )
        taken_over = None
        if row["lease_expired"] and claimed is None:
            data = await self.pool.fetchval(
                q.TAKE_OVER,
                agent_id,
                socket.gethostname(),
                os.getpid(),
                wrktalk_agent.__version__,
                lease_seconds,
                claim_token,
                instance_id,
            )
            with tolerant_rows():  # recovery handles a running row of any type
                taken_over = await self._claimed_task(
                    data, claim_token, agent_id, notifiers, installation, rejected
                )
        return PollResult(
            claimed=claimed,
            taken_over=taken_over,
            rejected=rejected,
            next_due_in=row["next_due_in"],
            lease_ends_in=row["lease_ends_in"],
        )

    async def _claimed_task(
        self,
        data: dict[str, Any] | None,
        claim_token: UUID,
        agent_id: str,
        notifiers: Sequence[str],
        installation: str,
        rejected: list[tuple[UUID, str]],
    ) -> Task | None:
        """A row the poll claimed (or took over), parsed; one the agent cannot read is
        failed at once under the same claim, its reason added to ``rejected``."""
        if not data:
            return None
        try:
            return Task.model_validate(data)
        except ValidationError as exc:
            reason = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])} {storable(repr(e.get('input')), limit=80)}"
                f": {e['msg']}"
                for e in exc.errors()
            )
        task_id = UUID(str(data.get("id")))
        failed = await self.pool.fetchrow(
            q.QUARANTINE, task_id, claim_token, agent_id, storable(reason, limit=2000),
            list(notifiers), installation,
        )  # fmt: skip
        if failed is not None:
            rejected.append((task_id, failed["error_message"]))
        return None

    @bounded
    async def claim_lost_in_failover(
        self,
        task_id: UUID,
        agent_id: str,
        lease_seconds: float,
        *,
        claim_token: UUID,
    ) -> Task | None:
        """Our claim of ``task_id`` is gone (a failover to a standby that had not received
        it) and the task is pending again: take it for recovery, so that what our deploy
        may have changed is found out rather than re-run blindly. None: someone else has
        it, or the slot is taken."""
        try:
            row = await self.pool.fetchrow(
                q.RECLAIM_FOR_RECOVERY, task_id, agent_id, claim_token, lease_seconds
            )
        except asyncpg.UniqueViolationError:
            return None
        return Task.model_validate(dict(row)) if row else None

    @bounded
    async def finish_task(
        self,
        task_id: UUID,
        claim_token: UUID,
        *,
        status: Literal["completed", "failed"],
        result: dict[str, Any],
        error: str | None,
        flags: FlagChange | None = None,
        events: Sequence[PendingEventLike] | None = None,
        agent_id: str | None = None,
        notifications: tuple[Sequence[str], dict[str, Any]] | None = None,
    ) -> Task | None:
        """Write the outcome in one transaction, only if this claim still owns the task:
        status, result, release flags, timeline entries not written yet, and the
        notifications promised (notifier names, event JSON) into the outbox. ``None``: the
        task was taken away and nothing was written."""
        # the door every outcome goes through: nothing in it can be refused for its text
        result = storable_value(result)
        error = storable(error) if error is not None else None
        if notifications is not None:
            notifications = (notifications[0], storable_value(notifications[1]))
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(q.FINISH_TASK, task_id, claim_token, status, result, error)
            if row is None:
                return None
            if flags is not None:
                await apply_flags(conn, flags)
            if events:
                # the UPDATE above settled ownership in this transaction
                await conn.execute(
                    INSERT_EVENTS_UNFENCED, task_id, *event_columns(events), agent_id
                )
            if notifications is not None and notifications[0]:
                names, event = notifications
                await conn.execute(q.INSERT_NOTIFICATIONS, task_id, list(names), event)
            with tolerant_rows():
                return Task.model_validate(dict(row))
