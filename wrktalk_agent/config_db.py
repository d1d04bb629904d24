"""The database part of the agent's settings (``WRKTALK_AGENT_DB_*``, the DSNs) and
PostgreSQL connection strings: libpq's multi-host form, server labels, masking."""

from __future__ import annotations

import re
import typing
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from wrktalk_agent.config_env import apply_libpq_environment, apply_secret_files

SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
#: libpq's ``target_session_attrs`` values (asyncpg implements them all).
SessionAttrs = Literal["read-write", "primary", "any", "standby", "prefer-standby", "read-only"]
SESSION_ATTRS: tuple[str, ...] = typing.get_args(SessionAttrs)
#: What the agent itself must land on: it writes.
WritableSessionAttrs = Literal["read-write", "primary"]


def split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class DatabaseSettings(BaseSettings):
    """Where the agent's database is and how to reach it: the first settings of
    :class:`~wrktalk_agent.config.AgentSettings` (a base class only, never used alone)."""

    # a base only: never built on its own (AgentSettings is built when first used)
    model_config = SettingsConfigDict(env_prefix="WRKTALK_AGENT_", extra="ignore", defer_build=True)

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

    @field_validator("db_port", mode="before")
    @classmethod
    def _ports(cls, value: Any) -> Any:
        if isinstance(value, int):
            return [value]
        return split_commas(value)

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
        for entry in split_commas(value) or [""]:
            _split_host_port(entry)  # raises ValueError with the entry named
        return value

    @model_validator(mode="before")
    @classmethod
    def _secret_files_and_libpq(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = apply_secret_files(data)
            data = apply_libpq_environment(data)
        return data

    # -- derived values --------------------------------------------------------------
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
        entries = split_commas(self.db_host) or ["localhost"]
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
        if "target_session_attrs" in dsn_query(self.dsn()):
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
    query = dsn_query(dsn)
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


def dsn_query(dsn: str) -> dict[str, str]:
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
