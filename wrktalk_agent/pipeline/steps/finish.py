"""Outcome: the verdict, the release flags, the maintenance record and the notification,
written in one transaction while this claim still owns the task."""

from __future__ import annotations

import asyncio
from typing import Literal

from wrktalk_agent.db.repository import FlagChange
from wrktalk_agent.pipeline.outcome import Verdict, kind_for, write_outcome
from wrktalk_agent.pipeline.state import TaskState
from wrktalk_agent.pipeline.steps.notify import notification


async def finish(run: TaskState, verdict: Verdict) -> Literal["completed", "failed"] | None:
    """Write the outcome, flags, maintenance record and the notifications promised in
    one transaction (retrying through outages). None: the task was taken away."""
    redact = run.secrets.redact
    status = verdict.status
    error = redact(verdict.error) if verdict.error else None
    rollback_error = redact(verdict.rollback_error) if verdict.rollback_error else None
    # free text a tool or a backend wrote (outputs, errors, details) was masked where
    # it entered the result; the agent's own fields (versions, timings) are as they are
    flags = None
    if status == "completed" and run.target is not None:
        flags = FlagChange(promote=run.target.id)
    if run.interrupted_live and error:
        error = f"{error}; {run.interrupted_live}"
    note = run.maintenance.note
    if note:
        run.result.maintenance = note
        if run.maintenance.still_on:  # the release is live, the site is not back
            status = "failed"
            error = f"{error + '; ' if error else ''}maintenance mode {note}"
    run.result.outcome = status
    run.result.error = error
    event = notification(
        run.leased,
        kind=verdict.kind or kind_for(run.task.type, status),
        outcome=status,
        target=run.target,
        current=run.current,
        error=redact(verdict.deploy_error) if verdict.deploy_error else error,
        started_at=run.started_at,
        steps=run.timings,
        rollback_error=rollback_error,
        changes=run.changes,
        maintenance=note,
    )
    try:
        return await write_outcome(
            run.services,
            run.task,
            run.timeline,
            status=status,
            result=run.result.to_json(),
            error=error,
            flags=flags,
            event=event,
        )
    except asyncio.CancelledError:
        # A second signal while the outcome is being written: it stays unwritten and
        # the task is recovered by whichever agent takes it over (never re-run).
        run.log.error("outcome.unwritten", outcome=status)
        raise
