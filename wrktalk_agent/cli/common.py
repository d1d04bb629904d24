"""What every `wrktalk-agent` command shares: settings, the event loop, the repository,
errors and output; and the ``main`` group the command modules add to.

From the command line module (click).

Exit codes: 0 success, 1 failure (task failed, database unreachable, check failed),
2 bad input or configuration. Errors are one readable line each, never a traceback.

Imports are lazy: the group (:class:`CommandModules`) imports a command's module when
that command runs, and each command loads the database driver, pydantic models or rich
when it needs them.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

import click

from wrktalk_agent import startup
from wrktalk_agent.safe_text import visible

if TYPE_CHECKING:
    from wrktalk_agent.config import AgentSettings
    from wrktalk_agent.db.models import Task
    from wrktalk_agent.db.repository import Repository
    from wrktalk_agent.plugins import PluginRegistry

T = TypeVar("T")
OUTPUTS = ("table", "wide", "json")
#: how many characters of a task id listings show (like docker's short ids)
SHORT_ID = 8


class HttpPortError(Exception):
    """The HTTP endpoint could not bind its address."""


class Failure(click.ClickException):
    """An expected failure: message printed as ``error: ...``, exit code 1 (or given)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # per instance, click reads it

    def show(self, file: Any = None) -> None:
        # messages quote database values and tool output: shown, never interpreted
        lines = visible(self.format_message(), newlines=True).splitlines()
        if _json_errors:  # `run` with JSON logs: the error is one more line of that stream
            import json
            from datetime import UTC

            record = {
                "event": "agent.start_failed",
                "level": "error",
                "error": "; ".join(line.strip() for line in lines),
                "exit_code": self.exit_code,
                "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            }
            click.echo(json.dumps(record), err=True)
            return
        for line in lines:
            click.echo(line if line.startswith("  ") else f"error: {line}", err=True)


#: `run` logs JSON (WRKTALK_AGENT_LOG_FORMAT=json, or auto off a terminal): its errors too
_json_errors = False


def json_errors(on: bool) -> None:
    """Print errors as JSON log lines (`run` with JSON logs) or as plain lines."""
    global _json_errors
    _json_errors = on


def _logs_are_json() -> bool:
    fmt = os.environ.get("WRKTALK_AGENT_LOG_FORMAT", "auto").strip().lower()
    return fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())


#: the settings of this invocation, for naming the server in connection errors
_loaded: AgentSettings | None = None


def load_settings(
    *,
    warn_unknown: bool = False,
    command_logs: bool = True,
    registry: PluginRegistry | None = None,
    **overrides: Any,
) -> AgentSettings:
    """Settings from the environment; bad ones are one line each (exit 2).
    ``warn_unknown``: name misspelled ``WRKTALK_AGENT_*`` variables (on stderr), looked up
    in ``registry``'s settings models (loaded here when not given).
    ``command_logs``: a command that prints its own result (all but ``run``): log lines
    (its plugins', its libraries') appear only for errors, the result says the rest."""
    global _loaded
    from pydantic import ValidationError

    from wrktalk_agent.config import AgentSettings, SecretFileError
    from wrktalk_agent.log import configure_logging

    try:
        settings = AgentSettings(**overrides)
    except SecretFileError as exc:
        raise Failure(str(exc), exit_code=2) from None
    except ValidationError as exc:
        from wrktalk_agent.plugins import format_validation_error  # the plugin machinery

        raise Failure("\n".join(format_validation_error(exc, AgentSettings)), exit_code=2) from None
    level = settings.log_level
    if command_logs and level.lower() in ("debug", "info", "warning"):
        level = "error"
    configure_logging(level, settings.log_format)
    _loaded = settings
    if warn_unknown:
        _warn_unknown_variables(settings, registry)
    return settings


def load_registry(settings: AgentSettings) -> PluginRegistry:
    """The installed plugins, loaded once for the command (exit 2 when that fails): the
    unknown-variable warnings and the backends come from the same load."""
    from wrktalk_agent.bootstrap import make_registry
    from wrktalk_agent.plugins import PluginError

    try:
        return make_registry(settings)
    except PluginError as exc:
        raise Failure(str(exc), exit_code=2) from None


def _warn_unknown_variables(settings: AgentSettings, registry: PluginRegistry | None) -> None:
    from wrktalk_agent.config import known_variables, unknown_variable_warnings
    from wrktalk_agent.plugins import PluginError, PluginRegistry

    models: list[Any] = []
    if registry is None:
        try:
            registry = PluginRegistry(settings.extra_plugins)
        except PluginError:
            registry = None
    if registry is not None:
        for backends in registry.backends.values():
            for backend in backends.values():
                model = getattr(backend.cls, "settings_model", None)
                if model is not None:
                    models.append(model)
    for line in unknown_variable_warnings(os.environ, known_variables(models)):
        click.echo(f"warning: {line}", err=True)


