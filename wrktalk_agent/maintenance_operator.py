"""An operator's maintenance windows (``wrktalk-agent maintenance on|off``): each one a
hold of its own, next to the tasks' holds (see :mod:`wrktalk_agent.maintenance`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from wrktalk_agent.db.models import MaintenanceHold, MaintenanceState
from wrktalk_agent.db.repository import MaintenanceRecord, Repository
from wrktalk_agent.interfaces import BackendError, MaintenanceHandler
from wrktalk_agent.maintenance_holds import (
    Released,
    call_handler,
    describe_owner,
    operator_owner,
    read_state,
    release_holds,
    serialized,
)


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
    async with serialized(repo) as record:
        created = await record.hold_for_operator(holder, reason)
        await record.record_on()
    # the hold is recorded before the proxy switches (like a task's)
    async with serialized(repo) as record:
        if handler is not None:
            await call_handler(handler, handler.enable(reason), timeout, "enable")
        await record.record_on()
        state = await read_state(record)
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
            state = await read_state(record)
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

    released = await release_holds(repo, handler, timeout, release)
    if not released.holds and not released.others and released.error is None:
        # no hold recorded (a flag set by hand, an unrecorded proxy): the operator asked
        # for the proxy to be off
        async with serialized(repo) as record:
            if handler is not None:
                await call_handler(handler, handler.disable(), timeout, "disable")
            await record.record_off()
            released.switched_off = True
    state = await repo.maintenance_state()
    return OperatorResult("off", holder, released=released, state=state)
