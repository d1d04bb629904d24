"""Connections to PostgreSQL: how they are opened (pool, single, LISTEN), which errors mean
"the database is not there right now", and which server they reached (a new one means a
failover: :data:`SERVER`). :class:`~wrktalk_agent.db.repository.Repository` is built on
these; the CLI and the runtime use the LISTEN and single connections directly."""

from __future__ import annotations

import contextvars
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg

from wrktalk_agent.config import AgentSettings, dsn_server_label
from wrktalk_agent.db.queries import server as q

#: The server answered but is not (or no longer) the primary: a standby reached through a
#: host list or a pooler, or a primary demoted under an open connection. For the agent
#: this is an outage like any other (retry, reconnect), never a task failure.
NOT_PRIMARY_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.ReadOnlySQLTransactionError,  # "cannot execute UPDATE in a read-only transaction"
    asyncpg.TargetServerAttributeNotMatched,  # no host of the list is read-write (yet)
)

#: Errors that mean "the database is not there right now" (as opposed to a bug in a query).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InternalClientError,  # seen while a server shuts down mid-query
    *NOT_PRIMARY_ERRORS,
)


#: The connections a bounded call (:meth:`Repository.within`) has used, so that they can be
#: abandoned when it runs out of time (a cancel would wait for the network).
_IN_USE: contextvars.ContextVar[list[asyncpg.Connection] | None] = contextvars.ContextVar(
    "wrktalk_connections_in_use", default=None
)


def _note_in_use(conn: asyncpg.Connection) -> None:
    used = _IN_USE.get()
    if used is not None and (not used or used[-1] is not conn):
        used.append(conn)


@contextmanager
def noting_connections() -> Iterator[list[asyncpg.Connection]]:
    """The list of the connections used by the tasks started inside the block (a task
    copies the context it was started in), for :meth:`Repository.within`."""
    used: list[asyncpg.Connection] = []
    token = _IN_USE.set(used)
    try:
        yield used
    finally:
        _IN_USE.reset(token)


class ServerWatch:
    """Which PostgreSQL server the agent's connections reach. Every new connection
    reports its server (address, port, start time); when it differs from the one seen
    before — a failover, a restart, another host of the list — ``epoch`` grows and the
    listeners are called, so that a task owner re-checks its claim before its next step."""

    def __init__(self) -> None:
        self.identity: tuple[Any, ...] | None = None
        self.epoch = 0
        self.listeners: set[Callable[[], None]] = set()

    def seen(self, identity: tuple[Any, ...]) -> None:
        if self.identity is not None and identity != self.identity:
            self.epoch += 1
            for listener in list(self.listeners):
                listener()
        self.identity = identity


#: One per process: every pool of the agent reports here.
SERVER = ServerWatch()


class DatabaseUnavailable(Exception):
    """PostgreSQL could not be reached; the message names host:port, never the password."""


class ListenUnavailable(DatabaseUnavailable):
    """LISTEN cannot work with these settings (a transaction pooler and no direct DSN)."""


class AgentConnection(asyncpg.Connection):
    """Every connection of the agent: a server that turns out not to be the primary
    (``ReadOnlySQLTransactionError``) retires the connection, so that the next attempt
    reconnects through the host list and finds the new primary. Outside a transaction
    the connection is terminated at once; inside one it is marked and terminated when the
    pool takes it back (after asyncpg's rollback), see :func:`_keep_session`."""

    not_primary = False

    def _seen_not_primary(self) -> None:
        self.not_primary = True
        if not self.is_in_transaction():
            self.terminate()

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        _note_in_use(self)
        try:
            return await super().execute(query, *args, timeout=timeout)
        except asyncpg.ReadOnlySQLTransactionError:
            self._seen_not_primary()
            raise

    async def _do_execute(self, *args: Any, **kwargs: Any) -> Any:
        # the one path of fetch/fetchrow/fetchval/executemany/execute-with-arguments
        _note_in_use(self)
        try:
            return await super()._do_execute(*args, **kwargs)  # type: ignore[misc]
        except asyncpg.ReadOnlySQLTransactionError:
            self._seen_not_primary()
            raise


