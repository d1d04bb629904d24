"""Following a task from the command line: its timeline as it grows, then its outcome
(`task deploy|rollback --wait`, `task show --follow`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import UUID

import click

from wrktalk_agent.cli.common import SHORT_ID, Failure, _time, shown_status
from wrktalk_agent.safe_text import visible

if TYPE_CHECKING:
    from wrktalk_agent.db.repository import Repository


async def follow(
    repo: Repository, task_id: UUID, timeout: float | None, *, quiet: bool = False
) -> int:
    """Print the task's timeline as it grows until the task ends: 0 completed, 1 failed.
    ``quiet``: print nothing, only wait (the caller prints the outcome)."""
    import asyncio
    import math

    loop = asyncio.get_running_loop()
    deadline = loop.time() + (timeout if timeout is not None else math.inf)
    seen = 0
    said_waiting = False
    while True:
        found = await repo.get_task(task_id)
        if found is None:
            raise Failure(f"task {task_id} disappeared from the database")
        events = await repo.task_events(task_id)
        for e in events[seen:] if not quiet else ():
            click.echo(_event_line(e))
        seen = len(events)
        if found.status in ("completed", "failed"):
            if quiet:
                return 0 if found.status == "completed" else 1
            if found.status == "completed":
                click.echo(f"task {str(task_id)[:SHORT_ID]} completed")
                return 0
            raise Failure(
                f"task {str(task_id)[:SHORT_ID]} {shown_status(found)}: "
                f"{found.error_message or 'no error message'}"
            )
        if found.status == "pending" and not said_waiting and not quiet:
            click.echo("waiting for an agent to claim it …")
            said_waiting = True
        if loop.time() >= deadline:
            raise Failure(
                f"task {str(task_id)[:SHORT_ID]} is still {found.status} after {timeout:g}s; "
                f"it goes on: `wrktalk-agent task show {str(task_id)[:SHORT_ID]}`"
            )
        await asyncio.sleep(min(0.5, max(0.0, deadline - loop.time())))


def _event_line(e: Any) -> str:
    """One timeline entry as `task show`, `--wait` and `--follow` print it: dated times."""
    return (
        f"{_time(e.created_at)}  {visible(e.step):22} {visible(e.status):9} {visible(e.message)}"
    ).rstrip()


async def follow_task(repo: Repository, task_id: UUID, interval: float = 1.0) -> int:
    """``task show --follow``: the timeline as it grows (a deploy's output included),
    then the outcome; 0 completed, 1 failed. A database outage is waited out."""
    import asyncio

    import asyncpg

    from wrktalk_agent.db.repository import CONNECTION_ERRORS

    shown, said_status, outage = 0, "", False
    while True:
        try:
            found = await repo.get_task(task_id)
            if found is None:
                raise Failure(f"no task {task_id}", exit_code=2)
            events = await repo.task_events(task_id)
        except (*CONNECTION_ERRORS, asyncpg.PostgresConnectionError, OSError) as exc:
            if not outage:
                click.echo(f"database unreachable, still following: {visible(exc)}", err=True)
            outage = True
            await asyncio.sleep(min(interval * 5, 5.0))
            continue
        outage = False
        if found.status != said_status:
            said_status = found.status
            click.echo(
                f"{visible(found.type)} {visible(found.release_version)} "
                f"{visible(shown_status(found))} "
                f"(agent {visible(found.claimed_by or '-')})"
            )
        for e in events[shown:]:
            click.echo(f"  {_event_line(e)}")
        shown = max(shown, len(events))
        if found.status in ("completed", "failed"):
            if found.error_message:
                click.echo(f"error: {visible(found.error_message, newlines=True)}")
            return 0 if found.status == "completed" else 1
        await asyncio.sleep(interval)
