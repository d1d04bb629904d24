"""Maintenance mode: the one place that switches it, records who holds it, and ends it.

Maintenance is on while a *hold* exists (``agent_maintenance_hold``): ``task:<id>`` for a
running deploy or rollback, ``operator:<name>`` for each window an operator opened. The
rules:

* A task's hold is written before the proxy switches, and only while the task's claim
  token still owns it (a crash in between leaves a hold naming a task, which its recovery
  releases). An operator's hold is that operator's: a second operator's ``on`` adds a
  second hold, it takes nothing over.
* Releasing a hold switches the proxy off only when it was the last hold. A task releases
  its own hold while it still holds its lease, before its outcome is written; a task whose
  agent died has its hold released by the agent that recovers it; a hold of a task that
  has ended is released by any agent (the statement that releases it proves the task over).
  ``off --force`` releases every hold and is recorded in the tasks' timelines.
* A switch-off that fails leaves the flag on with ``maintenance_off_pending_since`` set and
  the hold gone: the task retries a while itself, then every agent's maintenance loop
  retries with backoff until it succeeds. Maintenance found on with no hold and no failed
  switch-off recorded (someone else's flag) is left as found.
* Holds change and the proxy switches under one advisory lock, never under a row lock a
  poll needs: a proxy that takes ten seconds delays no claim.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from uuid import UUID

import asyncpg

from wrktalk_agent import metrics
from wrktalk_agent.db.models import MaintenanceHold, MaintenanceState
from wrktalk_agent.db.repository import MaintenanceRecord
from wrktalk_agent.guard import bounded, describe
from wrktalk_agent.interfaces import BackendError, MaintenanceHandler
from wrktalk_agent.maintenance_holds import (
    LOOPS,
    Released,
    call_handler,
    describe_hold,
    describe_owner,
    left_on_text,
    operator_owner,
    read_state,
    release_holds,
    seconds_text,
    serialized,
    task_owner,
    within_bound,
)
from wrktalk_agent.maintenance_operator import OperatorResult, operator_off, operator_on
from wrktalk_agent.services import Services

__all__ = [
    "RETRY_FIRST",
    "RETRY_MAX",
    "TASK_RETRY_SECONDS",
    "BackendError",
    "OperatorResult",
    "Released",
    "describe_hold",
    "describe_owner",
    "forget_failed_switch",
    "hold_for_task",
    "left_on_text",
    "loop",
    "operator_off",
    "operator_on",
    "operator_owner",
    "reconcile_at_startup",
    "release_for_task",
    "retry_switch_off",
    "retry_until_off",
    "seconds_text",
    "settle",
    "switch_on",
    "task_owner",
]

#: How long a task keeps retrying a failed switch-off itself before it writes its outcome
#: (the agent's maintenance loop goes on after that).
TASK_RETRY_SECONDS = 30.0
#: Backoff between switch-off attempts: first delay and ceiling, in seconds.
RETRY_FIRST, RETRY_MAX = 1.0, 60.0


async def switch_on(services: Services, reason: str) -> None:
    """Switch the proxy on (the caller recorded its hold first), under the lock."""
    handler = services.maintenance
    if handler is None:
        return
    timeout = services.settings.backend_timeout

    async def switch() -> None:
        async with serialized(services.repo) as record:
            await call_handler(handler, handler.enable(reason), timeout, "enable")
            await record.record_on()

    await within_bound(services.repo, timeout, switch)


async def forget_failed_switch(services: Services) -> None:
    """The proxy could be neither switched on nor off (a misconfigured handler): nothing
    was switched on, so nothing is pending."""
    async with serialized(services.repo) as record:
        await record.record_off()
        await read_state(record)


async def hold_for_task(
    services: Services, task_id: UUID, claim_token: UUID, reason: str
) -> MaintenanceState | None:
    """Record the task's hold, fenced by its claim. None: the claim no longer owns it."""

    async def hold() -> MaintenanceState | None:
        async with serialized(services.repo) as record:
            if not await record.hold_for_task(task_id, claim_token, reason):
                return None
            await record.record_on()
            return await read_state(record)

    result: MaintenanceState | None = await within_bound(services.repo, 0.0, hold)
    return result


async def release_for_task(services: Services, task_id: UUID, claim_token: UUID) -> Released:
    """The task's hold goes, fenced by its claim; the proxy goes off if it was the last."""

    async def release(record: MaintenanceRecord) -> list[MaintenanceHold]:
        return await record.release_task_hold(task_id, claim_token)

    return await release_holds(
        services.repo, services.maintenance, services.settings.backend_timeout, release
    )


