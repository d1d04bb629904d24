"""The agent's own settings (``WRKTALK_AGENT_*``). Plugins declare theirs separately."""

from __future__ import annotations

import difflib
import os
import re
import socket
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
CommaList = Annotated[list[str], NoDecode]


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
    db_host: str = Field("localhost", description="PostgreSQL host (or unix socket directory).")
    db_port: int = Field(5432, ge=1, le=65535, description="PostgreSQL port.")
    db_name: str = Field("wrktalk", description="Database name.")
    db_user: str = Field("wrktalk", description="Database user.")
    db_password: SecretStr | None = Field(None, description="Database password.")
    db_ssl_mode: SslMode = Field("prefer", description="libpq-style TLS mode.")
    db_pool_min_size: int = Field(2, ge=1, description="Connections kept open in the pool.")
    db_pool_max_size: int = Field(10, ge=1, description="Upper bound of the pool.")

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
    heartbeat_interval: float = Field(60.0, gt=0, description="Seconds between heartbeats.")
    stale_after: float | None = Field(
        None,
        gt=0,
        description="Lease of a running task (default 3 x heartbeat): an agent that could not "
        "renew it for this long stops its own deploy.",
    )
    stale_margin: float = Field(
        15.0,
        ge=0.5,
        description="Seconds after the lease before another agent may take the task over: the "
        "owner's time to stop its deploy.",
    )
    shutdown_grace: float = Field(
        900.0, ge=0, description="Seconds a running task gets to finish after SIGTERM."
    )

    work_dir: Path = Field(
        Path(tempfile.gettempdir()) / "wrktalk-agent",
        description="Where artifacts are downloaded and extracted (private temp dirs).",
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
        if self.database_url is not None:
            scheme = urlsplit(self.database_url.get_secret_value()).scheme
            if scheme not in ("postgres", "postgresql"):
                raise ValueError("WRKTALK_AGENT_DATABASE_URL must start with postgresql://")
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
        """The connection string, password included. Never log it: use :meth:`masked_dsn`."""
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        password = self.db_password.get_secret_value() if self.db_password else ""
        auth = quote(self.db_user, safe="")
        if password:
            auth += ":" + quote(password, safe="")
        host = self.db_host
        if host.startswith("/"):  # unix socket directory
            database = quote(self.db_name, safe="")
            return f"postgresql://{auth}@/{database}?host={quote(host)}&port={self.db_port}"
        return f"postgresql://{auth}@{host}:{self.db_port}/{quote(self.db_name, safe='')}"

    def masked_dsn(self) -> str:
        return mask_dsn(self.dsn())

    def server_label(self) -> str:
        """host:port for messages about reachability (no credentials)."""
        parts = urlsplit(self.dsn())
        query = dict(parse_qsl(parts.query))
        host = parts.hostname or query.get("host", "localhost")
        port = parts.port or query.get("port", 5432)
        return f"{host}:{port}"


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
