"""The agent's own settings (``WRKTALK_AGENT_*``). Plugins declare theirs separately."""

from __future__ import annotations

import difflib
import os
import re
import socket
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from wrktalk_agent.workdir import default_work_dir

SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
CommaList = Annotated[list[str], NoDecode]
#: libpq's ``target_session_attrs`` values (asyncpg implements them all).
SessionAttrs = Literal["read-write", "primary", "any", "standby", "prefer-standby", "read-only"]
SESSION_ATTRS: tuple[str, ...] = typing.get_args(SessionAttrs)
#: What the agent itself must land on: it writes.
WritableSessionAttrs = Literal["read-write", "primary"]


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def default_agent_id() -> str:
    # In a container the pid is stable (1), so hostname-pid survives restarts there.
    return f"{socket.gethostname()}-{os.getpid()}"


class AgentSettings(BaseSettings):
    """Settings of the agent core, read from ``WRKTALK_AGENT_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="WRKTALK_AGENT_", extra="ignore")

    database_url: SecretStr | None = Field(
        None, description="Full PostgreSQL DSN; when set, the DB_* parts are ignored."
    )
    db_host: str = Field(
        "localhost",
        description="PostgreSQL host (or unix socket directory), or a comma list of hosts "
        "tried in order, each optionally `host:port` (e.g. `pg1:5432,pg2:5433`).",
    )
    db_port: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [5432],
        description="PostgreSQL port, or a comma list with one port per host in DB_HOST "
        "(a `host:port` entry there wins).",
    )
    db_name: str = Field("wrktalk", description="Database name.")
    db_user: str = Field("wrktalk", description="Database user.")
    db_password: SecretStr | None = Field(None, description="Database password.")
    db_ssl_mode: SslMode = Field("prefer", description="libpq-style TLS mode.")
    db_pool_min_size: int = Field(2, ge=1, description="Connections kept open in the pool.")
    db_pool_max_size: int = Field(10, ge=1, description="Upper bound of the pool.")
    db_target_session_attrs: WritableSessionAttrs = Field(
        "read-write",
        description="Which server of a host list the agent and CLI use (libpq's "
        "target_session_attrs): `read-write` or `primary`. A `target_session_attrs` in "
        "DATABASE_URL wins.",
    )
    tui_target_session_attrs: SessionAttrs | None = Field(
        None,
        description="The dashboard's choice among the hosts, e.g. `prefer-standby` to read "
        "from a replica (actions then fail on a standby: use `tui --read-only`); default: "
        "as the agent. Its live updates always LISTEN on the primary.",
    )
    db_pooler: Literal["none", "pgbouncer"] = Field(
        "none",
        description="`pgbouncer` when the DSN goes through PgBouncer in transaction (or "
        "statement) pooling mode: no statement cache, no prepared statement outside a "
        "transaction, and LISTEN only over LISTEN_DATABASE_URL.",
    )
    listen_database_url: SecretStr | None = Field(
        None,
        description="Direct PostgreSQL DSN (hosts may be a list) for LISTEN when DB_POOLER "
        "is set; without it the agent only polls.",
    )

    deployment_type: Literal["kubernetes", "docker"] = Field(
        "docker", description="Where WrkTalk runs; picks the default deployer."
    )
    deployer: str | None = Field(
        None, description="Deployer backend name (default: kubernetes→helm, docker→compose)."
    )
    maintenance_mode_handler: str = Field(
        "none",
        description="Maintenance backend name (nginx, haproxy, ...) or 'none'; the proxy "
        "must carry the plugin's snippet, so it is opt-in.",
    )
    notifiers: CommaList = Field(
        default_factory=lambda: ["smtp"], description="Comma list of notifier backends."
    )
    extra_plugins: CommaList = Field(
        default_factory=list,
        description="Comma list of importable plugin modules loaded besides entry points.",
    )

    agent_id: str = Field(
        default_factory=default_agent_id,
        description="Stable identity of this agent (default hostname-pid).",
    )
    installation_name: str = Field(
        "WrkTalk", description="Name of this installation, shown in emails and the TUI."
    )
    poll_interval: float = Field(30.0, gt=0, description="Seconds between polls (backstop).")
    listen: bool = Field(True, description="Wake up on NOTIFY (LISTEN) besides polling.")
    heartbeat_interval: float = Field(
        5.0,
        gt=0,
        description="Seconds between heartbeats (lease renewals, each one small UPDATE of the "
        "running task's last_heartbeat).",
    )
    stale_after: float | None = Field(
        None,
        gt=0,
        description="Lease of a running task (default 3 x heartbeat): an agent that could not "
        "renew it for this long stops its own deploy (a watchdog process enforces it even "
        "when the agent is frozen).",
    )
    stale_margin: float = Field(
        5.0,
        ge=0.5,
        description="Seconds after the lease before another agent may take the task over: the "
        "owner's time to stop its deploy.",
    )
    db_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds one database call may take; then its connection is abandoned "
        "(a link that drops packets never holds the agent up longer).",
    )
    shutdown_grace: float = Field(
        900.0, ge=0, description="Seconds a running task gets to finish after SIGTERM."
    )

    work_dir: Path = Field(
        default_factory=default_work_dir,
        description="Where artifacts are downloaded and extracted (private temp dirs); must "
        "be the agent's own: refused when another user owns or can write it or a parent.",
    )
    work_dir_check_parents: bool = Field(
        True,
        description="Also refuse a work dir whose parents another user owns or can write. "
        "Only for a single-user container whose volume is world-writable (Kubernetes "
        "emptyDir): see docs/operator.md.",
    )
    max_artifact_bytes: int = Field(1024**3, gt=0, description="Largest artifact accepted (bytes).")
    max_extracted_bytes: int = Field(
        4 * 1024**3, gt=0, description="Largest total size of extracted files (bytes)."
    )
    max_members: int = Field(10_000, gt=0, description="Most members a release tarball may hold.")
    trusted_keys: CommaList = Field(
        default_factory=list,
        description="Ed25519 public keys (PEM/base64 text or file paths); enables signatures.",
    )

    healthcheck_url: str | None = Field(None, description="HTTP URL checked after a deploy.")
    healthcheck_status: int = Field(200, description="Expected HTTP status of the check.")
    healthcheck_timeout: float = Field(5.0, gt=0, description="Seconds per health request.")
    healthcheck_retries: int = Field(10, ge=1, description="Attempts before the check fails.")
    healthcheck_interval: float = Field(3.0, ge=0, description="Seconds between attempts.")
    auto_rollback: bool = Field(True, description="Roll back automatically after a failed deploy.")
    backend_timeout: float = Field(
        120.0,
        gt=0,
        description="Seconds a maintenance switch, a validation, a preparation or a live-release "
        "query may take.",
    )
    notify_timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds one notifier may take for one notification before it is retried "
        "later.",
    )
    notify_retry_min: float = Field(
        5.0,
        gt=0,
        description="Seconds before the first retry of a notification some recipients did not "
        "get yet; doubled per attempt up to NOTIFY_RETRY_MAX.",
    )
    notify_retry_max: float = Field(
        300.0, gt=0, description="Longest wait between two attempts of a notification."
    )
    notify_give_up_after: float = Field(
        86400.0,
        gt=0,
        description="Seconds after a task's outcome until recipients not reached yet are given "
        "up (the notification becomes failed).",
    )
    deploy_timeout: float = Field(
        1800.0,
        gt=0,
        description="Seconds a deployer call may take before the agent stops it and fails "
        "the step (a backstop above the deployer's own timeouts).",
    )

    http_port: int | None = Field(
        None, ge=0, le=65535, description="Port of /healthz, /readyz, /metrics (off when unset)."
    )
    http_host: str = Field("0.0.0.0", description="Address the HTTP endpoint binds to.")  # noqa: S104

    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Minimum log level."
    )
    log_format: Literal["json", "console", "auto"] = Field(
        "auto", description="json, console, or auto (console on a TTY)."
    )

    @field_validator("notifiers", "extra_plugins", "trusted_keys", mode="before")
    @classmethod
    def _commas(cls, value: Any) -> Any:
        return _split_commas(value)

    @field_validator("notifiers", mode="after")
    @classmethod
    def _once_each(cls, value: list[str]) -> list[str]:
        twice = sorted({name for name in value if value.count(name) > 1})
        if twice:  # each would be called twice per task and counted once
            raise ValueError(f"lists {', '.join(map(repr, twice))} more than once; name each once")
        return value

    @field_validator("work_dir", mode="before")
    @classmethod
    def _path_given(cls, value: Any) -> Any:
        # pydantic reads "" as Path("."): the agent would write into whatever directory
        # it was started from
        if isinstance(value, str) and not value.strip():
            raise ValueError("is empty; give a path, or unset it to use the default")
        return value

    @field_validator("db_port", mode="before")
    @classmethod
    def _ports(cls, value: Any) -> Any:
        if isinstance(value, int):
            return [value]
        return _split_commas(value)

    @field_validator("db_port")
    @classmethod
    def _port_range(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("give at least one port")
        for port in value:
            if not 1 <= port <= 65535:
                raise ValueError(f"port {port} is not between 1 and 65535")
        return value

    @field_validator("db_host")
    @classmethod
    def _host_list(cls, value: str) -> str:
        for entry in _split_commas(value) or [""]:
            _split_host_port(entry)  # raises ValueError with the entry named
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="before")
    @classmethod
    def _secret_files_and_libpq(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = apply_secret_files(data)
            data = apply_libpq_environment(data)
        return data

    @model_validator(mode="after")
    def _consistent(self) -> AgentSettings:
        if self.db_pool_min_size > self.db_pool_max_size:
            raise ValueError(
                f"WRKTALK_AGENT_DB_POOL_MIN_SIZE ({self.db_pool_min_size}) is larger than "
                f"WRKTALK_AGENT_DB_POOL_MAX_SIZE ({self.db_pool_max_size})"
            )
        if self.stale_after_seconds < 2 * self.heartbeat_interval:
            raise ValueError(
                f"WRKTALK_AGENT_STALE_AFTER ({self.stale_after_seconds:g}s) must be at least "
                f"twice WRKTALK_AGENT_HEARTBEAT_INTERVAL ({self.heartbeat_interval:g}s): the "
                "lease must survive one late heartbeat"
            )
        hosts = _split_commas(self.db_host)
        if len(self.db_port) not in (1, len(hosts)):
            raise ValueError(
                f"WRKTALK_AGENT_DB_PORT lists {len(self.db_port)} ports for {len(hosts)} "
                "hosts in WRKTALK_AGENT_DB_HOST; give one port for all, or one per host"
            )
        for variable, url, wrong_scheme in (
            (
                "WRKTALK_AGENT_DATABASE_URL",
                self.database_url,
                "WRKTALK_AGENT_DATABASE_URL must start with postgresql://",
            ),
            (
                "WRKTALK_AGENT_LISTEN_DATABASE_URL",
                self.listen_database_url,
                "WRKTALK_AGENT_LISTEN_DATABASE_URL must start with postgresql://",
            ),
        ):
            if url is None:
                continue
            scheme = urlsplit(url.get_secret_value()).scheme
            if scheme not in ("postgres", "postgresql"):
                raise ValueError(wrong_scheme)
            attrs = _query(url.get_secret_value()).get("target_session_attrs")
            if attrs is not None and attrs not in SESSION_ATTRS:
                raise ValueError(
                    f"{variable}: target_session_attrs={attrs!r} is not one of "
                    + ", ".join(SESSION_ATTRS)
                )
        return self

    # -- derived values --------------------------------------------------------------
    @property
    def deployer_name(self) -> str:
        if self.deployer:
            return self.deployer
        return "helm" if self.deployment_type == "kubernetes" else "compose"

    @property
    def maintenance_name(self) -> str | None:
        name = self.maintenance_mode_handler.strip()
        return None if name.lower() in ("", "none") else name

    @property
    def stale_after_seconds(self) -> float:
        """The lease: how long the owner of a task may go without renewing it."""
        return self.stale_after if self.stale_after is not None else 3 * self.heartbeat_interval

    @property
    def takeover_after_seconds(self) -> float:
        """How long after the last renewal another agent may take a task over."""
        return self.stale_after_seconds + self.stale_margin

    @property
    def fence_grace_seconds(self) -> float:
        """SIGTERM-to-SIGKILL grace when an agent stops its own deploy (fits the margin)."""
        return min(5.0, self.stale_margin / 3)

    def dsn(self) -> str:
        """The connection string, password included. Never log it: use :meth:`masked_dsn`.
        Several hosts become libpq's multi-host form, ``postgresql://u@h1:p1,h2:p2/db``."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        password = self.db_password.get_secret_value() if self.db_password else ""
        auth = quote(self.db_user, safe="")
        if password:
            auth += ":" + quote(password, safe="")
        database = quote(self.db_name, safe="")
        hosts = self.hosts()
        if len(hosts) == 1 and hosts[0][0].startswith("/"):  # unix socket directory
            host, port = hosts[0]
            return f"postgresql://{auth}@/{database}?host={quote(host)}&port={port}"
        netloc = ",".join(f"{_bracket(host)}:{port}" for host, port in hosts)
        return f"postgresql://{auth}@{netloc}/{database}"

    def hosts(self) -> list[tuple[str, int]]:
        """(host, port) of every server in DB_HOST/DB_PORT, in the order they are tried."""
        entries = _split_commas(self.db_host) or ["localhost"]
        ports = self.db_port * len(entries) if len(self.db_port) == 1 else self.db_port
        pairs = []
        for entry, default_port in zip(entries, ports, strict=True):
            host, port = _split_host_port(entry)
            pairs.append((host, port if port is not None else default_port))
        return pairs

    def target_session_attrs(self, *, tui: bool = False) -> str | None:
        """What to pass to asyncpg; ``None`` when the DSN names it itself."""
        if tui and self.tui_target_session_attrs is not None:
            return self.tui_target_session_attrs
        if "target_session_attrs" in _query(self.dsn()):
            return None
        return self.db_target_session_attrs

    def masked_dsn(self) -> str:
        return mask_dsn(self.dsn())

    def server_label(self) -> str:
        """host:port (comma-separated for several hosts) for messages about reachability
        (no credentials)."""
        return dsn_server_label(self.dsn())


