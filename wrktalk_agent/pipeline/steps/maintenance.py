"""Maintenance on and off around the deploy, under the task's claim (see
:mod:`wrktalk_agent.maintenance` for the holds). A recovery releases the hold a dead
task left with :func:`release_abandoned`."""

from __future__ import annotations

import time

import asyncpg

from wrktalk_agent import maintenance as maint
from wrktalk_agent.guard import describe
from wrktalk_agent.interfaces import BackendError
from wrktalk_agent.lease import Lease
from wrktalk_agent.pipeline.lease_run import LeasedTask
from wrktalk_agent.pipeline.state import StepFailed, TaskState
from wrktalk_agent.pipeline.timeline import DB_ERRORS, FLUSH_ERRORS


async def maintenance_on(run: TaskState) -> None:
    handler = run.services.maintenance
    if handler is None:
        return
    task = run.task
    assert task.claim_token is not None and run.target is not None
    async with run.step("maintenance-on", f"{handler.name}"):
        own = maint.task_owner(task.id)
        reason = f"{task.type} {run.target.release_version} (task {task.id})"
        try:
            state = await maint.hold_for_task(run.services, task.id, task.claim_token, reason)
        except DB_ERRORS as exc:
            raise StepFailed(f"maintenance mode could not be recorded: {describe(exc)}") from None
        if state is None:
            raise StepFailed("maintenance mode not held: this claim no longer owns the task")
        # From here on, always release the hold: an enable that failed half-way (a
        # flag written, then a failed reload) must not leave the site in maintenance.
        run.maintenance.switched = True
        try:
            await maint.switch_on(run.services, reason)
        except BackendError as exc:
            run.maintenance.enable_failed = True
            raise StepFailed(f"maintenance mode could not be enabled: {exc}") from None
        others = [h for h in state.holds if h.holder != own]
        if others:
            held = ", ".join(maint.describe_hold(h) for h in others)
            await run.event("maintenance-on", "succeeded", f"on; also held by {held}")
        else:
            await run.event("maintenance-on", "succeeded", f"{handler.name} switched on")


async def maintenance_off(run: TaskState, lease: Lease) -> None:
    """Release this task's hold while the lease is held; the proxy goes off when it
    was the last hold. A failed switch-off is retried with backoff for a while here
    (the agent's maintenance loop goes on after that); what it cost is recorded."""
    if not run.maintenance.switched:
        return
    if not lease.valid:
        run.log.warning("maintenance.left_for_recovery", reason=lease.reason)
        return
    task = run.task
    assert task.claim_token is not None
    try:
        done = await maint.release_for_task(run.services, task.id, task.claim_token)
    except (*FLUSH_ERRORS, asyncpg.PostgresError) as exc:
        run.log.error("maintenance.release_failed", error=describe(exc))
        await run.event(
            "maintenance-off",
            "failed",
            f"could not release this task's hold: {describe(exc)} (released by the "
            "agents once the task has ended)",
        )
        run.maintenance.note = f"still on: this task's hold could not be released ({exc})"
        return
    if not done.released:
        return  # the claim is lost: the recovering agent releases it
    if done.others:
        await run.event("maintenance-off", "info", _stays_on(done))
        return
    if done.error is None:
        await run.event("maintenance-off", "succeeded", "switched off")
        return
    if run.maintenance.enable_failed:  # the same misconfiguration again: not a second failure
        run.log.warning("maintenance.cleanup_failed", error=done.error)
        await maint.forget_failed_switch(run.services)
        await run.event("maintenance-off", "info", "maintenance was not switched on")
        return
    await _retry_switch_off(run, done.error)


async def _retry_switch_off(run: TaskState, error: str) -> None:
    began = time.monotonic()
    run.log.error("maintenance.disable_failed", error=error, retrying=True)
    await run.event(
        "maintenance-off", "failed", f"could not switch off: {error}; retrying", flush=True
    )
    try:
        done, failures = await maint.retry_until_off(
            run.services, time.monotonic() + maint.TASK_RETRY_SECONDS
        )
    except (*FLUSH_ERRORS, asyncpg.PostgresError) as exc:
        done, failures = maint.Released(error=describe(exc)), 1
    seconds = maint.seconds_text(time.monotonic() - began)
    attempts = f"{failures} failed attempt{'s' if failures != 1 else ''}"
    if done.error is None:
        run.maintenance.note = (
            f"stayed on {seconds} longer than needed: switching it off failed "
            f"({attempts}; first: {error})"
        )
        run.log.warning("maintenance.off_after_retries", failures=failures, seconds=seconds)
        await run.event(
            "maintenance-off", "succeeded", f"switched off after {attempts} ({seconds})"
        )
    else:
        run.maintenance.still_on = True
        run.maintenance.note = (
            f"still on {seconds} after the task ended: switching it off keeps failing "
            f"({attempts}; last: {done.error}); the agent keeps retrying"
        )
        await run.event(
            "maintenance-off",
            "failed",
            f"still on after {attempts} over {seconds}: {done.error}; the agent keeps retrying",
        )


async def release_abandoned(leased: LeasedTask, lease: Lease) -> None:
    """Release a dead task's hold under this run's claim; the proxy goes off when it was
    the last (a failed switch-off is retried by the agents' maintenance loop)."""
    if not lease.valid:
        return
    task, timeline = leased.task, leased.timeline
    assert task.claim_token is not None
    done = await maint.release_for_task(leased.services, task.id, task.claim_token)
    if not done.released:
        return
    if done.others:
        await timeline.add("maintenance-off", "info", _stays_on(done))
    elif done.error is not None:
        leased.log.error("maintenance.disable_failed", error=done.error, retried=True)
        await timeline.add(
            "maintenance-off",
            "failed",
            f"could not switch off: {done.error}; the agents retry until it is off",
        )
    else:
        await timeline.add("maintenance-off", "succeeded", "left on by the dead task; switched off")


def _stays_on(done: maint.Released) -> str:
    return "stays on: held by " + ", ".join(maint.describe_hold(h) for h in done.others)