class PoolerConnection(AgentConnection):
    """A connection through PgBouncer in transaction pooling mode (before 1.21, PgBouncer
    knows nothing of prepared statements). With the statement cache off, asyncpg runs a
    query as the unnamed statement, parse and execute before one Sync, so PgBouncer keeps
    the server connection for it. Statements prepared explicitly (the artifact stream, in
    its transaction) are left behind on PgBouncer's server connection, where another
    process's asyncpg would later create the same name: so their names carry a token of
    this process."""

    def _get_unique_id(self, prefix: str) -> str:
        return f"__wrktalk_{_PROCESS_TOKEN}_{super()._get_unique_id(prefix).strip('_')}"


_PROCESS_TOKEN = os.urandom(6).hex()


def _read_json(text: str) -> Any:
    """A json/jsonb value as Python. A value nested deeper than Python's parser follows
    (PostgreSQL allows far more) reads as a note instead of failing the whole query."""
    try:
        return json.loads(text)
    except RecursionError:
        return {"unreadable": f"JSON nested too deep to read ({len(text)} characters)"}


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename, encoder=json.dumps, decoder=_read_json, schema="pg_catalog"
        )
    row = await conn.fetchrow(q.SERVER_IDENTITY)
    if row is not None:
        SERVER.seen(tuple(row))


def _connect_kwargs(settings: AgentSettings, *, tui: bool = False) -> dict[str, Any]:
    """What every connection of the main DSN (pool or single) is opened with."""
    kwargs: dict[str, Any] = {
        "ssl": _ssl(settings),
        "server_settings": _app_name(),
        "target_session_attrs": settings.target_session_attrs(tui=tui),
        "connection_class": AgentConnection,
    }
    if settings.db_pooler != "none":
        # PgBouncer forwards no named statement to the right server connection
        kwargs["statement_cache_size"] = 0
        kwargs["connection_class"] = PoolerConnection
    return kwargs


async def connect_once(
    settings: AgentSettings, *, timeout: float = 10.0, tui: bool = False
) -> asyncpg.Connection:
    """A single connection to the main DSN (through the pooler, if there is one). For
    LISTEN use :func:`connect_listener`."""
    with _unavailable_as_one_line(settings):
        conn = await asyncpg.connect(
            settings.dsn(), timeout=timeout, **_connect_kwargs(settings, tui=tui)
        )
    await _init_connection(conn)
    return conn


async def create_pool(
    settings: AgentSettings, *, timeout: float = 10.0, tui: bool = False
) -> asyncpg.Pool:
    """A pool on the main DSN; ``tui`` picks TUI_TARGET_SESSION_ATTRS when set."""
    with _unavailable_as_one_line(settings):
        return await asyncpg.create_pool(
            settings.dsn(),
            min_size=settings.db_pool_min_size,
            max_size=settings.db_pool_max_size,
            timeout=timeout,
            init=_init_connection,
            reset=_keep_session,
            **_connect_kwargs(settings, tui=tui),
        )


def listen_dsn(settings: AgentSettings) -> str | None:
    """The DSN LISTEN goes over: LISTEN_DATABASE_URL if set, else the main DSN unless it
    goes through a transaction pooler (where a LISTEN is lost with the server connection
    it ran on). ``None``: LISTEN cannot work, only polling (see :func:`pooler_mode`)."""
    if settings.listen_database_url is not None:
        return settings.listen_database_url.get_secret_value()
    if settings.db_pooler != "none":
        return None
    return settings.dsn()