def dsn_server_label(dsn: str) -> str:
    """host:port of every server a DSN names, comma-separated; never credentials."""
    parts = urlsplit(dsn)
    query = _query(dsn)
    netloc = parts.netloc.rpartition("@")[2]
    hosts: list[tuple[str, int | None]] = []
    if netloc:
        try:
            hosts = [_split_host_port(entry) for entry in netloc.split(",")]
        except ValueError:
            return netloc
    elif "host" in query:
        hosts = [(host, None) for host in query["host"].split(",")]
    else:
        hosts = [("localhost", None)]
    ports = query.get("port", "5432").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    labels = []
    for (host, port), fallback in zip(hosts, ports + ["5432"] * len(hosts), strict=False):
        labels.append(f"{_bracket(host or 'localhost')}:{port or fallback}")
    return ",".join(labels)


def _query(dsn: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(dsn).query))


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _split_host_port(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``; ValueError names a bad entry."""
    entry = entry.strip()
    host, port = entry, ""
    if entry.startswith("["):
        host, bracket, rest = entry[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{entry!r} is not host, host:port or [IPv6]:port")
        port = rest[1:]
    elif entry.count(":") == 1:
        host, port = entry.split(":")
    if not host:
        raise ValueError(f"{entry!r} names no host")
    if not port:
        return host, None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{entry!r}: the port must be a number between 1 and 65535")
    return host, int(port)


def mask_dsn(dsn: str) -> str:
    """Replace the password of a DSN (if any) with ``***``."""
    parts = urlsplit(dsn)
    if parts.password is None:
        masked = dsn
    else:
        netloc = parts.netloc.rsplit("@", 1)
        user = netloc[0].split(":", 1)[0]
        masked = urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))
    # a password may also hide in the query string
    if "password=" in masked:
        masked = re.sub(r"(password=)[^&]*", r"\1***", masked)
    return masked


# -- secrets in files, libpq's variables, misspelled names --------------------------------
class SecretFileError(ValueError):
    """A ``*_FILE`` variable names a file that cannot be read (one line, no traceback)."""


#: ``VARIABLE_FILE`` → the core field it fills (Kubernetes/Docker secrets mounted as files)
SECRET_FILES: dict[str, str] = {
    "WRKTALK_AGENT_DB_PASSWORD_FILE": "db_password",
    "WRKTALK_AGENT_DATABASE_URL_FILE": "database_url",
}
#: the same for plugin settings: ``VARIABLE_FILE`` → (backend name, field)
PLUGIN_SECRET_FILES: dict[str, tuple[str, str]] = {
    "WRKTALK_AGENT_SMTP_PASSWORD_FILE": ("smtp", "password"),
}
#: libpq's variables, used when the WRKTALK_AGENT_DB_* one is not set
LIBPQ_VARIABLES: dict[str, str] = {
    "PGHOST": "db_host",
    "PGPORT": "db_port",
    "PGDATABASE": "db_name",
    "PGUSER": "db_user",
    "PGPASSWORD": "db_password",
    "PGSSLMODE": "db_ssl_mode",
}
#: read by the image's entrypoint, not by the settings models
OTHER_VARIABLES = frozenset({"WRKTALK_AGENT_SKIP_CHECK"})


def read_secret_file(variable: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The content of the file ``variable`` names (one trailing newline stripped), or
    ``None`` when the variable is unset. The direct variable and its ``_FILE`` variant
    together are refused: which one wins would be a guess."""
    environ = os.environ if environ is None else environ
    path = environ.get(variable)
    if path is None:
        return None
    direct = variable.removesuffix("_FILE")
    if environ.get(direct) is not None:
        raise SecretFileError(f"{direct} and {variable} are both set; keep one")
    try:
        text = Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise SecretFileError(f"{variable}: cannot read {path}: {reason}") from None
    return text[:-1] if text.endswith("\n") else text


def apply_secret_files(data: dict[str, Any]) -> dict[str, Any]:
    for variable, field_name in SECRET_FILES.items():
        value = read_secret_file(variable)
        if value is not None:
            data = {**data, field_name: value}
    return data


def apply_libpq_environment(data: dict[str, Any]) -> dict[str, Any]:
    """PGHOST, PGPORT, ... as libpq reads them, below the WRKTALK_AGENT_DB_* variables
    (and ignored when WRKTALK_AGENT_DATABASE_URL is set)."""
    if data.get("database_url") is not None:
        return data
    filled = dict(data)
    for variable, field_name in LIBPQ_VARIABLES.items():
        value = os.environ.get(variable)
        if value and filled.get(field_name) is None:
            filled[field_name] = value
    return filled


def plugin_secret_overrides() -> dict[str, dict[str, Any]]:
    """Plugin settings read from ``*_FILE`` variables, as registry settings overrides."""
    overrides: dict[str, dict[str, Any]] = {}
    for variable, (backend, field_name) in PLUGIN_SECRET_FILES.items():
        value = read_secret_file(variable)
        if value is not None:
            overrides.setdefault(backend, {})[field_name] = value
    return overrides


def known_variables(models: Iterable[Any] = ()) -> set[str]:
    """Every ``WRKTALK_AGENT_*`` variable some settings model (the core's, ``models``:
    each installed plugin's) reads, and the ``_FILE`` variants."""
    known = {f"WRKTALK_AGENT_{name.upper()}" for name in AgentSettings.model_fields}
    known |= set(SECRET_FILES) | set(PLUGIN_SECRET_FILES) | OTHER_VARIABLES
    for model in models:
        prefix = str(model.model_config.get("env_prefix") or "").upper()
        for name, info in model.model_fields.items():
            alias = info.validation_alias or info.alias
            choices = getattr(alias, "choices", None)
            if isinstance(alias, str):
                known.add(alias.upper())
            elif choices:
                known.update(c.upper() for c in choices if isinstance(c, str))
            else:
                known.add(f"{prefix}{name}".upper())
    return known


def unknown_variable_warnings(environ: Mapping[str, str], known: set[str]) -> list[str]:
    """One line per ``WRKTALK_AGENT_*`` variable nothing reads, with the closest known
    name when there is one (a typo is otherwise silently ignored)."""
    lines = []
    for variable in sorted(environ):
        upper = variable.upper()
        if not upper.startswith("WRKTALK_AGENT_") or upper in known:
            continue
        close = difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.75)
        if close:
            lines.append(
                f"{variable} is not a setting of the agent or an installed plugin; "
                f"did you mean {close[0]}?"
            )
        else:
            lines.append(
                f"{variable} is not a setting of the agent or an installed plugin (ignored)"
            )
    return lines
