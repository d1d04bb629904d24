"""`wrktalk-agent` command line (click).

Exit codes: 0 success, 1 failure (task failed, database unreachable, check failed),
2 bad input or configuration. Errors are one readable line each, never a traceback.

Imports are lazy: ``--help`` loads click and this module only, and each command loads
the database driver, pydantic models or rich when it needs them.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

import click

from wrktalk_agent.safe_text import visible

if TYPE_CHECKING:
    from wrktalk_agent.config import AgentSettings
    from wrktalk_agent.db.models import MaintenanceState, Task
    from wrktalk_agent.db.repository import Repository

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


def _logs_are_json() -> bool:
    fmt = os.environ.get("WRKTALK_AGENT_LOG_FORMAT", "auto").strip().lower()
    return fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())


#: the settings of this invocation, for naming the server in connection errors
_loaded: AgentSettings | None = None


def load_settings(
    *, warn_unknown: bool = False, command_logs: bool = True, **overrides: Any
) -> AgentSettings:
    """Settings from the environment; bad ones are one line each (exit 2).
    ``warn_unknown``: name misspelled ``WRKTALK_AGENT_*`` variables (on stderr).
    ``command_logs``: a command that prints its own result (all but ``run``): log lines
    (its plugins', its libraries') appear only for errors, the result says the rest."""
    global _loaded
    from pydantic import ValidationError

    from wrktalk_agent.config import AgentSettings, SecretFileError
    from wrktalk_agent.log import configure_logging
    from wrktalk_agent.plugins import format_validation_error

    try:
        settings = AgentSettings(**overrides)
    except SecretFileError as exc:
        raise Failure(str(exc), exit_code=2) from None
    except ValidationError as exc:
        raise Failure("\n".join(format_validation_error(exc, AgentSettings)), exit_code=2) from None
    level = settings.log_level
    if command_logs and level.lower() in ("debug", "info", "warning"):
        level = "error"
    configure_logging(level, settings.log_format)
    _loaded = settings
    if warn_unknown:
        _warn_unknown_variables(settings)
    return settings


def _warn_unknown_variables(settings: AgentSettings) -> None:
    from wrktalk_agent.config import known_variables, unknown_variable_warnings
    from wrktalk_agent.plugins import PluginError, PluginRegistry

    models: list[Any] = []
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wrktalk-agent", prog_name="wrktalk-agent")
def main() -> None:
    """On-premises deployment agent for WrkTalk.

    Settings come from WRKTALK_AGENT_* environment variables (see docs/operator.md).
    """
    global _json_errors
    _json_errors = False  # `run` sets it (one process may invoke several commands: tests)


# -- plugins ---------------------------------------------------------------------------
@main.command()
@output_options
def plugins(output: str, as_json: bool) -> None:
    """List installed plugins: name, version, distribution, hooks, backends."""
    from wrktalk_agent.bootstrap import make_registry
    from wrktalk_agent.plugins import PluginError

    settings = load_settings()
    try:
        registry = make_registry(settings)
    except PluginError as exc:
        raise Failure(str(exc), exit_code=2) from None
    infos = registry.infos()
    fmt = _format(output, as_json)
    if fmt == "json":
        print_json([info.as_dict() for info in infos])
        return
    wide = fmt == "wide"
    columns = ["NAME", "DISTRIBUTION", "VERSION", "BACKENDS", "STATUS"]
    if wide:
        columns.insert(4, "HOOKS")
    rows = []
    for info in infos:
        status = "ok"
        if info.error:
            status = "failed to import" if info.error_kind == "import" else "invalid"
        row = [
            info.name,
            info.distribution or "module",
            info.version or "-",
            ", ".join(info.backends) or "-",
            status,
        ]
        if wide:
            row.insert(4, ", ".join(info.hooks) or "-")
        rows.append(row)
    print_table(columns, rows)
    declared = registry.declared_release_types()
    shown = [f"{t} ({', '.join(d)})" for t, d in declared.items()]
    shown += [f"any ({d})" for d in registry.any_type_deployers()]
    click.echo(f"release types: {visible(', '.join(shown) or 'none')}")
    for info in infos:
        if info.error:
            kind = "failed to import" if info.error_kind == "import" else "invalid"
            click.echo(f"warning: {visible(info.name)}: {kind}: {visible(info.error)}", err=True)


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
    for name, expression in run_async(with_repo(settings, _release_type_rules)):
        # a backend's own rule on release types: reported, never changed by `db init`
        click.echo(
            f"note: release types are limited by constraint {visible(name)} "
            f"CHECK {visible(expression)} (not the agent's; `db init` leaves it)"
        )
    if problems:
        click.echo(f"the database at {settings.masked_dsn()} lacks:")
        for line in problems:
            click.echo(f"  - {line}")
        click.echo("run `wrktalk-agent db init` to add them")
        sys.exit(1)
    click.echo("schema complete")


async def _schema_problems(repo: Repository) -> list[str]:
    return await repo.schema_problems()


async def _release_type_rules(repo: Repository) -> list[tuple[str, str]]:
    return await repo.release_type_constraints()


# -- releases --------------------------------------------------------------------------
@main.group()
def release() -> None:
    """Store release artifacts and manage signing keys."""


def _version(_ctx: Any, _param: Any, value: str) -> str:
    from wrktalk_agent.interfaces import validate_version

    try:
        return validate_version(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


class ReleaseType(click.ParamType):
    """A release type the installed deployers declare (`plugins` lists them). When one of
    them takes any type (``chart_types = ()``, like script), another well-formed name is
    stored too, with a warning that only such deployers will take it."""

    name = "release type"

    def _registry(self) -> Any:
        from wrktalk_agent.bootstrap import make_registry

        return make_registry(load_settings())

    def shell_complete(self, ctx: Any, param: Any, incomplete: str) -> list[Any]:
        from click.shell_completion import CompletionItem

        try:
            declared = self._registry().declared_release_types()
        except Exception:  # completion never fails loudly
            return []
        return [CompletionItem(t) for t in declared if t.startswith(incomplete)]

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        from wrktalk_agent.interfaces import RELEASE_TYPE_PATTERN
        from wrktalk_agent.plugins import PluginError

        text = str(value)
        if not RELEASE_TYPE_PATTERN.fullmatch(text):
            self.fail(
                f"{text!r} is not a release type name (1-40 characters from "
                "[0-9A-Za-z.+_-], starting with a letter or digit)",
                param,
                ctx,
            )
        try:
            registry = self._registry()
        except PluginError as exc:
            self.fail(str(exc), param, ctx)
        declared = registry.declared_release_types()
        if text in declared:
            return text
        names = ", ".join(declared) or "none"
        anything = registry.any_type_deployers()
        if not anything:
            self.fail(
                f"no installed deployer declares release type {text!r}; declared: {names}",
                param,
                ctx,
            )
        click.echo(
            f"warning: no installed deployer declares release type {text!r} (declared: "
            f"{names}); only {', '.join(anything)}, which take any type, will deploy it",
            err=True,
        )
        return text


@release.command("add")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--version", "version", required=True, callback=_version, help="Release version.")
@click.option(
    "--chart-type",
    type=ReleaseType(),
    required=True,
    help="Release type: one the installed deployers declare (see `wrktalk-agent plugins`).",
)
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
    import hashlib
    import tarfile

    import asyncpg

    from wrktalk_agent.signing import Manifest, key_id, sign_manifest

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
    signature = signer = None
    if sign_key is not None:
        manifest = Manifest.of(
            artifact_sha256=digest,
            version=version,
            chart_type=chart_type,
            env_data=env_data,
            values_data=values_data,
        )
        private_key = _private_key(sign_key)
        signature, signer = sign_manifest(private_key, manifest), key_id(private_key)

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
    signed = f", artifact, version, chart type, env and values signed by key {signer}"
    click.echo(
        f"stored release {version} ({info.size} bytes, sha256 {digest[:12]}…"
        f"{signed if signature else ''}) as {info.id}"
    )


def _private_key(path: Path) -> Any:
    from wrktalk_agent.signing import load_private_key

    try:
        return load_private_key(path.read_bytes())
    except (ValueError, TypeError) as exc:  # TypeError: an encrypted key (no passphrase)
        raise Failure(f"--sign-key {path}: {exc}", exit_code=2) from None


@release.command("sign")
@click.argument("version", callback=_version)
@click.option(
    "--sign-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="Ed25519 private key (PEM) to sign with.",
)
def release_sign(version: str, sign_key: Path) -> None:
    """Sign release VERSION as it is stored now: its artifact (hashed as read), version,
    chart type, env and values. Signatures by other keys are kept while the content is
    unchanged (a vendor and an installation key, or an old and a new key)."""
    import tempfile

    from wrktalk_agent.artifacts import ArtifactError, fetch_artifact
    from wrktalk_agent.signing import Manifest, key_id, sign_manifest, signed_manifest

    settings = load_settings()
    private_key = _private_key(sign_key)

    async def sign(repo: Repository) -> tuple[Manifest, list[str], list[str]]:
        found = await repo.release_by_version(version)
        if found is None:
            raise Failure(
                f"no release {visible(version)}; store it first with `wrktalk-agent release add`",
                exit_code=2,
            )
        with tempfile.TemporaryDirectory(prefix="wrktalk-sign-") as scratch:
            try:
                fetched = await fetch_artifact(
                    repo, found, Path(scratch), max_bytes=settings.max_artifact_bytes
                )
            except ArtifactError as exc:
                raise Failure(visible(str(exc))) from None
        env_data, values_data = await repo.release_secrets(found.id)
        manifest = Manifest.of(
            artifact_sha256=fetched.sha256,
            version=found.release_version,
            chart_type=found.chart_type,
            env_data=env_data,
            values_data=values_data,
        )
        before = signed_manifest(found.signature)
        dropped = []
        if before is not None and before[0] != manifest:
            dropped = [k for k in before[1] if k != key_id(private_key)]
        text = sign_manifest(private_key, manifest, found.signature)
        if not await repo.set_release_signature(found.id, text, found.signature):
            raise Failure(f"release {version} changed while it was signed; sign it again")
        after = signed_manifest(text)
        assert after is not None
        return manifest, after[1], dropped

    manifest, keys, dropped = run_async(with_repo(settings, sign))
    click.echo(
        f"signed release {version}: {manifest.describe()} signed by key {key_id(private_key)}"
    )
    click.echo(f"  artifact sha256 {manifest.artifact}, chart type {visible(manifest.chart_type)}")
    for label, digest in (("env", manifest.env_data), ("values", manifest.values_data)):
        click.echo(f"  {label} sha256 {digest if digest is not None else '(absent)'}")
    click.echo(f"  signatures: {', '.join(keys)}")
    if dropped:
        click.echo(f"  dropped the signatures of {', '.join(dropped)}: they covered other content")


def _signed(signature: str | None) -> str:
    """The SIGNED column: the signing key ids, ``old scheme`` (refused by agents with
    trusted keys) or ``no``. Not verified here: the agent verifies before deploying."""
    from wrktalk_agent.signing import signed_manifest

    if not signature or not signature.strip():
        return "no"
    parsed = signed_manifest(signature)
    if parsed is None:
        return "old scheme" if not signature.strip().startswith("{") else "unreadable"
    return ",".join(parsed[1]) or "no"


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
    from wrktalk_agent.signing import key_id, load_private_key

    click.echo(f"private key: {out} (keep it secret)\npublic key:  {public_path}")
    click.echo(f"key id:      {key_id(load_private_key(private_pem))}")
    click.echo(f"agents verify with WRKTALK_AGENT_TRUSTED_KEYS={public_path.resolve()}")


@release.command("diff")
@click.argument("versions", nargs=-1, required=True)
def release_diff(versions: tuple[str, ...]) -> None:
    """What deploying TO over FROM changes: release diff [FROM] TO (FROM: the current
    release). Asks the configured deployer (services, resources, images, ports)."""
    from wrktalk_agent.artifacts import ArtifactError, make_private_dir, materialize, secure_delete
    from wrktalk_agent.bootstrap import make_registry, plugin_context
    from wrktalk_agent.contract import DEPLOYER
    from wrktalk_agent.db.models import ArtifactInfo
    from wrktalk_agent.interfaces import BackendError
    from wrktalk_agent.signing import load_trusted_keys

    if len(versions) > 2:
        raise Failure("give at most two versions: [FROM] TO", exit_code=2)
    settings = load_settings()

    async def diff(repo: Repository) -> list[str]:
        registry = make_registry(settings)
        deployer = registry.instantiate(
            "deployer", settings.deployer_name, plugin_context(settings, repo)
        )
        describe = DEPLOYER.optional_method(deployer, "describe_changes")
        if describe is None:
            raise Failure(f"deployer {deployer.name!r} cannot describe changes", exit_code=2)
        releases: list[ArtifactInfo | None] = []
        for version in versions:
            found = await repo.release_by_version(version)
            if found is None:
                raise Failure(f"no release {visible(version)}", exit_code=2)
            releases.append(found)
        if len(releases) == 1:
            releases.insert(0, await repo.current_release())
        try:
            keys = load_trusted_keys(settings.trusted_keys)
        except ValueError as exc:
            raise Failure(f"WRKTALK_AGENT_TRUSTED_KEYS: {exc}", exit_code=2) from None
        workdirs: list[Path] = []
        try:
            roots: list[Path | None] = []
            for release in releases:
                if release is None:
                    roots.append(None)
                    continue
                workdir = make_private_dir(settings.work_dir, "diff-")
                workdirs.append(workdir)
                done = await materialize(
                    repo,
                    release,
                    workdir,
                    trusted_keys=keys,
                    max_artifact_bytes=settings.max_artifact_bytes,
                    max_members=settings.max_members,
                    max_extracted_bytes=settings.max_extracted_bytes,
                )
                roots.append(done.root)
            target = roots[1]
            assert target is not None
            return [str(line) for line in await describe(roots[0], target)]
        except (ArtifactError, BackendError) as exc:
            raise Failure(visible(str(exc))) from None
        finally:
            for workdir in workdirs:
                secure_delete(workdir)

    lines = run_async(with_repo(settings, diff))
    for line in lines or ["no change"]:
        click.echo(visible(line))


@release.command("list")
@output_options
def release_list(output: str, as_json: bool) -> None:
    """List stored releases (newest first)."""
    settings = load_settings()
    releases = run_async(with_repo(settings, lambda r: r.list_releases()))
    fmt = _format(output, as_json)
    if fmt == "json":
        print_json([r.model_dump(mode="json") for r in releases])
        return
    wide = fmt == "wide"
    columns = ["VERSION", "TYPE", "SIZE", "SHA256", "STATE"]
    if wide:
        columns += ["SIGNED", "ENV", "VALUES", "APPLIED", "CREATED", "ID"]
    rows = []
    for r in releases:
        state = "current" if r.is_current else "previous" if r.is_previous else "-"
        row: list[Any] = [r.release_version, r.chart_type, r.size, r.sha256[:12], state]
        if wide:
            row += [
                _signed(r.signature),
                "yes" if r.has_env else "no",
                "yes" if r.has_values else "no",
                _time(r.applied_at),
                _time(r.created_at),
                str(r.id),
            ]
        rows.append(row)
    print_table(columns, rows)


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
@click.argument("version", callback=_version)
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


# -- run -------------------------------------------------------------------------------
@main.command()
@click.option("--once", is_flag=True, help="Run at most one due task, then exit.")
def run(once: bool) -> None:
    """Run the agent: claim tasks and deploy them until stopped (SIGTERM/SIGINT)."""
    global _json_errors
    _json_errors = _logs_are_json()
    settings = load_settings(warn_unknown=True, command_logs=False)
    sys.exit(run_async(_run(settings, once=once)))


async def _run(settings: AgentSettings, *, once: bool) -> int:
    import structlog

    from wrktalk_agent import __version__
    from wrktalk_agent.bootstrap import open_services
    from wrktalk_agent.log import get_logger
    from wrktalk_agent.runtime import Agent

    structlog.contextvars.bind_contextvars(
        agent_id=settings.agent_id
    )  # every line, library ones too
    log = get_logger()
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
        await agent.repo.ping(3)
        return True

    try:
        return await start_http_server(settings.http_host, settings.http_port or 0, state, ready)
    except OSError as exc:
        raise HttpPortError(
            f"cannot serve HTTP on {settings.http_host}:{settings.http_port}: "
            f"{os.strerror(exc.errno) if exc.errno else exc} "
            "(WRKTALK_AGENT_HTTP_PORT / WRKTALK_AGENT_HTTP_HOST)"
        ) from None


# -- maintenance -----------------------------------------------------------------------
@main.command()
@click.argument("action", type=click.Choice(["on", "off", "status"]))
@click.option("--reason", default="operator request", show_default=True)
@click.option("--by", "who", default=None, help="Whose window (default: $USER).")
@click.option("--force", is_flag=True, help="Switch off now, releasing every hold (tasks' too).")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def maintenance(action: str, reason: str, who: str | None, force: bool, output: str) -> None:
    """Open or close your maintenance window, or show who holds maintenance mode.

    Each operator's window is a hold of its own, as is a running task's: maintenance goes
    off when the last hold is released. `off` closes your window only; `off --force`
    switches maintenance off for everyone (recorded in the tasks' timelines)."""
    from wrktalk_agent import maintenance as maint
    from wrktalk_agent.bootstrap import make_registry, plugin_context
    from wrktalk_agent.interfaces import BackendError

    settings = load_settings()
    if settings.maintenance_name is None and action != "status":
        raise Failure("WRKTALK_AGENT_MAINTENANCE_MODE_HANDLER is 'none': nothing to switch", 2)
    operator = who or os.environ.get("USER") or _login_name()

    async def act(
        repo: Repository,
    ) -> tuple[bool | None, MaintenanceState, maint.OperatorResult | None]:
        handler = None
        if settings.maintenance_name is not None:
            registry = make_registry(settings)
            handler = registry.instantiate(
                "maintenance handler", settings.maintenance_name, plugin_context(settings, repo)
            )
        done = None
        try:
            if action == "on":
                done = await maint.operator_on(
                    repo, handler, who=operator, reason=reason, timeout=settings.backend_timeout
                )
            elif action == "off":
                done = await maint.operator_off(
                    repo, handler, who=operator, timeout=settings.backend_timeout, force=force
                )
            live = bool(await handler.status()) if handler is not None else None
        except BackendError as exc:
            raise Failure(f"{settings.maintenance_name}: {visible(exc)}") from None
        return live, await repo.maintenance_state(), done

    live, state, done = run_async(with_repo(settings, act))
    if output == "json":
        data: dict[str, Any] = {
            "enabled": state.enabled,
            "proxy": None if live is None else {"handler": settings.maintenance_name, "on": live},
            "holds": [
                {
                    "holder": h.holder,
                    "reason": h.reason,
                    "since": h.since.isoformat() if h.since else None,
                }
                for h in state.holds
            ],
            "off_pending_since": (
                state.off_pending_since.isoformat() if state.off_pending_since else None
            ),
            "off_error": state.off_error,
        }
        if done is not None:
            data["action"] = {"action": action, "holder": done.holder, "force": force}
            if done.released is not None:
                data["action"]["released"] = [h.holder for h in done.released.holds]
                data["action"]["switch_off_error"] = done.released.error
        print_json(data)
        return
    if done is not None and done.action == "on" and done.existed:
        click.echo(f"{operator}'s window was open already: reason now {reason!r}")
    if done is not None and done.released is not None:
        gone = done.released.holds
        if force and gone:
            click.echo(f"released by --force: {', '.join(h.holder for h in gone)}")
        if done.released.error:
            click.echo(
                f"switching maintenance off failed: {visible(done.released.error)} "
                "(a running agent retries until it is off)"
            )
    proxy = f"{settings.maintenance_name}: {'ON' if live else 'off'}" if live is not None else ""
    line = f"maintenance mode is {'ON' if state.enabled else 'off'}"
    if state.enabled:
        since = state.since.strftime("%Y-%m-%d %H:%M:%S %Z") if state.since else "unknown"
        line += f" — held by: {visible(maint.describe_owner(state))}, since {since}"
    click.echo(f"{line}{f' ({proxy})' if proxy else ''}")


def _login_name() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


# -- check -----------------------------------------------------------------------------
@main.command()
@click.option("--json", "as_json", is_flag=True, help="Same as -o json.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.option("--strict", is_flag=True, help="Exit 1 on warnings too (a notifier failing).")
def check(as_json: bool, output: str, strict: bool) -> None:
    """Preflight: database, schema, plugins, work dir, keys.

    Exit 1 when something blocks deploys (database, schema, privileges, deployer,
    maintenance handler, work dir, trusted keys). A failing notifier only degrades them
    (mails wait in the outbox): it is a WARN line and exit 0, unless --strict."""
    from wrktalk_agent.bootstrap import make_registry
    from wrktalk_agent.preflight import blocks_deploys, format_checks, run_checks

    settings = load_settings(warn_unknown=True)
    results = run_async(run_checks(settings, make_registry(settings), None))
    if as_json or output == "json":
        print_json(
            [
                {
                    "name": r.name,
                    "ok": r.ok,
                    "blocking": blocks_deploys(r),
                    "status": "ok" if r.ok else "fail" if blocks_deploys(r) else "warn",
                    "detail": r.detail,
                }
                for r in results
            ]
        )
    else:
        click.echo(visible(format_checks(results), newlines=True))
    if any(not r.ok and (strict or blocks_deploys(r)) for r in results):
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
        from wrktalk_demo import run_demo
    except ImportError as exc:
        raise Failure(f"the demo needs: pip install 'wrktalk-agent[demo]' ({exc})", 2) from None
    sys.exit(run_demo(directory, keep_running=keep_running, deployer=deployer))  # type: ignore[arg-type]


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="wrktalk-agent")
