"""`wrktalk-agent` command line (click).

Exit codes: 0 success, 1 failure (task failed, database unreachable, check failed),
2 bad input or configuration. Errors are one readable line each, never a traceback.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
import tarfile
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
import click
from pydantic import ValidationError

from wrktalk_agent import __version__
from wrktalk_agent.bootstrap import StartupError, make_registry, open_services, plugin_context
from wrktalk_agent.config import AgentSettings
from wrktalk_agent.db.models import MaintenanceState, tolerant_rows
from wrktalk_agent.db.repository import DatabaseUnavailable, Repository
from wrktalk_agent.interfaces import BackendError, validate_version
from wrktalk_agent.log import configure_logging, get_logger
from wrktalk_agent.plugins import PluginError, SettingsError, format_validation_error
from wrktalk_agent.safe_text import visible

T = TypeVar("T")


class Failure(click.ClickException):
    """An expected failure: message printed as ``error: ...``, exit code 1 (or given)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # per instance, click reads it

    def show(self, file: Any = None) -> None:
        # messages quote database values and tool output: shown, never interpreted
        for line in visible(self.format_message(), newlines=True).splitlines():
            click.echo(line if line.startswith("  ") else f"error: {line}", err=True)


def load_settings(**overrides: Any) -> AgentSettings:
    try:
        settings = AgentSettings(**overrides)
    except ValidationError as exc:
        raise Failure("\n".join(format_validation_error(exc, AgentSettings)), exit_code=2) from None
    configure_logging(settings.log_level, settings.log_format)
    return settings


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine, turning expected failures into one-line errors."""
    try:
        return asyncio.run(coro)
    except DatabaseUnavailable as exc:
        raise Failure(str(exc)) from None
    except StartupError as exc:
        raise Failure("\n".join(exc.lines), exit_code=exc.exit_code) from None
    except SettingsError as exc:
        raise Failure("\n".join(exc.lines), exit_code=2) from None
    except PluginError as exc:
        raise Failure(str(exc), exit_code=2) from None
    except asyncpg.UndefinedTableError as exc:
        raise Failure(f"{exc}; run `wrktalk-agent db init`") from None
    except asyncpg.InsufficientPrivilegeError as exc:
        raise Failure(f"{exc}; `wrktalk-agent check` names every missing privilege") from None


async def with_repo(settings: AgentSettings, work: Callable[[Repository], Awaitable[T]]) -> T:
    repo = await Repository.connect(settings)
    try:
        with tolerant_rows():  # a row with an unknown status is shown, not fatal
            return await work(repo)
    finally:
        await repo.close()


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wrktalk-agent")
def main() -> None:
    """On-premises deployment agent for WrkTalk.

    Settings come from WRKTALK_AGENT_* environment variables (see docs/operator.md).
    """


# -- plugins ---------------------------------------------------------------------------
@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """List installed plugins: name, version, distribution, hooks, backends."""
    settings = load_settings()
    try:
        registry = make_registry(settings)
    except PluginError as exc:
        raise Failure(str(exc), exit_code=2) from None
    infos = registry.infos()
    if as_json:
        print_json([info.as_dict() for info in infos])
        return
    for info in infos:
        origin = f"{info.distribution} {info.version}" if info.distribution else "module"
        click.echo(f"{info.name:10} {origin}")
        if info.error:
            kind = "failed to import" if info.error_kind == "import" else "invalid"
            click.echo(f"{'':10} warning: {kind}: {visible(info.error)}")
            continue
        click.echo(f"{'':10} hooks: {', '.join(info.hooks) or '-'}")
        click.echo(f"{'':10} backends: {', '.join(info.backends) or '-'}")


# -- db --------------------------------------------------------------------------------
@main.group()
def db() -> None:
    """Create or check the database schema."""


@db.command("init")
def db_init() -> None:
    """Apply the schema (idempotent)."""
    settings = load_settings()
    missing = run_async(with_repo(settings, lambda r: r.init_schema()))
    if missing:
        click.echo(f"schema applied to {settings.masked_dsn()}; it lacked:")
        for line in missing:
            click.echo(f"  - {line}")
    else:
        click.echo(f"schema already up to date at {settings.masked_dsn()}")


@db.command("check")
def db_check() -> None:
    """Tell what the database lacks; exit 1 if anything."""
    settings = load_settings()
    problems = run_async(with_repo(settings, _schema_problems))
    if problems:
        click.echo(f"the database at {settings.masked_dsn()} lacks:")
        for line in problems:
            click.echo(f"  - {line}")
        click.echo("run `wrktalk-agent db init` to add them")
        sys.exit(1)
    click.echo("schema complete")


async def _schema_problems(repo: Repository) -> list[str]:
    from wrktalk_agent.db.schema import missing_constraints

    problems = await repo.check_schema()
    async with repo.connection() as conn:
        return problems + await missing_constraints(conn)


# -- releases --------------------------------------------------------------------------
@main.group()
def release() -> None:
    """Store release artifacts and manage signing keys."""


def _version(_ctx: Any, _param: Any, value: str) -> str:
    try:
        return validate_version(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@release.command("add")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--version", "version", required=True, callback=_version, help="Release version.")
@click.option("--chart-type", type=click.Choice(["helm", "compose"]), required=True)
@click.option("--env-file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--values-file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--sign-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Ed25519 private key (PEM) to sign the release with.",
)
def release_add(
    file: Path,
    version: str,
    chart_type: str,
    env_file: Path | None,
    values_file: Path | None,
    sign_key: Path | None,
) -> None:
    """Store FILE (.tar, .tar.gz, .tgz) as release VERSION."""
    from wrktalk_agent.signing import load_private_key, sign_release

    settings = load_settings()
    if not tarfile.is_tarfile(file):
        raise Failure(f"{file} is not a tar archive (.tar, .tar.gz or .tgz)", exit_code=2)
    # The backend normally writes releases; this command is for operators and tests and
    # reads the file whole (the agent itself streams artifacts).
    data = file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    env_data, values_data = (
        _text_file(env_file, "--env-file"),
        _text_file(values_file, "--values-file"),
    )
    signature = None
    if sign_key is not None:
        try:
            signature = sign_release(load_private_key(sign_key.read_bytes()), digest, version)
        except ValueError as exc:
            raise Failure(f"--sign-key {sign_key}: {exc}", exit_code=2) from None

    async def add(repo: Repository) -> Any:
        if await repo.release_by_version(version) is not None:
            raise Failure(f"release {version} already exists", exit_code=2)
        try:
            return await repo.add_release(
                version=version,
                chart_type=chart_type,
                data=data,
                sha256=digest,
                env_data=env_data,
                values_data=values_data,
                signature=signature,
            )
        except asyncpg.UniqueViolationError:
            raise Failure(f"release {version} already exists", exit_code=2) from None

    info = run_async(with_repo(settings, add))
    signed = ", signed" if signature else ""
    click.echo(
        f"stored release {version} ({info.size} bytes, sha256 {digest[:12]}…{signed}) as {info.id}"
    )


def _text_file(path: Path | None, option: str) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text("utf-8")
    except UnicodeDecodeError as exc:
        raise Failure(
            f"{option} {path} is not UTF-8 text: {exc.reason} at byte {exc.start}", 2
        ) from None


@release.command("keygen")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("wrktalk-release-key"),
    show_default=True,
    help="Writes OUT (private key, 0600) and OUT.pub.",
)
def release_keygen(out: Path) -> None:
    """Create an Ed25519 key pair for signing releases."""
    import os

    from wrktalk_agent.signing import generate_keypair

    public_path = out.with_name(out.name + ".pub")
    for path in (out, public_path):
        if path.exists():
            raise Failure(f"{path} exists; refusing to overwrite a key", exit_code=2)
    private_pem, public_pem = generate_keypair()
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(public_pem)
    click.echo(f"private key: {out} (keep it secret)\npublic key:  {public_path}")
    click.echo(f"agents verify with WRKTALK_AGENT_TRUSTED_KEYS={public_path.resolve()}")


@release.command("list")
@click.option("--json", "as_json", is_flag=True)
def release_list(as_json: bool) -> None:
    """List stored releases (newest first)."""
    settings = load_settings()
    releases = run_async(with_repo(settings, lambda r: r.list_releases()))
    if as_json:
        print_json([r.model_dump(mode="json") for r in releases])
        return
    for r in releases:
        flag = "current" if r.is_current else "previous" if r.is_previous else ""
        click.echo(
            f"{visible(r.release_version):20} {visible(r.chart_type):8} {r.size:>12} "
            f"{visible(r.sha256[:12])} {flag}"
        )


# -- tasks -----------------------------------------------------------------------------
@main.group()
def task() -> None:
    """Create, list and cancel tasks."""


def _when(_ctx: Any, _param: Any, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO time like 2026-01-31T22:00:00+00:00"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC).astimezone(UTC)


@task.command("deploy")
@click.argument("version", callback=_version)
@click.option("--after", callback=_when, help="Not before this ISO time (default: now).")
def task_deploy(version: str, after: datetime | None) -> None:
    """Ask the agent to deploy release VERSION."""
    settings = load_settings()

    async def create(repo: Repository) -> Any:
        artifact = await repo.release_by_version(version)
        if artifact is None:
            raise Failure(
                f"no release {version}; store it first with `wrktalk-agent release add`", 2
            )
        return await repo.create_task("deploy", artifact.id, after)

    created = run_async(with_repo(settings, create))
    click.echo(f"deploy task {created.id} for {version} is pending")


@task.command("rollback")
@click.option("--after", callback=_when, help="Not before this ISO time (default: now).")
def task_rollback(after: datetime | None) -> None:
    """Ask the agent to roll back to the previous release."""
    settings = load_settings()

    async def create(repo: Repository) -> Any:
        previous = await repo.previous_release()
        if previous is None:
            raise Failure("no previous release to roll back to", exit_code=2)
        # naming the target lets the agent refuse if "previous" changes before it runs
        return await repo.create_task("rollback", previous.id, after), previous

    created, previous = run_async(with_repo(settings, create))
    click.echo(f"rollback task {created.id} to {previous.release_version} is pending")


@task.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.option("--status", type=click.Choice(["pending", "inProgress", "completed", "failed"]))
@click.option("--type", "task_type", type=click.Choice(["deploy", "rollback"]))
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
def task_list(as_json: bool, status: str | None, task_type: str | None, limit: int) -> None:
    """List recent tasks (newest first)."""
    settings = load_settings()
    tasks = run_async(
        with_repo(settings, lambda r: r.list_tasks(status=status, task_type=task_type, limit=limit))
    )
    if as_json:
        print_json([t.model_dump(mode="json") for t in tasks])
        return
    for t in tasks:
        when = t.created_at.strftime("%Y-%m-%d %H:%M:%S") if t.created_at else ""
        click.echo(
            f"{t.id}  {visible(t.type):8} {visible(t.release_version or '-'):16} "
            f"{visible(t.status):10} {when}  {visible((t.error_message or '')[:60])}"
        )


@task.command("show")
@click.argument("task_id", type=click.UUID)
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Print the timeline as it grows until the task ends (exit 0 completed, 1 failed).",
)
def task_show(task_id: UUID, follow: bool) -> None:
    """Show one task with its step timeline."""
    settings = load_settings()
    if follow:
        sys.exit(run_async(with_repo(settings, lambda repo: follow_task(repo, task_id))))

    async def show(repo: Repository) -> Any:
        return await repo.get_task(task_id), await repo.task_events(task_id)

    found, events = run_async(with_repo(settings, show))
    if found is None:
        raise Failure(f"no task {task_id}", exit_code=2)
    click.echo(
        f"{visible(found.type)} {visible(found.release_version)} {visible(found.status)} "
        f"(agent {visible(found.claimed_by or '-')})"
    )
    if found.error_message:
        click.echo(f"error: {visible(found.error_message, newlines=True)}")
    for e in events:
        click.echo(
            f"  {e.created_at:%H:%M:%S.%f}"[:-3]
            + f"  {visible(e.step):22} {visible(e.status):9} {visible(e.message)}"
        )


async def follow_task(repo: Repository, task_id: UUID, interval: float = 1.0) -> int:
    """``task show --follow``: the timeline as it grows (a deploy's output included),
    then the outcome; 0 completed, 1 failed. A database outage is waited out."""
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
                f"{visible(found.type)} {visible(found.release_version)} {visible(found.status)} "
                f"(agent {visible(found.claimed_by or '-')})"
            )
        for e in events[shown:]:
            click.echo(
                f"  {e.created_at:%H:%M:%S.%f}"[:-3]
                + f"  {visible(e.step):22} {visible(e.status):9} {visible(e.message)}"
            )
        shown = max(shown, len(events))
        if found.status in ("completed", "failed"):
            if found.error_message:
                click.echo(f"error: {visible(found.error_message, newlines=True)}")
            return 0 if found.status == "completed" else 1
        await asyncio.sleep(interval)


@task.command("cancel")
@click.argument("task_id", type=click.UUID)
def task_cancel(task_id: UUID) -> None:
    """Cancel a pending task (it will never be claimed)."""
    settings = load_settings()

    async def cancel(repo: Repository) -> Any:
        cancelled = await repo.cancel_task(
            task_id, "cancelled by operator (wrktalk-agent task cancel)"
        )
        if cancelled is None:
            existing = await repo.get_task(task_id)
            if existing is None:
                raise Failure(f"no task {task_id}", exit_code=2)
            raise Failure(
                f"task {task_id} is {visible(existing.status)}; only pending tasks can be "
                "cancelled",
                2,
            )
        return cancelled

    run_async(with_repo(settings, cancel))
    click.echo(f"task {task_id} cancelled")


# -- run -------------------------------------------------------------------------------
@main.command()
@click.option("--once", is_flag=True, help="Run at most one due task, then exit.")
def run(once: bool) -> None:
    """Run the agent: claim tasks and deploy them until stopped (SIGTERM/SIGINT)."""
    settings = load_settings()
    sys.exit(run_async(_run(settings, once=once)))


async def _run(settings: AgentSettings, *, once: bool) -> int:
    from wrktalk_agent.runtime import Agent

    log = get_logger(agent_id=settings.agent_id)
    services = await open_services(settings)
    agent = Agent(services)
    agent.install_signal_handlers()
    http = None
    try:
        if settings.http_port is not None and not once:
            http = await _start_http(agent, settings)
        log.info(
            "agent.started",
            version=__version__,
            database=settings.masked_dsn(),
            deployer=services.deployer.name,
            maintenance=services.maintenance.name if services.maintenance else None,
            notifiers=[n.name for n in services.notifiers],
        )
        return await agent.run(once=once)
    finally:
        if http is not None:
            await http.close()
        await services.repo.close()


async def _start_http(agent: Any, settings: AgentSettings) -> Any:
    from wrktalk_agent.http import HealthState, start_http_server

    state = HealthState(loop_stuck_after=max(60.0, 3 * settings.poll_interval))
    agent.on_tick = state.tick

    async def ready() -> bool:
        async with agent.repo.pool.acquire(timeout=3) as conn:
            await asyncio.wait_for(conn.fetchval("SELECT 1"), 3)
        return True

    return await start_http_server(settings.http_host, settings.http_port or 0, state, ready)


# -- maintenance -----------------------------------------------------------------------
@main.command()
@click.argument("action", type=click.Choice(["on", "off", "status"]))
@click.option("--reason", default="operator request", show_default=True)
@click.option("--by", "who", default=None, help="Who opens the window (default: $USER).")
@click.option("--force", is_flag=True, help="Switch off even while a task owns it.")
def maintenance(action: str, reason: str, who: str | None, force: bool) -> None:
    """Turn maintenance mode on or off by hand, or show it and who switched it on.

    An operator's window stays on through deploys and agent restarts until switched off."""
    from wrktalk_agent import maintenance as maint

    settings = load_settings()
    if settings.maintenance_name is None and action != "status":
        raise Failure("WRKTALK_AGENT_MAINTENANCE_MODE_HANDLER is 'none': nothing to switch", 2)
    log = get_logger(agent_id=settings.agent_id)
    operator = who or os.environ.get("USER") or "operator"

    async def act(repo: Repository) -> tuple[bool | None, MaintenanceState]:
        handler = None
        if settings.maintenance_name is not None:
            registry = make_registry(settings)
            handler = registry.instantiate(
                "maintenance handler", settings.maintenance_name, plugin_context(settings, repo)
            )
        try:
            if action != "status":
                await maint.operator_switch(
                    repo,
                    handler,
                    enabled=action == "on",
                    who=operator,
                    reason=reason,
                    timeout=settings.backend_timeout,
                    force=force,
                )
                log.info(f"maintenance.operator_{action}", reason=reason, by=operator)
            live = bool(await handler.status()) if handler is not None else None
        except BackendError as exc:
            raise Failure(f"{settings.maintenance_name}: {visible(exc)}") from None
        return live, await repo.maintenance_state()

    live, state = run_async(with_repo(settings, act))
    proxy = f"{settings.maintenance_name}: {'ON' if live else 'off'}" if live is not None else ""
    line = f"maintenance mode is {'ON' if state.enabled else 'off'}"
    if state.enabled:
        since = state.since.strftime("%Y-%m-%d %H:%M:%S %Z") if state.since else "unknown"
        line += f" — owner: {visible(maint.describe_owner(state))}, since {since}"
    click.echo(f"{line}{f' ({proxy})' if proxy else ''}")


# -- check -----------------------------------------------------------------------------
@main.command()
@click.option("--json", "as_json", is_flag=True)
def check(as_json: bool) -> None:
    """Preflight: database, schema, plugins, work dir, keys. Exit 1 on any failure."""
    from wrktalk_agent.preflight import format_checks, run_checks

    settings = load_settings()
    results = run_async(run_checks(settings, make_registry(settings), None))
    if as_json:
        print_json([{"name": r.name, "ok": r.ok, "detail": r.detail} for r in results])
    else:
        click.echo(visible(format_checks(results), newlines=True))
    if not all(r.ok for r in results):
        sys.exit(1)


# -- tui -------------------------------------------------------------------------------
@main.command()
@click.option("--read-only", is_flag=True, help="Hide the actions (rollback, deploy, cancel).")
def tui(read_only: bool) -> None:
    """Live dashboard for operators (needs the `tui` extra)."""
    settings = load_settings(log_format="json", log_level="error")
    try:
        from wrktalk_agent.tui import run as run_tui
    except ImportError as exc:
        raise Failure(
            f"the dashboard needs Textual: pip install 'wrktalk-agent[tui]' ({exc})", 2
        ) from None
    sys.exit(run_tui(settings, read_only=read_only))


# -- demo ------------------------------------------------------------------------------
@main.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("wrktalk-demo"),
    show_default=True,
    help="Demo directory (database, mails, site); wiped at the start of each run.",
)
@click.option(
    "--keep-running",
    is_flag=True,
    help="Afterwards keep the database, agent, site and mail sink up until Ctrl-C (for the tui).",
)
@click.option(
    "--deployer",
    type=click.Choice(["auto", "script", "compose"]),
    default="auto",
    show_default=True,
    help="auto: compose when Docker and busybox are available, else the release's script.",
)
def demo(directory: Path, keep_running: bool, deployer: str) -> None:
    """Try the agent on this machine: embedded PostgreSQL, a mail sink, three tasks.

    Deploys 1.0.0, deploys 1.1.0 and rolls back, printing each task's steps, maintenance
    mode, the releases, what the site serves and the mails. Needs the `demo` extra.
    """
    try:
        from wrktalk_agent.demo import run_demo
    except ImportError as exc:
        raise Failure(f"the demo needs: pip install 'wrktalk-agent[demo]' ({exc})", 2) from None
    sys.exit(run_demo(directory, keep_running=keep_running, deployer=deployer))  # type: ignore[arg-type]


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="wrktalk-agent")
