"""`wrktalk-agent task deploy|rollback|list|show|cancel`: tasks, as the backend makes them."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

import click

from wrktalk_agent.cli.common import (
    SHORT_ID,
    Failure,
    _format,
    _short,
    _time,
    error_cell,
    load_settings,
    main,
    output_options,
    print_json,
    print_table,
    run_async,
    shown_status,
    with_repo,
)
from wrktalk_agent.cli.release_params import version_callback
from wrktalk_agent.cli.task_follow import follow, follow_task
from wrktalk_agent.safe_text import visible

if TYPE_CHECKING:
    from wrktalk_agent.db.models import Task
    from wrktalk_agent.db.repository import Repository


# -- tasks -----------------------------------------------------------------------------
@main.group()
def task() -> None:
    """Create, list, follow and cancel tasks. TASK_ID may be any unique prefix of an id."""


def _when(_ctx: Any, _param: Any, value: str | None) -> datetime | None:
    from datetime import UTC

    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO time like 2026-01-31T22:00:00+00:00"
        ) from None
    parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if parsed < datetime.now(UTC):
        # a past time would run at once, which is what leaving --after out says plainly
        raise click.BadParameter(
            f"{value} is in the past; leave --after out to run the task now"
        ) from None
    return parsed.astimezone(UTC)


_ID_CHARS = frozenset("0123456789abcdef-")


async def resolve_task_id(repo: Repository, given: str) -> UUID:
    """A full task id, or a unique prefix of one (like git and docker accept)."""
    text = given.strip().lower()
    if not text or not set(text) <= _ID_CHARS or len(text) > 36:
        raise Failure(f"{given!r} is not a task id (hexadecimal digits, as listed)", 2)
    digits = text.replace("-", "")
    if len(digits) == 32:
        return UUID(digits)
    # a range on the primary key: the index answers it
    low, high = UUID(digits.ljust(32, "0")), UUID(digits.ljust(32, "f"))
    found = await repo.task_ids_with_prefix(low, high, limit=6)
    if not found:
        raise Failure(f"no task {given}", 2)
    if len(found) > 1:
        candidates = ", ".join(str(i) for i in found[:5])
        more = " and more" if len(found) > 5 else ""
        raise Failure(f"task id prefix {given} is ambiguous: {candidates}{more}", 2)
    return found[0]


def _wait_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="With --wait: give up waiting after this many seconds (exit 1; the task goes on).",
    )(func)
    return click.option(
        "--wait",
        is_flag=True,
        help="Follow the task to its end, printing its steps; exit 0 completed, 1 failed.",
    )(func)


async def _created(
    repo: Repository, created: Task, line: str, output: str, wait: bool, timeout: float | None
) -> int:
    """What `task deploy|rollback` print: a line (then the steps with --wait), or with
    ``-o json`` the task (with --wait: once it ended, with its timeline)."""
    if output != "json":
        click.echo(line)
        return await follow(repo, created.id, timeout) if wait else 0
    code = await follow(repo, created.id, timeout, quiet=True) if wait else 0
    found = await repo.get_task(created.id) if wait else created
    assert found is not None
    data: dict[str, Any] = {"task": found.shown_json()}
    if wait:
        data["events"] = [e.model_dump(mode="json") for e in await repo.task_events(created.id)]
    print_json(data)
    return code


_json_output = click.option(
    "-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True
)


@task.command("deploy")
@click.argument("version", callback=version_callback)
@click.option("--after", callback=_when, help="Not before this ISO time (default: now).")
@_wait_options
@_json_output
def task_deploy(
    version: str, after: datetime | None, wait: bool, timeout: float | None, output: str
) -> None:
    """Ask the agent to deploy release VERSION."""
    settings = load_settings()

    async def create(repo: Repository) -> Any:
        artifact = await repo.release_by_version(version)
        if artifact is None:
            raise Failure(
                f"no release {version}; store it first with `wrktalk-agent release add`", 2
            )
        created = await repo.create_task("deploy", artifact.id, after)
        line = f"deploy task {created.id} for {version} is pending"
        return await _created(repo, created, line, output, wait, timeout)

    sys.exit(run_async(with_repo(settings, create)))


@task.command("rollback")
@click.option("--after", callback=_when, help="Not before this ISO time (default: now).")
@_wait_options
@_json_output
def task_rollback(after: datetime | None, wait: bool, timeout: float | None, output: str) -> None:
    """Ask the agent to roll back to the previous release."""
    settings = load_settings()

    async def create(repo: Repository) -> Any:
        pending = await repo.pending_rollback()
        if pending is not None:
            raise Failure(
                f"rollback task {pending} is already pending; wait for it or cancel it "
                f"(`wrktalk-agent task cancel {str(pending)[:SHORT_ID]}`)",
                2,
            )
        previous = await repo.previous_release()
        if previous is None:
            raise Failure("no previous release to roll back to", exit_code=2)
        # naming the target lets the agent refuse if "previous" changes before it runs
        created = await repo.create_task("rollback", previous.id, after)
        line = f"rollback task {created.id} to {previous.release_version} is pending"
        return await _created(repo, created, line, output, wait, timeout)

    sys.exit(run_async(with_repo(settings, create)))


@task.command("list")
@output_options
@click.option(
    "--status", type=click.Choice(["pending", "inProgress", "completed", "failed", "cancelled"])
)
@click.option("--type", "task_type", type=click.Choice(["deploy", "rollback"]))
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
def task_list(
    output: str, as_json: bool, status: str | None, task_type: str | None, limit: int
) -> None:
    """List recent tasks (newest first)."""
    settings = load_settings()
    tasks = run_async(
        with_repo(settings, lambda r: r.list_tasks(status=status, task_type=task_type, limit=limit))
    )
    fmt = _format(output, as_json)
    if fmt == "json":
        print_json([t.shown_json() for t in tasks])
        return
    wide = fmt == "wide"
    columns = ["ID", "TYPE", "VERSION", "STATUS", "CREATED"]
    if wide:
        columns += ["AFTER", "PICKED UP", "FINISHED", "AGENT"]
    columns.append("ERROR")
    rows = []
    for t in tasks:
        row: list[Any] = [
            _short(t.id, wide),
            t.type,
            t.release_version or "-",
            shown_status(t),
            _time(t.created_at),
        ]
        if wide:
            row += [
                _time(t.execute_after),
                _time(t.picked_up_at),
                _time(t.completed_at),
                t.claimed_by or "-",
            ]
        row.append(error_cell(t.error_message, wide))
        rows.append(row)
    print_table(columns, rows)


@task.command("show")
@click.argument("task_id")
@output_options
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Print the timeline as it grows until the task ends (exit 0 completed, 1 failed).",
)
def task_show(task_id: str, output: str, as_json: bool, follow: bool) -> None:
    """Show one task with its step timeline."""
    settings = load_settings()
    if follow:

        async def follow_it(repo: Repository) -> int:
            return await follow_task(repo, await resolve_task_id(repo, task_id))

        sys.exit(run_async(with_repo(settings, follow_it)))

    async def show(repo: Repository) -> Any:
        resolved = await resolve_task_id(repo, task_id)
        return await repo.get_task(resolved), await repo.task_events(resolved)

    found, events = run_async(with_repo(settings, show))
    if found is None:
        raise Failure(f"no task {task_id}", exit_code=2)
    fmt = _format(output, as_json)
    ran_by, recovered_by = _agents_of(found, events)
    if fmt == "json":
        print_json(
            {
                "task": found.shown_json(),
                "ran_by": ran_by,
                "recovered_by": recovered_by,
                "events": [e.model_dump(mode="json") for e in events],
            }
        )
        return
    wide = fmt == "wide"
    agents = f"agent {visible(ran_by or '-')}"
    if recovered_by:
        agents = f"ran on agent {visible(ran_by or '-')}, recovered by {visible(recovered_by)}"
    click.echo(
        f"{visible(found.type)} {visible(found.release_version or '-')} "
        f"{visible(shown_status(found))} (task {found.id}, {agents})"
    )
    if found.error_message:
        click.echo(f"error: {visible(found.error_message, newlines=True)}")
    result = found.result or {}
    live = result.get("live")
    if isinstance(live, dict):
        state = " ".join(str(live.get(k) or "") for k in ("version", "state")).strip()
        detail = f" ({live['detail']})" if live.get("detail") else ""
        click.echo(f"live: {visible(state or 'unknown')}{visible(detail)}")
    if result.get("next_step"):
        click.echo(f"next: {visible(str(result['next_step']))}")
    if result.get("maintenance"):
        click.echo(f"maintenance: {visible(str(result['maintenance']))}")
    columns = ["TIME", "STEP", "STATUS", "MESSAGE"] + (["AGENT"] if wide else [])
    rows = []
    for e in events:
        when = f"{e.created_at:%Y-%m-%d %H:%M:%S.%f}"[:-3] if wide else _time(e.created_at)
        row = [when, e.step, e.status, " ".join(e.message.split())]
        if wide:
            row.append(e.agent_id or "-")
        rows.append(row)
    if rows:
        print_table(columns, rows)


def _agents_of(task: Task, events: Sequence[Any]) -> tuple[str | None, str | None]:
    """The agent that ran the task (its ``claimed`` entry) and the one that recovered it
    after that agent died (its ``recovery`` entry), from the timeline; the task row names
    only the last."""
    ran_by = next((e.agent_id for e in events if e.step == "claimed"), None)
    recovered_by = next(
        (e.agent_id for e in events if e.step == "recovery" and e.status == "started"), None
    )
    if ran_by is None and recovered_by is None:
        ran_by = task.claimed_by
    return ran_by, recovered_by


@task.command("cancel")
@click.argument("task_id")
@click.option("--by", "who", default=None, help="Who cancels (default: $USER).")
def task_cancel(task_id: str, who: str | None) -> None:
    """Cancel a pending task (it will never be claimed).

    It is stored as failed (the backend's status set has no "cancelled") with an error
    starting "cancelled" and the result {"cancelled": true, "by": ...}; listings show
    "cancelled"."""
    settings = load_settings()
    operator = who or os.environ.get("USER") or "operator"

    async def cancel(repo: Repository) -> UUID:
        resolved = await resolve_task_id(repo, task_id)
        cancelled = await repo.cancel_task(resolved, by=operator, via="wrktalk-agent task cancel")
        if cancelled is None:
            existing = await repo.get_task(resolved)
            if existing is None:
                raise Failure(f"no task {task_id}", exit_code=2)
            raise Failure(
                f"task {resolved} is {visible(shown_status(existing))}; only pending tasks can "
                "be cancelled",
                2,
            )
        return resolved

    resolved = run_async(with_repo(settings, cancel))
    click.echo(f"task {resolved} cancelled")
