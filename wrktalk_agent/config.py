"""The agent's own settings (``WRKTALK_AGENT_*``). Plugins declare theirs separately.

:class:`AgentSettings` is one pydantic-settings model; its database fields come first,
from :class:`~wrktalk_agent.config_db.DatabaseSettings`. Secrets in files and libpq's
variables are read by :mod:`~wrktalk_agent.config_env`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from wrktalk_agent.config_db import (
    SESSION_ATTRS,
    DatabaseSettings,
    SessionAttrs,
    SslMode,
    WritableSessionAttrs,
    dsn_query,
    dsn_server_label,
    mask_dsn,
    split_commas,
)
from wrktalk_agent.config_env import (
    LIBPQ_VARIABLES,
    OTHER_VARIABLES,
    PLUGIN_SECRET_FILES,
    SECRET_FILES,
    SecretFileError,
    apply_libpq_environment,
    apply_secret_files,
    plugin_secret_overrides,
    read_secret_file,
    unknown_variable_warnings,
)
from wrktalk_agent.workdir import default_work_dir

__all__ = [
    "LIBPQ_VARIABLES",
    "OTHER_VARIABLES",
    "PLUGIN_SECRET_FILES",
    "SECRET_FILES",
    "SESSION_ATTRS",
    "AgentSettings",
    "CommaList",
    "SecretFileError",
    "SessionAttrs",
    "SslMode",
    "WritableSessionAttrs",
    "apply_libpq_environment",
    "apply_secret_files",
    "default_agent_id",
    "dsn_server_label",
    "known_variables",
    "mask_dsn",
    "plugin_secret_overrides",
    "read_secret_file",
    "unknown_variable_warnings",
]

CommaList = Annotated[list[str], NoDecode]


def default_agent_id() -> str:
    # In a container the pid is stable (1), so hostname-pid survives restarts there.
    return f"{socket.gethostname()}-{os.getpid()}"


class AgentSettings(DatabaseSettings):
    """Settings of the agent core, read from ``WRKTALK_AGENT_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="WRKTALK_AGENT_", extra="ignore")

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
        return split_commas(value)

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
        hosts = split_commas(self.db_host)
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
            attrs = dsn_query(url.get_secret_value()).get("target_session_attrs")
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
