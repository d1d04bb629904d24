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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import structlog

from wrktalk_agent import metrics
from wrktalk_agent.db.models import MaintenanceHold, MaintenanceState
from wrktalk_agent.db.repository import MaintenanceRecord, Repository
from wrktalk_agent.guard import bounded, describe
from wrktalk_agent.interfaces import BackendError, MaintenanceHandler
from wrktalk_agent.services import Services

#: How long a task keeps retrying a failed switch-off itself before it writes its outcome
#: (the agent's maintenance loop goes on after that).
TASK_RETRY_SECONDS = 30.0
#: Backoff between switch-off attempts: first delay and ceiling, in seconds.
RETRY_FIRST, RETRY_MAX = 1.0, 60.0
#: the running maintenance loops of this process, woken when a switch-off fails
_LOOPS: set[asyncio.Event] = set()


def _wake_loops() -> None:
    for event in _LOOPS:
        event.set()


def task_owner(task_id: UUID) -> str:
    return f"task:{task_id}"


def operator_owner(name: str) -> str:
    return f"operator:{name}"


def describe_hold(hold: MaintenanceHold) -> str:
    """E.g. ``task 1b2c… (deploy 1.2.0)`` or ``operator alice (db migration)``."""
    kind, _, who = hold.holder.partition(":")
    text = f"{kind} {who}".strip()
    return f"{text} ({hold.reason})" if hold.reason else text


def describe_owner(state: MaintenanceState) -> str:
    """Who keeps maintenance on, for one line of text."""
    if state.holds:
        return ", ".join(describe_hold(h) for h in state.holds)
    if state.off_pending_since is not None:
        return "nobody: switching it off failed, the agent retries"
    return "nobody recorded"