async def retry_switch_off(services: Services) -> Released:
    """Try the switch-off again that failed after the last hold went."""
    return await release_holds(
        services.repo,
        services.maintenance,
        services.settings.backend_timeout,
        lambda record: _no_holds(),
    )


async def _no_holds() -> list[MaintenanceHold]:
    return []


async def retry_until_off(services: Services, deadline: float) -> tuple[Released, int]:
    """Retry a failed switch-off with backoff until it succeeds, a hold appears or
    ``deadline`` (monotonic) passes. Returns the last attempt and how many failed."""
    failures, delay = 1, RETRY_FIRST
    while True:
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        done = await retry_switch_off(services)
        if done.error is None or time.monotonic() >= deadline:
            return done, failures + (1 if done.error else 0)
        failures += 1
        delay = min(RETRY_MAX, delay * 2)


async def settle(services: Services, log: Any, *, quiet: bool = False) -> MaintenanceState | None:
    """See :func:`_settle` (bounded like every maintenance operation). ``quiet``: what is
    merely found (kept, unrecorded) is not logged again (the loop; start-up says it)."""
    state: MaintenanceState | None = await within_bound(
        services.repo,
        services.settings.backend_timeout,
        lambda: _settle(services, log, quiet=quiet),
    )
    return state


async def _settle(services: Services, log: Any, *, quiet: bool) -> MaintenanceState | None:
    """One pass of an agent's maintenance loop (and of its start-up): release the holds of
    tasks that have ended, and switch the proxy off when no hold is left and a switch-off
    is due. Skipped (None) while another agent does the same."""
    handler = services.maintenance
    async with services.repo.locked_maintenance(wait=False) as record:
        if record is None:
            return None
        stale = await record.release_ended_task_holds()
        for hold in stale:
            log.info("maintenance.hold_released", holder=hold.holder, why="its task has ended")
        state = await read_state(record)
        if state.holds:
            if stale:
                await record.record_holds()
            return state
        if not state.enabled:
            if quiet or stale or handler is None:
                return state
            if await _live_status(handler, services, log):
                log.warning(
                    "maintenance.unrecorded",
                    detail="the proxy is in maintenance but no hold is recorded: left on",
                )
            return state
        if not stale and state.off_pending_since is None:
            if not quiet:
                log.info("maintenance.kept", owner="nobody recorded (the flag was set by hand?)")
            return state
        timeout = services.settings.backend_timeout
        try:
            if handler is not None:
                await call_handler(handler, handler.disable(), timeout, "disable")
        except BackendError as exc:
            metrics.MAINTENANCE_OFF_FAILURES.inc()
            log.error("maintenance.disable_failed", error=describe(exc), retried=True)
            await record.record_off_pending(describe(exc))
            return await read_state(record)
        await record.record_off()
        since = state.off_pending_since
        why = (
            f"left on by {', '.join(h.holder.replace(':', ' ', 1) for h in stale)}, which has ended"
            if stale
            else "the switch-off had failed"
        )
        log.info("maintenance.cleared", why=why, left_on_since=since.isoformat() if since else None)
        return await read_state(record)


async def loop(services: Services, stop: asyncio.Event, log: Any, idle: float = 30.0) -> None:
    """Every agent: retry failed switch-offs with backoff (1 s doubling to 60 s) and clear
    holds of ended tasks, until stopped. Woken at once when a switch-off fails here."""
    wake = asyncio.Event()
    LOOPS.add(wake)
    failing = RETRY_FIRST
    try:
        while not stop.is_set():
            wake.clear()
            busy = False
            try:
                state = await asyncio.wait_for(
                    settle(services, log, quiet=True), services.settings.backend_timeout + 10
                )
                busy = state is None  # another agent (or a task here) is switching
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("maintenance.loop_failed", error=describe(exc))
                state = None
            if busy or (
                state is not None and state.off_pending_since is not None and not state.holds
            ):
                delay, failing = failing, min(RETRY_MAX, failing * 2)
            else:
                delay, failing = idle, RETRY_FIRST
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
            try:
                await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waits:
                    waiter.cancel()
    finally:
        LOOPS.discard(wake)


async def reconcile_at_startup(services: Services, log: Any) -> None:
    """Release holds of ended tasks and finish a failed switch-off; leave everything
    else as found."""
    await settle(services, log)


async def _live_status(handler: MaintenanceHandler, services: Services, log: Any) -> bool:
    try:
        return bool(
            await bounded(
                handler.status(),
                services.settings.backend_timeout,
                f"maintenance handler {handler.name!r} status",
            )
        )
    except BackendError as exc:
        log.warning("maintenance.status_failed", error=describe(exc))
        return False
