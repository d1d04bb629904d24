"""The owner's side of a task lease: renew it, and know the moment it is lost.

A claim gives the agent a lease on the task: the heartbeat renews it every
``HEARTBEAT_INTERVAL``. The owner measures its lease from the moment it *sent* its last
successful renewal (never later than the database's own ``last_heartbeat``), and gives it
up when it could not renew for ``STALE_AFTER`` (the renew deadline) or when the database
says the task is no longer its own. Other agents take a task over only when the database
shows no renewal for ``STALE_AFTER + STALE_MARGIN`` — so an owner that is cut off has the
margin to stop its deploy before anyone else may start one (the renew-deadline < lease
rule of Kubernetes leader election).

The deadline is not only the owner's to keep: every renewal that succeeded tells the
watchdog process (:func:`wrktalk_agent.process.lease_deadline`) until when the lease
holds, and the watchdog stops the task's commands at that moment — even when this process
is frozen (SIGSTOP, Ctrl-Z, a paused VM) or blocked. Each renewal is bounded by the time
left (:meth:`Repository.within` abandons the connection rather than waiting for a network
cancel), so a link that drops packets is noticed within the renew deadline. When the
agent's connections reach another server (a failover), the claim is re-checked at once.
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

from wrktalk_agent import metrics, process
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
        #: the claim no longer exists at all (a failover lost it) rather than another
        #: agent holding it
        self.claim_vanished = False
        #: the server generation (see ``ServerWatch``) the claim was last confirmed on
        self.verified_epoch = repo.server.epoch
        self._renew_now = asyncio.Event()
        self._confirmed = asyncio.Event()

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
            self._confirmed.set()
            metrics.LEASES_LOST.inc()
            self.log.error("lease.lost", reason=reason)

    async def confirm(self) -> bool:
        """Before a step: when the agent's connections reached another server since the
        claim was last confirmed (a failover), renew now and wait for the answer. True
        while the lease holds."""
        if self.lost.is_set():
            return False
        if self.repo.server.epoch == self.verified_epoch:
            return self.valid
        self._confirmed.clear()
        self._renew_now.set()
        waiter = asyncio.ensure_future(self._confirmed.wait())
        try:
            await asyncio.wait({waiter}, timeout=max(0.0, self.remaining()))
        finally:
            waiter.cancel()
        return self.valid and self.repo.server.epoch == self.verified_epoch

    async def _pause(self, seconds: float) -> None:
        """Sleep until the next renewal is due, or at once when the server changed."""
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._renew_now.wait(), timeout=seconds)
        self._renew_now.clear()

    async def _renew(self) -> None:
        failures = 0
        while True:
            if failures == 0:
                next_at = self.renewed_at + self.interval
            else:  # retry soon, but never hammer a database that is down
                next_at = time.monotonic() + min(self.interval, 0.25 * 2 ** min(failures, 4))
            if failures or self.repo.server.epoch == self.verified_epoch:
                # a new server (a failover) is asked at once, unless it just failed
                await self._pause(min(next_at - time.monotonic(), self.remaining()))
            if self.remaining() <= 0:
                self._lose(f"could not renew the lease for {self.deadline:g}s")
                return
            sent = time.monotonic()
            epoch = self.repo.server.epoch
            try:
                # bounded by the lease left: the connection is abandoned, not cancelled
                # over a network that may be dropping every packet
                owned = await self.repo.heartbeat(
                    self.task_id,
                    self.claim_token,
                    self.agent_id,
                    self.instance_id,
                    timeout=max(0.05, min(self.remaining(), self.repo.call_timeout)),
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
                status = await self._status()
                if status == "pending":  # our claim is gone altogether: a failover lost it
                    self.claim_vanished = True
                    self._lose("the claim was lost in a database failover")
                else:
                    self._lose("the task was taken over by another agent")
                return
            if failures:
                self.log.info("heartbeat.recovered", after_failures=failures)
            self.renewed_at = sent
            self.verified_epoch = max(self.verified_epoch, epoch)
            process.lease_deadline(sent + self.deadline)
            self._confirmed.set()
            metrics.heartbeat_renewed()
            failures = 0

    async def _status(self) -> str | None:
        try:
            return await self.repo.task_status(self.task_id)
        except RENEW_ERRORS:
            return None


@asynccontextmanager
async def held(lease: Lease) -> AsyncIterator[Lease]:
    """Renew ``lease`` in the background while the block runs; the watchdog holds its
    deadline meanwhile."""
    process.lease_deadline(lease.renewed_at + lease.deadline, new_lease=True)
    wake = lease._renew_now.set
    lease.repo.server.listeners.add(wake)
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
        lease.repo.server.listeners.discard(wake)
        process.lease_deadline(None)