async def connect_listener(settings: AgentSettings, *, timeout: float = 10.0) -> asyncpg.Connection:
    """A direct connection for LISTEN, always on the primary (NOTIFY is not replicated;
    a standby refuses LISTEN). Raises :class:`ListenUnavailable` when the settings give
    LISTEN no way to work, :class:`DatabaseUnavailable` when the server is down."""
    dsn = listen_dsn(settings)
    if dsn is None:
        raise ListenUnavailable(pooler_mode(settings))
    label = dsn_server_label(dsn)
    attrs = None if "target_session_attrs=" in dsn else settings.db_target_session_attrs
    with _unavailable_as_one_line(settings, label):
        conn = await asyncpg.connect(
            dsn,
            timeout=timeout,
            ssl=None if "sslmode=" in dsn else settings.db_ssl_mode,
            server_settings={"application_name": "wrktalk-agent listener"},
            target_session_attrs=attrs,
            connection_class=AgentConnection,
        )
    return conn


def pooler_hint(exc: BaseException) -> str | None:
    """The fix for an error that means "a transaction pooler sits in between and the agent
    was not told" (asyncpg's named prepared statements collide across server sessions)."""
    if isinstance(
        exc, asyncpg.DuplicatePreparedStatementError | asyncpg.InvalidSQLStatementNameError
    ):
        return (
            "prepared statements collide: a transaction pooler (PgBouncer) sits between the "
            "agent and PostgreSQL; set WRKTALK_AGENT_DB_POOLER=pgbouncer"
        )
    return None


def pooler_mode(settings: AgentSettings) -> str:
    """One line for ``check`` and the logs: how the agent talks to PostgreSQL."""
    attrs = settings.target_session_attrs() or "as the DSN says"
    hosts = settings.server_label()
    if settings.db_pooler == "none":
        return f"direct connections to {hosts} (target_session_attrs {attrs}); LISTEN on the same"
    mode = (
        f"through PgBouncer at {hosts} (transaction pooling: statement cache off, "
        "statements in their own transactions)"
    )
    if settings.listen_database_url is None:
        return (
            f"{mode}; LISTEN cannot work through the pooler and "
            "WRKTALK_AGENT_LISTEN_DATABASE_URL is unset: polling only, every "
            f"{settings.poll_interval:g}s"
        )
    listen = dsn_server_label(settings.listen_database_url.get_secret_value())
    return f"{mode}; LISTEN over a direct connection to {listen}"


@contextmanager
def _unavailable_as_one_line(settings: AgentSettings, label: str | None = None) -> Iterator[None]:
    """Connection failures become :class:`DatabaseUnavailable` naming host:port only."""
    server = label or settings.server_label()
    try:
        yield
    except asyncpg.InvalidPasswordError as exc:
        raise DatabaseUnavailable(
            f"PostgreSQL at {server} refused the credentials: {exc}"
        ) from None
    except asyncpg.InvalidCatalogNameError as exc:
        raise DatabaseUnavailable(f"PostgreSQL at {server}: {exc}") from None
    except asyncpg.TargetServerAttributeNotMatched:
        attrs = settings.target_session_attrs() or "the DSN's target_session_attrs"
        raise DatabaseUnavailable(
            f"no server at {server} is {attrs} (all standbys? a failover under way?)"
        ) from None
    except CONNECTION_ERRORS as exc:
        raise DatabaseUnavailable(f"cannot reach PostgreSQL at {server}: {_reason(exc)}") from None


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool connections carry no session state (no LISTEN, session locks or SET), so the
    default reset query after every use would be a wasted statement on each poll; an open
    transaction is still rolled back by asyncpg itself. A connection that met a read-only
    server is dropped here: the pool opens a new one through the host list."""
    if getattr(conn, "not_primary", False):
        conn.terminate()


def _ssl(settings: AgentSettings) -> str | None:
    if settings.database_url is not None and "sslmode=" in settings.dsn():
        return None  # the DSN says it itself
    return settings.db_ssl_mode


def _app_name() -> dict[str, str]:
    return {"application_name": "wrktalk-agent"}


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def keepalive(conn: asyncpg.Connection, timeout: float) -> None:
    """Ask a listening connection's server for an answer: a half-open TCP connection
    sends no FIN, so silence is the only sign it is gone."""
    await conn.execute(q.PING, timeout=timeout)