def _server() -> str:
    return f" at {_loaded.server_label()}" if _loaded is not None else ""


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine, turning expected failures into one-line errors."""
    import asyncio

    import asyncpg

    from wrktalk_agent.bootstrap import StartupError
    from wrktalk_agent.db.repository import DatabaseUnavailable, pooler_hint
    from wrktalk_agent.plugins import PluginError, SettingsError

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
    except (asyncpg.DuplicatePreparedStatementError, asyncpg.InvalidSQLStatementNameError) as exc:
        raise Failure(f"PostgreSQL{_server()}: {pooler_hint(exc)} ({visible(exc)})") from None
    except asyncpg.UndefinedTableError as exc:
        raise Failure(f"{exc}; run `wrktalk-agent db init`") from None
    except asyncpg.InsufficientPrivilegeError as exc:
        raise Failure(f"{exc}; `wrktalk-agent check` names every missing privilege") from None
    except asyncpg.InvalidAuthorizationSpecificationError as exc:
        # 28000/28P01: an unknown role, a wrong password, no pg_hba.conf entry
        raise Failure(
            f"PostgreSQL{_server()} refused the connection: {visible(exc)} "
            "(check WRKTALK_AGENT_DB_USER / _DB_PASSWORD and the server's pg_hba.conf)"
        ) from None
    except asyncpg.PostgresError as exc:
        raise Failure(f"PostgreSQL{_server()}: {type(exc).__name__}: {visible(exc)}") from None
    except HttpPortError as exc:
        raise Failure(str(exc), exit_code=2) from None


async def with_repo(settings: AgentSettings, work: Callable[[Repository], Awaitable[T]]) -> T:
    from wrktalk_agent.db.models import tolerant_rows
    from wrktalk_agent.db.repository import Repository

    repo = await Repository.connect(settings)
    try:
        with tolerant_rows():  # a row with an unknown status is shown, not fatal
            return await work(repo)
    finally:
        await repo.close()


def print_json(data: Any) -> None:
    import json

    click.echo(json.dumps(data, indent=2, default=str))


# -- output ----------------------------------------------------------------------------
def output_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``-o table|wide|json`` (and ``--json``, the same as ``-o json``)."""
    func = click.option(
        "--json", "as_json", is_flag=True, help="Same as -o json (kept for scripts)."
    )(func)
    return click.option(
        "-o",
        "--output",
        type=click.Choice(OUTPUTS),
        default="table",
        show_default=True,
        help="table, wide (more columns, full ids) or json.",
    )(func)


def _format(output: str, as_json: bool) -> str:
    return "json" if as_json else output


def print_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A header row and aligned columns (rich). Cells are data: shown through
    :func:`visible` as plain Text, never parsed as markup. Not on a terminal, lines are
    never cut or wrapped, so ``grep`` and ``awk`` see whole rows."""
    import shutil

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from wrktalk_agent.log import no_color

    tty = sys.stdout.isatty()
    table = Table(
        box=None,
        show_edge=False,
        pad_edge=False,
        padding=(0, 2, 0, 0),
        header_style="bold" if tty else "",
        highlight=False,
    )
    for column in columns:
        table.add_column(Text(column), no_wrap=True, overflow="ellipsis")
    for row in rows:
        table.add_row(*(Text(visible("" if cell is None else str(cell))) for cell in row))
    # a terminal that reports no size (a fresh pty) gets a wide one, not an empty table
    width = shutil.get_terminal_size((200, 24)).columns if tty else 100_000
    console = Console(
        width=width,
        force_terminal=tty,
        no_color=not tty or no_color(),
        markup=False,
        emoji=False,
        highlight=False,
        soft_wrap=False,
    )
    with console.capture() as captured:
        console.print(table)
    click.echo("\n".join(line.rstrip() for line in captured.get().splitlines()))


def _time(value: datetime | None, *, seconds: bool = True) -> str:
    if value is None:
        return "-"
    return value.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def shown_status(task: Task) -> str:
    """The stored status, except that a cancelled task (stored as ``failed``: the backend's
    status set has no "cancelled") is shown as ``cancelled``."""
    return task.shown_status


_BOTH_CAUSES = re.compile(r"; automatic rollback to \S+ failed too: ")


def error_cell(error: str | None, wide: bool, width: int = 60) -> str:
    """A task's error on one line; cut to ``width`` unless ``wide``. A failed deploy whose
    automatic rollback failed too keeps the start of both causes."""
    text = " ".join((error or "").split())

    def cut(part: str, room: int) -> str:
        return part if len(part) <= room else part[: room - 1] + "…"

    if wide or len(text) <= width:
        return text
    match = _BOTH_CAUSES.search(text)
    if match is not None:
        deploy, rollback = text[: match.start()], text[match.end() :]
        room = (width - len(" | rollback: ")) // 2
        return f"{cut(deploy, room)} | rollback: {cut(rollback, room)}"
    return cut(text, width + 1)


def _short(task_id: UUID | None, wide: bool) -> str:
    if task_id is None:
        return "-"
    return str(task_id) if wide else str(task_id)[:SHORT_ID]


class CommandModules(click.Group):
    """The top-level group: each command's module is imported when that command runs (or
    ``--help`` lists them all), so a command loads none of the others' code."""

    #: command name → module under ``wrktalk_agent.cli`` that adds it to ``main``
    MODULES = {
        "check": "check",
        "db": "db",
        "demo": "demo",
        "maintenance": "maintenance",
        "plugins": "plugins",
        "release": "release",
        "run": "run",
        "task": "task",
        "tui": "tui",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.MODULES, *super().list_commands(ctx)})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = self.MODULES.get(cmd_name)
        if module is not None and cmd_name not in self.commands:
            importlib.import_module(f"wrktalk_agent.cli.{module}")
        return super().get_command(ctx, cmd_name)


@click.group(cls=CommandModules, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wrktalk-agent", prog_name="wrktalk-agent")
def main() -> None:
    """On-premises deployment agent for WrkTalk.

    Settings come from WRKTALK_AGENT_* environment variables (see docs/operator.md).
    """
    global _json_errors
    _json_errors = False  # `run` sets it (one process may invoke several commands: tests)
    startup.loading()  # until the command has loaded what it runs
