"""The owner's side of a task lease: renew it, and know the moment it is lost.

A claim gives the agent a lease on the task: the heartbeat renews it every
``HEARTBEAT_INTERVAL``. The owner measures its lease from the moment it *sent* its last
successful renewal (never later than the database's own ``last_heartbeat``), and gives it
up when it could not renew for ``STALE_AFTER`` (the renew deadline) or when the database
says the task is no longer its own. Other agents take a task over only when the database
shows no renewal for ``STALE_AFTER + STALE_MARGIN`` — so an owner that is cut off has the
margin to stop its deploy before anyone else may start one (the renew-deadline < lease
rule of Kubernetes leader election).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import asyncpg

from wrktalk_agent import metrics
from wrktalk_agent.config import AgentSettings
from wrktalk_agent.db.repository import CONNECTION_ERRORS, Repository

#: Renewal failures worth trying again: the database is away, slow, or not the primary.
RENEW_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    asyncpg.PostgresConnectionError,
    asyncpg.PostgresError,
)


class Lease:
    """Renews one task's lease until closed; ``lost`` is set once it is gone for good."""

    def __init__(
        self,
        repo: Repository,
        settings: AgentSettings,
        *,
        task_id: UUID,
        claim_token: UUID,
        instance_id: UUID,
        claimed_at: float,
        log: Any,
    ) -> None:
        self.repo = repo
        self.task_id = task_id
        self.claim_token = claim_token
        self.instance_id = instance_id
        self.agent_id = settings.agent_id
        self.interval = settings.heartbeat_interval
        self.deadline = settings.stale_after_seconds
        #: monotonic time the last successful renewal (or the claim) was sent
        self.renewed_at = claimed_at
        self.lost = asyncio.Event()
        self.reason = ""
        self.log = log

    def remaining(self) -> float:
        """Seconds until the renew deadline."""
        return self.renewed_at + self.deadline - time.monotonic()

    @property
    def valid(self) -> bool:
        return not self.lost.is_set() and self.remaining() > 0

    def _lose(self, reason: str) -> None:
        if not self.lost.is_set():
            self.reason = reason
            self.lost.set()
            metrics.LEASES_LOST.inc()
            self.log.error("lease.lost", reason=reason)

    async def _renew(self) -> None:
        failures = 0
        while True:
            if failures == 0:
                next_at = self.renewed_at + self.interval
            else:  # retry soon, but never hammer a database that is down
                next_at = time.monotonic() + min(self.interval, 0.25 * 2 ** min(failures, 4))
            wait = min(next_at - time.monotonic(), self.remaining())
            if wait > 0:
                await asyncio.sleep(wait)
            if self.remaining() <= 0:
                self._lose(f"could not renew the lease for {self.deadline:g}s")
                return
            sent = time.monotonic()
            try:
                owned = await asyncio.wait_for(
                    self.repo.heartbeat(
                        self.task_id, self.claim_token, self.agent_id, self.instance_id
                    ),
                    timeout=max(0.05, self.remaining()),
                )
            except RENEW_ERRORS as exc:
                failures += 1
                metrics.HEARTBEAT_FAILURES.inc()
                if failures == 1 or failures % 10 == 0:
                    self.log.warning(
                        "heartbeat.failed",
                        error=f"{type(exc).__name__}: {exc}".rstrip(": "),
                        lease_left=round(max(0.0, self.remaining()), 2),
                    )
                continue
            if not owned:
                self._lose("the task was taken over by another agent")
                return
            if failures:
                self.log.info("heartbeat.recovered", after_failures=failures)
            self.renewed_at = sent
            metrics.heartbeat_renewed()
            failures = 0


@asynccontextmanager
async def held(lease: Lease) -> AsyncIterator[Lease]:
    """Renew ``lease`` in the background while the block runs."""
    renewer = asyncio.create_task(lease._renew(), name=f"lease-{lease.task_id}")

    def crashed(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            lease._lose(f"lease renewal crashed: {task.exception()!r}")

    renewer.add_done_callback(crashed)
    try:
        yield lease
    finally:
        renewer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewer
