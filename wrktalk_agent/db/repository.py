"""The agent's door to PostgreSQL: a pool and one method per question or change.

SQL lives in :mod:`wrktalk_agent.db.queries` (and the schema in :mod:`~wrktalk_agent.db.schema`);
no module outside :mod:`wrktalk_agent.db` issues a statement (a test enforces it). Two
callers need more than one call: the artifact download reads slices from one snapshot
(:meth:`Repository.artifact_chunks`), and maintenance's decisions call a handler while
holding the maintenance lock (:meth:`Repository.locked_maintenance`)."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import os
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Concatenate, Literal, ParamSpec, Protocol, TypeVar
from uuid import UUID

import asyncpg
import structlog
from pydantic import ValidationError

from wrktalk_agent import __version__
from wrktalk_agent.config import AgentSettings, dsn_server_label
from wrktalk_agent.db import queries as q
from wrktalk_agent.db.models import (
    AgentInstance,
    ArtifactInfo,
    MaintenanceHold,
    MaintenanceState,
    PollResult,
    Task,
    TaskEvent,
    tolerant_rows,
)
from wrktalk_agent.db.schema import (
    check_schema,
    init_schema,
    missing_constraints,
    release_type_constraints,
    stale_constraints,
)
from wrktalk_agent.interfaces import Recipient, SmtpConfig
from wrktalk_agent.safe_text import storable, storable_value

_log = structlog.get_logger("wrktalk_agent")

EventStatus = Literal["started", "succeeded", "failed", "skipped", "info"]


class PendingEventLike(Protocol):
    @property
    def at(self) -> datetime: ...
    @property
    def step(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def message(self) -> str: ...


def _event_columns(events: Sequence[PendingEventLike]) -> tuple[list[Any], ...]:
    return (
        [e.at for e in events],
        [storable(e.step, limit=200) for e in events],
        [e.status for e in events],
        [storable(e.message) for e in events],
    )


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


_ADDRESS = re.compile(r"[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+")


def address_problem(email: object) -> str | None:
    """What makes an admin's email column unusable as an address (None: usable). Control
    characters and line ends could forge mail headers."""
    if not isinstance(email, str) or not email.strip():
        return "email is empty"
    if len(email) > 254 or not _ADDRESS.fullmatch(email):
        return f"email {storable(email, limit=80)!r} is not an address"
    return None


class DatabaseTimeout(TimeoutError):
    """A database call did not answer within its bound; its connection was abandoned."""


#: The connections a bounded call (:meth:`Repository.within`) has used, so that they can be
#: abandoned when it runs out of time (a cancel would wait for the network).
_IN_USE: contextvars.ContextVar[list[asyncpg.Connection] | None] = contextvars.ContextVar(
    "wrktalk_connections_in_use", default=None
)


def _note_in_use(conn: asyncpg.Connection) -> None:
    used = _IN_USE.get()
    if used is not None and (not used or used[-1] is not conn):
        used.append(conn)


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


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _bounded(
    method: Callable[Concatenate[Repository, _P], Coroutine[Any, Any, _T]],
) -> Callable[Concatenate[Repository, _P], Coroutine[Any, Any, _T]]:
    """Run a repository method within ``DB_TIMEOUT`` (see :meth:`Repository.within`)."""

    @functools.wraps(method)
    async def wrapper(self: Repository, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return await self.within(self.call_timeout, lambda: method(self, *args, **kwargs))

    return wrapper


class Repository:
    """All reads and writes of the agent, over an asyncpg pool. Every call the agent's
    loop makes is bounded (:meth:`within`): a server that stops answering costs at most
    ``DB_TIMEOUT``, never the time a dead TCP link takes to be noticed."""

    def __init__(self, pool: asyncpg.Pool, settings: AgentSettings) -> None:
        self.pool = pool
        self.settings = settings
        self.closed = False
        self.call_timeout = settings.db_timeout
        self.server = SERVER

    async def within(self, timeout: float, call: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``call()`` for at most ``timeout`` seconds. When time is up its
        connections are terminated (closed locally, no round trip) rather than cancelled
        — asyncpg's cancel asks the server and waits for the network, which is what a
        link that drops packets never gives — and :class:`DatabaseTimeout` is raised."""
        used: list[asyncpg.Connection] = []
        token = _IN_USE.set(used)
        try:
            job = asyncio.ensure_future(call())
        finally:
            _IN_USE.reset(token)
        try:
            done, _ = await asyncio.wait({job}, timeout=max(0.0, timeout))
        except asyncio.CancelledError:
            job.cancel()
            for conn in used:
                conn.terminate()
            raise
        if job in done:
            return job.result()
        for conn in used:
            conn.terminate()
        job.cancel()
        # closed locally, the call ends at once; a connect still under way is cancelled
        await asyncio.wait({job}, timeout=1.0)
        if job.done() and not job.cancelled():
            job.exception()  # retrieved: it is the consequence of our terminate
        raise DatabaseTimeout(f"no answer from PostgreSQL within {timeout:g}s")

    @classmethod
    async def connect(
        cls, settings: AgentSettings, *, timeout: float = 10.0, tui: bool = False
    ) -> Repository:
        """A pool on the main DSN; ``tui`` picks TUI_TARGET_SESSION_ATTRS when set."""
        with _unavailable_as_one_line(settings):
            pool = await asyncpg.create_pool(
                settings.dsn(),
                min_size=settings.db_pool_min_size,
                max_size=settings.db_pool_max_size,
                timeout=timeout,
                init=_init_connection,
                reset=_keep_session,
                **_connect_kwargs(settings, tui=tui),
            )
        return cls(pool, settings)

    async def close(self) -> None:
        self.closed = True
        await self.pool.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as conn:
            yield conn

    # -- schema ----------------------------------------------------------------------
    async def check_schema(self) -> list[str]:
        async with self.pool.acquire() as conn:
            return await check_schema(conn)

    async def ping(self, timeout: float) -> None:
        """Raise unless the database answers within ``timeout`` seconds (readiness)."""
        async with self.pool.acquire(timeout=timeout) as conn:
            await asyncio.wait_for(conn.fetchval(q.PING), timeout)

    async def metrics_snapshot(self) -> dict[str, Any]:
        """Pending tasks and the live release (version, chart type), one cheap statement."""
        row = await self.pool.fetchrow(q.METRICS_REFRESH)
        return dict(row) if row is not None else {}

    async def table_privileges(
        self, wanted: Sequence[tuple[str, str]]
    ) -> tuple[list[bool | None], dict[str, Any]]:
        """Whether the role has each (table, privilege), ``None`` for a missing table; and
        the other privileges the agent uses (schema, sequence, advisory locks, role)."""
        rows = await self.pool.fetch(
            q.TABLE_PRIVILEGES, [table for table, _ in wanted], [priv for _, priv in wanted]
        )
        other = await self.pool.fetchrow(q.OTHER_PRIVILEGES)
        assert other is not None
        return [r["granted"] for r in rows], dict(other)

    async def artifact_chunks(
        self, artifact_id: UUID, size: int, chunk_bytes: int
    ) -> AsyncIterator[bytes]:
        """A release's bytes in slices of ``chunk_bytes``, all read from one snapshot (a
        row replaced meanwhile cannot be mixed in); one round trip when it fits in one.
        Close the iterator (``contextlib.aclosing``) when stopping early."""
        async with self.pool.acquire() as conn:
            if size <= chunk_bytes:  # no transaction needed
                data = await conn.fetchval(q.ARTIFACT_WHOLE, artifact_id)
                if data:
                    yield data
                return
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                statement = await conn.prepare(q.ARTIFACT_SLICE)
                for offset in range(1, size + 1, chunk_bytes):
                    chunk = await statement.fetchval(artifact_id, offset, chunk_bytes)
                    if not chunk:
                        return
                    yield chunk

    async def init_schema(self) -> list[str]:
        async with self.pool.acquire() as conn:
            return await init_schema(conn)

    async def schema_problems(self) -> list[str]:
        """What `db init` would add or drop: :meth:`check_schema`, the CHECK constraints
        the agent relies on, and stale ones of an earlier `db init`."""
        async with self.pool.acquire() as conn:
            return (
                await check_schema(conn)
                + await missing_constraints(conn)
                + await stale_constraints(conn)
            )

    async def release_type_constraints(self) -> list[tuple[str, str]]:
        """(name, expression) of a backend's own CHECK constraints on release types."""
        async with self.pool.acquire() as conn:
            return await release_type_constraints(conn)

    # -- the agent loop --------------------------------------------------------------
    @_bounded
    async def poll(
        self,
        agent_id: str,
        lease_seconds: float,
        *,
        claim_token: UUID,
        instance_id: UUID,
        notifiers: Sequence[str] = (),
        installation: str = "",
        release_types: Sequence[str] | None = None,
        seen_every: float = 0.0,
    ) -> PollResult:
        """Claim the oldest task that can run (one statement, :data:`queries.POLL`, that
        writes nothing when there is nothing to claim); reject the rows at the head of the
        queue that no agent can run and take over a task whose lease ran out, each with a
        statement of its own, only when the poll saw one. ``release_types``: the types the
        installed deployers declare; a pending task whose release has another type is
        rejected (``None``: any type but a blank one). ``seen_every``: renew this process's
        last_seen when it is older than that, even when nothing else changes."""
        types = None if release_types is None else list(release_types)
        row = await self.pool.fetchrow(
            q.POLL,
            agent_id,
            socket.gethostname(),
            os.getpid(),
            __version__,
            lease_seconds,
            claim_token,
            instance_id,
            seen_every,
            types,
        )
        assert row is not None
        rejected: list[tuple[UUID, str]] = []
        if row["bad_waiting"]:
            swept = await self.pool.fetchval(
                q.SWEEP_BAD, agent_id, list(notifiers), installation, types
            )
            rejected = [(UUID(r["id"]), r["error"]) for r in swept]
        claimed = await self._claimed_task(
            row["claimed"], claim_token, agent_id, notifiers, installation, rejected
        )
        taken_over = None
        if row["lease_expired"] and claimed is None:
            data = await self.pool.fetchval(
                q.TAKE_OVER,
                agent_id,
                socket.gethostname(),
                os.getpid(),
                __version__,
                lease_seconds,
                claim_token,
                instance_id,
            )
            with tolerant_rows():  # recovery handles a running row of any type
                taken_over = await self._claimed_task(
                    data, claim_token, agent_id, notifiers, installation, rejected
                )
        return PollResult(
            claimed=claimed,
            taken_over=taken_over,
            rejected=rejected,
            next_due_in=row["next_due_in"],
            lease_ends_in=row["lease_ends_in"],
        )

    async def _claimed_task(
        self,
        data: dict[str, Any] | None,
        claim_token: UUID,
        agent_id: str,
        notifiers: Sequence[str],
        installation: str,
        rejected: list[tuple[UUID, str]],
    ) -> Task | None:
        """A row the poll claimed (or took over), parsed; one the agent cannot read is
        failed at once under the same claim, its reason added to ``rejected``."""
        if not data:
            return None
        try:
            return Task.model_validate(data)
        except ValidationError as exc:
            reason = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])} {storable(repr(e.get('input')), limit=80)}"
                f": {e['msg']}"
                for e in exc.errors()
            )
        task_id = UUID(str(data.get("id")))
        failed = await self.pool.fetchrow(
            q.QUARANTINE, task_id, claim_token, agent_id, storable(reason, limit=2000),
            list(notifiers), installation,
        )  # fmt: skip
        if failed is not None:
            rejected.append((task_id, failed["error_message"]))
        return None

    @_bounded
    async def failover_check(self, quiet_seconds: float) -> float:
        """Record the primary's WAL timeline; when it is new (a standby was promoted),
        no task is claimed or taken over for ``quiet_seconds``. Returns the seconds left
        of a quiet period (0: none)."""
        return float(await self.pool.fetchval(q.FAILOVER_CHECK, quiet_seconds) or 0.0)

    async def heartbeat(
        self,
        task_id: UUID,
        claim_token: UUID,
        agent_id: str,
        instance_id: UUID,
        *,
        timeout: float | None = None,
    ) -> bool:
        """Renew the lease, within ``timeout`` (default DB_TIMEOUT). True while this claim
        still owns the task."""
        owned = await self.within(
            self.call_timeout if timeout is None else timeout,
            lambda: self.pool.fetchval(q.HEARTBEAT, task_id, claim_token, agent_id, instance_id),
        )
        return owned is not None

    @_bounded
    async def task_status(self, task_id: UUID) -> str | None:
        return await self.pool.fetchval(q.TASK_STATUS, task_id)

    @_bounded
    async def claim_lost_in_failover(
        self,
        task_id: UUID,
        agent_id: str,
        lease_seconds: float,
        *,
        claim_token: UUID,
    ) -> Task | None:
        """Our claim of ``task_id`` is gone (a failover to a standby that had not received
        it) and the task is pending again: take it for recovery, so that what our deploy
        may have changed is found out rather than re-run blindly. None: someone else has
        it, or the slot is taken."""
        try:
            row = await self.pool.fetchrow(
                q.RECLAIM_FOR_RECOVERY, task_id, agent_id, claim_token, lease_seconds
            )
        except asyncpg.UniqueViolationError:
            return None
        return Task.model_validate(dict(row)) if row else None

    @_bounded
    async def finish_task(
        self,
        task_id: UUID,
        claim_token: UUID,
        *,
        status: Literal["completed", "failed"],
        result: dict[str, Any],
        error: str | None,
        flags: FlagChange | None = None,
        events: Sequence[PendingEventLike] | None = None,
        agent_id: str | None = None,
        notifications: tuple[Sequence[str], dict[str, Any]] | None = None,
    ) -> Task | None:
        """Write the outcome in one transaction, only if this claim still owns the task:
        status, result, release flags, timeline entries not written yet, and the
        notifications promised (notifier names, event JSON) into the outbox. ``None``: the
        task was taken away and nothing was written."""
        # the door every outcome goes through: nothing in it can be refused for its text
        result = storable_value(result)
        error = storable(error) if error is not None else None
        if notifications is not None:
            notifications = (notifications[0], storable_value(notifications[1]))
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(q.FINISH_TASK, task_id, claim_token, status, result, error)
            if row is None:
                return None
            if flags is not None:
                await apply_flags(conn, flags)
            if events:
                # the UPDATE above settled ownership in this transaction
                await conn.execute(
                    q.INSERT_EVENTS_UNFENCED, task_id, *_event_columns(events), agent_id
                )
            if notifications is not None and notifications[0]:
                names, event = notifications
                await conn.execute(q.INSERT_NOTIFICATIONS, task_id, list(names), event)
            with tolerant_rows():
                return Task.model_validate(dict(row))

    # -- the agent's process -------------------------------------------------------------
    @_bounded
    async def instance(self, agent_id: str) -> asyncpg.Record | None:
        """The process last seen with ``agent_id``: instance_id, hostname, pid, age, ..."""
        return await self.pool.fetchrow(q.INSTANCE, agent_id)

    @_bounded
    async def instance_stopped(self, agent_id: str, instance_id: UUID) -> None:
        await self.pool.execute(q.INSTANCE_STOPPED, agent_id, instance_id)

    @_bounded
    async def task_leases(
        self, task_ids: Sequence[UUID], default_lease: float
    ) -> dict[UUID, tuple[bool, str | None]]:
        """For each task found: whether it is inProgress under a live lease, and the agent
        id that holds (or last held) it."""
        rows = await self.pool.fetch(q.TASK_LEASES, list(task_ids), default_lease)
        return {r["id"]: (bool(r["leased"]), r["claimed_by"]) for r in rows}

    # -- the notification outbox ---------------------------------------------------------
    @_bounded
    async def claim_notifications(
        self, agent_id: str, lease_seconds: float, notifiers: Sequence[str], limit: int = 20
    ) -> list[asyncpg.Record]:
        """Due notifications, each leased to this agent for ``lease_seconds`` under a new
        ``lease_token`` (which every later write presents); ``age`` in seconds."""
        return list(
            await self.pool.fetch(
                q.CLAIM_NOTIFICATIONS, agent_id, lease_seconds, list(notifiers), limit
            )
        )

    @_bounded
    async def renew_notification(
        self, notification_id: UUID, lease_token: UUID, lease_seconds: float
    ) -> bool:
        """Extend the lease; False when it was taken away (or the row is no longer pending)."""
        row = await self.pool.fetchval(
            q.RENEW_NOTIFICATION, notification_id, lease_token, lease_seconds
        )
        return row is not None

    @_bounded
    async def notification_recipients(
        self, notification_id: UUID, lease_token: UUID
    ) -> list[asyncpg.Record]:
        """Each recipient's state, after sends left unanswered by an earlier holder are
        counted as unknown outcomes."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(q.SETTLE_UNANSWERED, notification_id, lease_token)
            return list(await conn.fetch(q.NOTIFICATION_RECIPIENTS, notification_id))

    @_bounded
    async def begin_send(
        self, notification_id: UUID, recipient: str, lease_token: UUID, lease_seconds: float
    ) -> int | None:
        """Record that a message to ``recipient`` is about to go out; the send's number
        (1, or 2 for the one repeat), or ``None``: do not send."""
        sends = await self.pool.fetchval(
            q.BEGIN_SEND, notification_id, recipient, lease_token, lease_seconds
        )
        return int(sends) if sends is not None else None

    @_bounded
    async def report_delivery(
        self,
        notification_id: UUID,
        lease_token: UUID,
        *,
        recipient: str,
        outcome: str,
        detail: str,
        attempts: int,
    ) -> str | None:
        """Record one recipient's outcome; its new state, or ``None`` when nothing changed
        (the lease is gone, or the recipient was settled already)."""
        state = await self.pool.fetchval(
            q.REPORT_DELIVERY, notification_id, recipient, lease_token, outcome, detail, attempts
        )
        return str(state) if state is not None else None

    @_bounded
    async def settle_attempt(
        self,
        notification_id: UUID,
        lease_token: UUID,
        *,
        dropped: Sequence[str] = (),
        give_up: bool = False,
    ) -> list[asyncpg.Record] | None:
        """End an attempt: unanswered sends become unknown outcomes, ``dropped``
        recipients (no longer named by the notifier) are set aside, and with ``give_up``
        whoever still waits for a retry is failed. The recipients' states, or ``None``
        when the lease was taken away (nothing was changed)."""
        async with self.pool.acquire() as conn, conn.transaction():
            if (
                await conn.fetchval(q.LOCK_LEASED_NOTIFICATION, notification_id, lease_token)
                is None
            ):
                return None
            await conn.execute(q.SETTLE_UNANSWERED, notification_id, lease_token)
            if dropped:
                await conn.execute(q.DROP_RECIPIENTS, notification_id, list(dropped))
            if give_up:
                await conn.execute(q.GIVE_UP_RECIPIENTS, notification_id)
            return list(await conn.fetch(q.NOTIFICATION_RECIPIENTS, notification_id))

    @_bounded
    async def finish_notification(
        self,
        notification_id: UUID,
        lease_token: UUID,
        *,
        status: Literal["pending", "delivered", "failed"],
        deliveries: list[dict[str, Any]],
        retry_in: float = 0.0,
        timeline: tuple[EventStatus, str, str] | None = None,
    ) -> None:
        """Release the lease with the notification's status (``pending``: try again in
        ``retry_in`` seconds); the deliveries also go into the task's result, and
        ``timeline`` (status, message, agent id) into its timeline, in the same statement."""
        status_, message, agent_id = timeline or (None, None, None)
        await self.pool.execute(
            q.FINISH_NOTIFICATION, notification_id, lease_token, status, deliveries, retry_in,
            status_, message, agent_id,
        )  # fmt: skip

    @_bounded
    async def pending_notifications(self) -> int:
        return int(await self.pool.fetchval(q.PENDING_NOTIFICATIONS))

    @_bounded
    async def add_events(
        self,
        task_id: UUID,
        events: Sequence[PendingEventLike],
        agent_id: str | None,
        claim_token: UUID | None = None,
    ) -> bool:
        """Several timeline entries, each with its own time, in one statement. With
        ``claim_token`` (a task owner's entries) only while that claim owns the task: a
        stale owner writes nothing. False: nothing was written for that reason."""
        if claim_token is None:
            await self.pool.execute(
                q.INSERT_EVENTS_UNFENCED, task_id, *_event_columns(events), agent_id
            )
            return True
        written = await self.pool.fetchval(
            q.INSERT_EVENTS, task_id, *_event_columns(events), agent_id, claim_token
        )
        return bool(written)

    async def add_event(
        self,
        task_id: UUID,
        step: str,
        status: EventStatus,
        message: str = "",
        agent_id: str | None = None,
    ) -> None:
        await self.pool.execute(
            q.INSERT_EVENT, task_id, storable(step, limit=200), status, storable(message), agent_id
        )

    # -- tasks -----------------------------------------------------------------------
    async def create_task(
        self,
        task_type: Literal["deploy", "rollback"],
        release_id: UUID | None,
        execute_after: datetime | None = None,
    ) -> Task:
        row = await self.pool.fetchrow(q.INSERT_TASK, task_type, release_id, execute_after)
        assert row is not None
        return Task.model_validate(dict(row))

    async def get_task(self, task_id: UUID) -> Task | None:
        row = await self.pool.fetchrow(q.GET_TASK, task_id)
        return Task.model_validate(dict(row)) if row else None

    async def list_tasks(
        self, *, status: str | None = None, task_type: str | None = None, limit: int = 50
    ) -> list[Task]:
        rows = await self.pool.fetch(q.LIST_TASKS, status, task_type, limit)
        return [Task.model_validate(dict(r)) for r in rows]

    async def cancel_task(self, task_id: UUID, *, by: str, via: str) -> Task | None:
        """Cancel a pending task (``None``: it was not pending): stored as failed with
        the error "cancelled by BY (VIA)" and the result ``{"cancelled": true, "by": BY}``,
        whoever cancels it (the CLI, the dashboard)."""
        row = await self.pool.fetchrow(
            q.CANCEL_TASK, task_id, f"cancelled by {by} ({via})", {"cancelled": True, "by": by}
        )
        return Task.model_validate(dict(row)) if row else None

    async def task_ids_with_prefix(self, low: UUID, high: UUID, limit: int) -> list[UUID]:
        """Task ids between ``low`` and ``high`` (a typed prefix), at most ``limit``."""
        rows = await self.pool.fetch(q.TASK_IDS_BETWEEN, low, high, limit)
        return [UUID(str(r["id"])) for r in rows]

    async def pending_rollback(self) -> UUID | None:
        """The oldest pending rollback task, if any."""
        found = await self.pool.fetchval(q.PENDING_ROLLBACK)
        return None if found is None else UUID(str(found))

    async def task_events(self, task_id: UUID) -> list[TaskEvent]:
        rows = await self.pool.fetch(q.TASK_EVENTS, task_id)
        return [TaskEvent.model_validate(dict(r)) for r in rows]

    # -- releases --------------------------------------------------------------------
    async def add_release(
        self,
        *,
        version: str,
        chart_type: str,
        data: bytes,
        sha256: str,
        env_data: str | None = None,
        values_data: str | None = None,
        signature: str | None = None,
    ) -> ArtifactInfo:
        row = await self.pool.fetchrow(
            q.INSERT_RELEASE, version, chart_type, data, env_data, values_data, sha256, signature
        )
        assert row is not None
        return ArtifactInfo.model_validate(dict(row))

    @_bounded
    async def release_by_id(self, release_id: UUID) -> ArtifactInfo | None:
        return self._artifact(await self.pool.fetchrow(q.RELEASE_BY_ID, release_id))

    @_bounded
    async def release_by_version(self, version: str) -> ArtifactInfo | None:
        return self._artifact(await self.pool.fetchrow(q.RELEASE_BY_VERSION, version))

    @_bounded
    async def current_release(self) -> ArtifactInfo | None:
        return self._artifact(await self.pool.fetchrow(q.CURRENT_RELEASE))

    @_bounded
    async def previous_release(self) -> ArtifactInfo | None:
        return self._artifact(await self.pool.fetchrow(q.PREVIOUS_RELEASE))

    async def list_releases(self, limit: int = 100) -> list[ArtifactInfo]:
        rows = await self.pool.fetch(q.LIST_RELEASES, limit)
        return [ArtifactInfo.model_validate(dict(r)) for r in rows]

    async def release_secrets(self, release_id: UUID) -> tuple[str | None, str | None]:
        row = await self.pool.fetchrow(q.RELEASE_SECRETS, release_id)
        return (row["env_data"], row["values_data"]) if row else (None, None)

    async def set_release_signature(
        self, release_id: UUID, signature: str, previous: str | None
    ) -> bool:
        """Store a release's signature unless it changed since ``previous`` was read."""
        return (
            await self.pool.fetchval(q.SET_RELEASE_SIGNATURE, release_id, signature, previous)
            is not None
        )

    @staticmethod
    def _artifact(row: asyncpg.Record | None) -> ArtifactInfo | None:
        return ArtifactInfo.model_validate(dict(row)) if row else None

    # -- deployment_config / admins ----------------------------------------------------
    @asynccontextmanager
    async def locked_maintenance(
        self, *, wait: bool = True
    ) -> AsyncIterator[MaintenanceRecord | None]:
        """The maintenance record in one transaction holding the maintenance lock (an
        advisory lock polls never take: a slow proxy called meanwhile delays no claim).
        ``None`` when ``wait`` is off and another agent holds the lock."""
        async with self.pool.acquire() as conn, conn.transaction():
            if wait:
                await conn.execute(q.MAINTENANCE_LOCK, q.MAINTENANCE_LOCK_KEY)
            elif not await conn.fetchval(q.MAINTENANCE_TRY_LOCK, q.MAINTENANCE_LOCK_KEY):
                yield None
                return
            yield MaintenanceRecord(conn)

    @_bounded
    async def maintenance_state(self) -> MaintenanceState:
        row = await self.pool.fetchrow(q.MAINTENANCE_STATE)
        assert row is not None
        return MaintenanceState.model_validate(dict(row))

    async def maintenance_flag(self) -> bool:
        return (await self.maintenance_state()).enabled

    @_bounded
    async def hold_maintenance(self, holder: str, reason: str | None = None) -> None:
        """Record a hold and the flag, without switching anything (tests, the demo)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(q.MAINTENANCE_LOCK, q.MAINTENANCE_LOCK_KEY)
            await conn.fetchrow(q.OPERATOR_HOLD, holder, reason)
            await conn.execute(q.RECORD_MAINTENANCE_ON)

    @_bounded
    async def smtp_config(self) -> SmtpConfig:
        row = await self.pool.fetchrow(q.SMTP_CONFIG)
        if row is None:
            return SmtpConfig()
        return SmtpConfig(
            host=row["smtp_host"],
            port=row["smtp_port"],
            user=row["smtp_user"],
            password=row["smtp_password"],
            sender=row["smtp_from"],
        )

    async def add_admin(self, name: str, email: str, *, active: bool = True) -> None:
        """What the backend does when an admin is created (the demo plays the backend)."""
        await self.pool.execute(q.INSERT_ADMIN, name, email, active)

    async def set_smtp(self, *, host: str, port: int, sender: str) -> None:
        """The SMTP columns of deployment_config, as the backend sets them."""
        await self.pool.execute(q.SET_SMTP, host, port, sender)

    @_bounded
    async def active_admins(self) -> list[Recipient]:
        """Active admins with an address mail can go to; a row without one is left out
        and named in the log (one bad row never stops the mail to the others)."""
        recipients = []
        for r in await self.pool.fetch(q.ACTIVE_ADMINS):
            problem = address_problem(r["email"])
            if problem is not None:
                _log.warning("admin.unusable", admin_id=str(r["id"]), problem=problem)
                continue
            recipients.append(
                Recipient(name=" ".join(str(r["name"] or "").split()), email=r["email"])
            )
        return recipients

    # -- dashboard (wrktalk-agent tui) -------------------------------------------------
    async def dashboard_overview(self) -> dict[str, Any]:
        """Server time, maintenance flag, current/previous release, number of pending tasks."""
        row = await self.pool.fetchrow(q.DASHBOARD_OVERVIEW)
        assert row is not None
        return dict(row)

    async def dashboard_tasks(
        self, *, status: str | None = None, task_type: str | None = None, limit: int = 100
    ) -> list[Task]:
        """Newest tasks first, without ``result``; ``error_message`` cut to 300 characters."""
        if status is None:
            rows = await self.pool.fetch(q.DASHBOARD_TASKS, task_type, limit)
        else:
            sql = q.DASHBOARD_TASKS_BY_STATUS[status]  # KeyError: not a task status
            rows = await self.pool.fetch(sql, task_type, limit)
        return [Task.model_validate(dict(r)) for r in rows]

    async def dashboard_running(self) -> list[tuple[Task, TaskEvent | None]]:
        """Tasks in progress with their latest event (the step they are in), if any."""
        running: list[tuple[Task, TaskEvent | None]] = []
        for row in await self.pool.fetch(q.DASHBOARD_RUNNING):
            event = None
            if row["event_id"] is not None:
                event = TaskEvent(
                    id=row["event_id"],
                    task_id=row["id"],
                    created_at=row["event_at"],
                    step=row["event_step"],
                    status=row["event_status"],
                    message=row["event_message"],
                    agent_id=row["event_agent"],
                )
            running.append((Task.model_validate(dict(row)), event))
        return running

    async def dashboard_agents(self, seen_since: datetime) -> list[AgentInstance]:
        """Agents that polled after ``seen_since`` or are running a task."""
        rows = await self.pool.fetch(q.DASHBOARD_AGENTS, seen_since)
        return [AgentInstance.model_validate(dict(r)) for r in rows]

    async def dashboard_releases(self, limit: int = 200) -> list[ArtifactInfo]:
        """The ``limit`` newest releases plus the current and previous ones, newest first."""
        rows = await self.pool.fetch(q.DASHBOARD_RELEASES, limit)
        return [ArtifactInfo.model_validate(dict(r)) for r in rows]

    async def dashboard_state(self) -> dict[str, Any]:
        """Tasks due now, the maintenance record, and what the latest finished task found
        live after a recovery (``last_live``/``last_next_step``, None otherwise)."""
        row = await self.pool.fetchrow(q.DASHBOARD_STATE)
        assert row is not None
        state = dict(row)
        live = state["last_live"]
        state["last_live"] = json.loads(live) if isinstance(live, str) else live
        return state

    async def dashboard_agent_states(self, seen_since: datetime) -> list[dict[str, Any]]:
        """Agents seen after ``seen_since`` (or running a task), with ``last_seen`` and
        ``stopped_at``."""
        return [dict(r) for r in await self.pool.fetch(q.DASHBOARD_AGENT_STATES, seen_since)]

    async def dashboard_output(
        self, task_id: UUID, mark: str, limit: int = 200
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` output lines of a task (messages starting with ``mark``),
        oldest first."""
        rows = await self.pool.fetch(q.DASHBOARD_OUTPUT, task_id, mark, limit)
        return [dict(r) for r in reversed(rows)]


@dataclass(frozen=True)
class FlagChange:
    """How the outcome moves the release flags: ``promote`` makes a release current (the
    old current becomes previous); ``demote_current`` (nothing of the current release
    runs any more) makes the current release previous and leaves none current."""

    promote: UUID | None = None
    demote_current: bool = False


async def apply_flags(conn: asyncpg.Connection, change: FlagChange) -> None:
    if change.promote is not None:
        await promote_release(conn, change.promote)
    elif change.demote_current:
        await conn.execute(q.CLEAR_PREVIOUS_IF_CURRENT)
        await conn.execute(q.CURRENT_TO_PREVIOUS)


async def promote_release(conn: asyncpg.Connection, release_id: UUID) -> None:
    """Make ``release_id`` current; the old current becomes previous (redeploying the
    current release only refreshes applied_at). Call in a transaction."""
    await conn.execute(q.CLEAR_PREVIOUS, release_id)
    await conn.execute(q.DEMOTE_CURRENT, release_id)
    await conn.execute(q.PROMOTE, release_id)


class MaintenanceRecord:
    """Maintenance as recorded (the flag, the holds, a failing switch-off) while
    :meth:`Repository.locked_maintenance` holds the maintenance lock: one method per
    statement, the decisions and the proxy calls stay with :mod:`wrktalk_agent.maintenance`."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def state(self) -> MaintenanceState:
        row = await self._conn.fetchrow(q.MAINTENANCE_STATE)
        return MaintenanceState.model_validate(dict(row)) if row else MaintenanceState()

    async def hold_for_task(self, task_id: UUID, claim_token: UUID, reason: str) -> bool:
        """The task's hold, only while its claim owns the task (False: it does not)."""
        return await self._conn.fetchval(q.TASK_HOLD, task_id, claim_token, reason) is not None

    async def hold_for_operator(self, holder: str, reason: str) -> bool:
        """An operator's window (a second one updates the reason); True when new."""
        row = await self._conn.fetchrow(q.OPERATOR_HOLD, holder, reason)
        assert row is not None
        return bool(row["created"])

    async def release_task_hold(self, task_id: UUID, claim_token: UUID) -> list[MaintenanceHold]:
        """The task's hold goes, fenced by its claim; returns what went."""
        return _holds(await self._conn.fetch(q.RELEASE_TASK_HOLD, task_id, claim_token))

    async def release_hold(self, holder: str) -> list[MaintenanceHold]:
        return _holds(await self._conn.fetch(q.RELEASE_HOLD, holder))

    async def release_all_holds(self) -> list[MaintenanceHold]:
        return _holds(await self._conn.fetch(q.RELEASE_ALL_HOLDS))

    async def release_ended_task_holds(self) -> list[MaintenanceHold]:
        """Holds of tasks that have ended or vanished (this statement proves it)."""
        return _holds(await self._conn.fetch(q.RELEASE_ENDED_TASK_HOLDS))

    async def record_on(self) -> None:
        """The flag on, and the summary of the holds beside it."""
        await self._conn.execute(q.RECORD_MAINTENANCE_ON)

    async def record_holds(self) -> None:
        await self._conn.execute(q.RECORD_HOLDS)

    async def record_off(self) -> None:
        """The proxy is off: recorded only while no hold has appeared meanwhile."""
        await self._conn.execute(q.RECORD_MAINTENANCE_OFF)

    async def record_off_pending(self, error: str) -> None:
        """The last hold went but the switch-off failed: still on, to be retried."""
        await self._conn.execute(q.RECORD_OFF_PENDING, error)

    async def note_in_timelines(self, task_ids: Sequence[UUID], message: str) -> None:
        """A line in the timelines of the tasks whose holds an operator ended."""
        await self._conn.execute(q.MAINTENANCE_NOTE, list(task_ids), message)


def _holds(rows: Sequence[asyncpg.Record]) -> list[MaintenanceHold]:
    return [MaintenanceHold.model_validate(dict(r)) for r in rows]


async def keepalive(conn: asyncpg.Connection, timeout: float) -> None:
    """Ask a listening connection's server for an answer: a half-open TCP connection
    sends no FIN, so silence is the only sign it is gone."""
    await conn.execute(q.PING, timeout=timeout)
