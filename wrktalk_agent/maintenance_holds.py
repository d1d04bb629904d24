"""Maintenance holds and the proxy's switch, under the maintenance lock: what
:mod:`wrktalk_agent.maintenance` (tasks, the loop) and the operator's commands build on,
and how holds and their owners are told in one line."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import structlog

from wrktalk_agent import metrics
from wrktalk_agent.db.models import MaintenanceHold, MaintenanceState
from wrktalk_agent.db.repository import MaintenanceRecord, Repository
from wrktalk_agent.guard import bounded, describe
from wrktalk_agent.interfaces import BackendError, MaintenanceHandler

#: the running maintenance loops of this process, woken when a switch-off fails
LOOPS: set[asyncio.Event] = set()


def wake_loops() -> None:
    for event in LOOPS:
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


def left_on_text(since: datetime | None, now: datetime) -> str:
    if since is None:
        return "left on"
    return f"left on for {seconds_text((now - since).total_seconds())}"


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


async def within_bound(repo: Repository, backend_timeout: float, call: Any) -> Any:
    """One maintenance operation (its statements and at most one proxy call) within the
    repository's bound plus the proxy's: a database that stops answering costs a bounded
    wait, like every other call of the agent."""
    return await repo.within(repo.call_timeout * 2 + backend_timeout, call)


@asynccontextmanager
async def serialized(repo: Repository) -> AsyncIterator[MaintenanceRecord]:
    """The record in a transaction holding the maintenance lock. Polls never take it."""
    async with repo.locked_maintenance() as record:
        assert record is not None  # waited for the lock
        yield record


async def read_state(record: MaintenanceRecord) -> MaintenanceState:
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


async def call_handler(handler: MaintenanceHandler, call: Any, timeout: float, what: str) -> None:
    # the handler's own log lines name it, not the task's deployer
    with structlog.contextvars.bound_contextvars(plugin=handler.name):
        await bounded(call, timeout, f"maintenance handler {handler.name!r} {what}")


async def release_holds(
    repo: Repository,
    handler: MaintenanceHandler | None,
    timeout: float,
    release: Any,
) -> Released:
    """Release holds (``release(record)`` returns the holds it released); switch the proxy
    off if none is left. All under the lock; the flag's row is written after the proxy call."""
    done: Released = await within_bound(
        repo, timeout, lambda: _release_now(repo, handler, timeout, release)
    )
    return done


async def _release_now(
    repo: Repository,
    handler: MaintenanceHandler | None,
    timeout: float,
    release: Any,
) -> Released:
    async with serialized(repo) as record:
        gone: list[MaintenanceHold] = await release(record)
        state = await read_state(record)
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
                await call_handler(handler, handler.disable(), timeout, "disable")
        except BackendError as exc:
            done.error = describe(exc)
            metrics.MAINTENANCE_OFF_FAILURES.inc()
            await record.record_off_pending(done.error)
            await read_state(record)
            wake_loops()
            return done
        await record.record_off()
        await read_state(record)
        done.switched_off = True
        return done