def seconds_text(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


@dataclass
class Released:
    """What releasing a hold did."""

    #: the hold existed and is gone (False: not held, or the claim no longer owns it)
    released: bool = False
    #: holds that keep maintenance on
    others: list[MaintenanceHold] = field(default_factory=list)
    #: the proxy was switched off
    switched_off: bool = False
    #: the switch-off failed: maintenance stays on and is retried
    error: str | None = None
    #: holds released (more than one with --force)
    holds: list[MaintenanceHold] = field(default_factory=list)


async def _bounded(repo: Repository, backend_timeout: float, call: Any) -> Any:
    """One maintenance operation (its statements and at most one proxy call) within the
    repository's bound plus the proxy's: a database that stops answering costs a bounded
    wait, like every other call of the agent."""
    return await repo.within(repo.call_timeout * 2 + backend_timeout, call)


@asynccontextmanager
async def _serialized(repo: Repository) -> AsyncIterator[MaintenanceRecord]:
    """The record in a transaction holding the maintenance lock. Polls never take it."""
    async with repo.locked_maintenance() as record:
        assert record is not None  # waited for the lock
        yield record


async def _state(record: MaintenanceRecord) -> MaintenanceState:
    """Maintenance as recorded; /metrics shows what was read (between two refreshes)."""
    state = await record.state()
    _observe(state)
    return state


def _observe(state: MaintenanceState) -> None:
    metrics.MAINTENANCE.set(1 if state.enabled else 0)
    pending = state.off_pending_since
    metrics.MAINTENANCE_OFF_PENDING_SINCE.set(pending.timestamp() if pending else 0)
    for kind in metrics.HOLD_KINDS:
        holds = [h for h in state.holds if h.kind == kind]
        times = [h.since.timestamp() for h in holds if h.since is not None]
        metrics.MAINTENANCE_HOLDS.labels(kind=kind).set(len(holds))
        metrics.MAINTENANCE_HOLD_SINCE.labels(kind=kind).set(min(times) if times else 0)


async def _call(handler: MaintenanceHandler, call: Any, timeout: float, what: str) -> None:
    # the handler's own log lines name it, not the task's deployer
    with structlog.contextvars.bound_contextvars(plugin=handler.name):
        await bounded(call, timeout, f"maintenance handler {handler.name!r} {what}")


async def switch_on(services: Services, reason: str) -> None:
    """Switch the proxy on (the caller recorded its hold first), under the lock."""
    handler = services.maintenance
    if handler is None:
        return
    timeout = services.settings.backend_timeout

    async def switch() -> None:
        async with _serialized(services.repo) as record:
            await _call(handler, handler.enable(reason), timeout, "enable")
            await record.record_on()

    await _bounded(services.repo, timeout, switch)


async def forget_failed_switch(services: Services) -> None:
    """The proxy could be neither switched on nor off (a misconfigured handler): nothing
    was switched on, so nothing is pending."""
    async with _serialized(services.repo) as record:
        await record.record_off()
        await _state(record)


async def hold_for_task(
    services: Services, task_id: UUID, claim_token: UUID, reason: str
) -> MaintenanceState | None:
    """Record the task's hold, fenced by its claim. None: the claim no longer owns it."""

    async def hold() -> MaintenanceState | None:
        async with _serialized(services.repo) as record:
            if not await record.hold_for_task(task_id, claim_token, reason):
                return None
            await record.record_on()
            return await _state(record)

    result: MaintenanceState | None = await _bounded(services.repo, 0.0, hold)
    return result


async def _release(
    repo: Repository,
    handler: MaintenanceHandler | None,
    timeout: float,
    release: Any,
) -> Released:
    """Release holds (``release(record)`` returns the holds it released); switch the proxy
    off if none is left. All under the lock; the flag's row is written after the proxy call."""
    done: Released = await _bounded(
        repo, timeout, lambda: _release_now(repo, handler, timeout, release)
    )
    return done


async def _release_now(
    repo: Repository,
    handler: MaintenanceHandler | None,
    timeout: float,
    release: Any,
) -> Released:
    async with _serialized(repo) as record:
        gone: list[MaintenanceHold] = await release(record)
        state = await _state(record)
        done = Released(released=bool(gone), others=list(state.holds), holds=gone)
        if not gone and not state.off_pending_since:
            return done
        if state.holds:
            await record.record_holds()
            return done
        if not state.enabled and not state.off_pending_since:
            return done  # nothing was switched on (e.g. the hold was recorded, then refused)
        try:
            if handler is not None:
                await _call(handler, handler.disable(), timeout, "disable")
        except BackendError as exc:
            done.error = describe(exc)
            metrics.MAINTENANCE_OFF_FAILURES.inc()
            await record.record_off_pending(done.error)
            await _state(record)
            _wake_loops()
            return done
        await record.record_off()
        await _state(record)
        done.switched_off = True
        return done


async def release_for_task(services: Services, task_id: UUID, claim_token: UUID) -> Released:
    """The task's hold goes, fenced by its claim; the proxy goes off if it was the last."""

    async def release(record: MaintenanceRecord) -> list[MaintenanceHold]:
        return await record.release_task_hold(task_id, claim_token)

    return await _release(
        services.repo, services.maintenance, services.settings.backend_timeout, release
    )


async def retry_switch_off(services: Services) -> Released:
    """Try the switch-off again that failed after the last hold went."""
    return await _release(
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
    state: MaintenanceState | None = await _bounded(
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
        state = await _state(record)
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
                await _call(handler, handler.disable(), timeout, "disable")
        except BackendError as exc:
            metrics.MAINTENANCE_OFF_FAILURES.inc()
            log.error("maintenance.disable_failed", error=describe(exc), retried=True)
            await record.record_off_pending(describe(exc))
            return await _state(record)
        await record.record_off()
        since = state.off_pending_since
        why = (
            f"left on by {', '.join(h.holder.replace(':', ' ', 1) for h in stale)}, which has ended"
            if stale
            else "the switch-off had failed"
        )
        log.info("maintenance.cleared", why=why, left_on_since=since.isoformat() if since else None)
        return await _state(record)


async def loop(services: Services, stop: asyncio.Event, log: Any, idle: float = 30.0) -> None:
    """Every agent: retry failed switch-offs with backoff (1 s doubling to 60 s) and clear
    holds of ended tasks, until stopped. Woken at once when a switch-off fails here."""
    wake = asyncio.Event()
    _LOOPS.add(wake)
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
        _LOOPS.discard(wake)


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


@dataclass
class OperatorResult:
    """What ``maintenance on|off`` did, for the CLI to print."""

    action: str
    holder: str
    #: on: a window of this operator existed already (its reason was updated)
    existed: bool = False
    released: Released | None = None
    state: MaintenanceState = field(default_factory=MaintenanceState)


async def operator_on(
    repo: Repository, handler: MaintenanceHandler | None, *, who: str, reason: str, timeout: float
) -> OperatorResult:
    """Open (or re-reason) ``who``'s window and switch the proxy on. Other holds stay."""
    holder = operator_owner(who)
    async with _serialized(repo) as record:
        created = await record.hold_for_operator(holder, reason)
        await record.record_on()
    # the hold is recorded before the proxy switches (like a task's)
    async with _serialized(repo) as record:
        if handler is not None:
            await _call(handler, handler.enable(reason), timeout, "enable")
        await record.record_on()
        state = await _state(record)
    return OperatorResult("on", holder, existed=not created, state=state)


async def operator_off(
    repo: Repository,
    handler: MaintenanceHandler | None,
    *,
    who: str,
    timeout: float,
    force: bool = False,
) -> OperatorResult:
    """Close ``who``'s window; the proxy goes off when no other hold is left. ``force``
    releases every hold (tasks' included) and notes it in their timelines."""
    holder = operator_owner(who)

    async def release(record: MaintenanceRecord) -> list[MaintenanceHold]:
        if not force:
            state = await _state(record)
            if state.held_by(holder) is None and state.holds:
                raise BackendError(
                    f"{who} holds no maintenance window; held by "
                    f"{describe_owner(state)} (--force switches it off for everyone)"
                )
            return await record.release_hold(holder)
        holds = await record.release_all_holds()
        tasks = [h.task_id for h in holds if h.task_id is not None]
        if tasks:
            await record.note_in_timelines(
                tasks, f"maintenance switched off by operator {who} with --force"
            )
        return holds

    released = await _release(repo, handler, timeout, release)
    if not released.holds and not released.others and released.error is None:
        # no hold recorded (a flag set by hand, an unrecorded proxy): the operator asked
        # for the proxy to be off
        async with _serialized(repo) as record:
            if handler is not None:
                await _call(handler, handler.disable(), timeout, "disable")
            await record.record_off()
            released.switched_off = True
    state = await repo.maintenance_state()
    return OperatorResult("off", holder, released=released, state=state)


def left_on_text(since: datetime | None, now: datetime) -> str:
    if since is None:
        return "left on"
    return f"left on for {seconds_text((now - since).total_seconds())}"
