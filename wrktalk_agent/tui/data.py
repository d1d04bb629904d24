"""What the dashboard reads and writes, through the Repository; no Textual in here.

The widgets never see SQL or a connection: the app's workers call :class:`DashboardSource`
and turn its answers (or its :class:`SourceUnavailable`) into messages.
"""

from __future__ import annotations

import asyncio
import getpass
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg

from wrktalk_agent.config import AgentSettings
from wrktalk_agent.db.models import Task, tolerant_rows
from wrktalk_agent.db.repository import (
    CONNECTION_ERRORS,
    DatabaseUnavailable,
    Repository,
    connect_listener,
    keepalive,
)
from wrktalk_agent.db.schema import NOTIFY_CHANNEL

# the values a refresh returns, importable from here as before
from wrktalk_agent.tui.snapshot import (
    AgentState,
    Clock,
    Filters,
    InstallationState,
    LiveWarning,
    OutputLine,
    Running,
    Snapshot,
    TaskDetail,
    TaskTypeFilter,
    fmt_is_stale,
)

__all__ = [
    "AGENT_WINDOW",
    "FIRST_ROWS",
    "RELEASE_LIMIT",
    "TASK_LIMIT",
    "ActionRefused",
    "AgentState",
    "Clock",
    "DashboardSource",
    "Filters",
    "InstallationState",
    "LiveWarning",
    "OutputLine",
    "Running",
    "Snapshot",
    "SourceUnavailable",
    "TaskDetail",
    "TaskTypeFilter",
    "fmt_is_stale",
]

#: How many tasks and releases the tables show (newest first).
TASK_LIMIT = 100
#: How many tasks the first screen shows before the rest of the dashboard has loaded:
#: a screenful (see :meth:`DashboardSource.first_rows`).
FIRST_ROWS = 40
RELEASE_LIMIT = 200
#: Agents that have not polled for a day are gone, not merely stale.
AGENT_WINDOW = timedelta(hours=24)
#: A query that takes longer than this counts as a lost connection (a half-open TCP
#: connection would otherwise hang the refresh loop forever).
QUERY_TIMEOUT = 10.0
#: How long opening the dashboard's connection may take.
CONNECT_TIMEOUT = 5.0
#: The LISTEN connection is checked this often: a silent network drop sends no FIN.
LISTENER_KEEPALIVE = 15.0
#: Lines of live output the main screen's pane keeps for the running task.
OUTPUT_PANE_LINES = 50


#: A connection lost in the middle of an operation (a server shutting down) can also
#: surface as asyncpg's InternalClientError ("cannot switch to state ...").
_LOST_CONNECTION: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    asyncpg.InternalClientError,
)
_DATABASE_ERRORS: tuple[type[BaseException], ...] = (*_LOST_CONNECTION, asyncpg.PostgresError)
_CONNECT_ERRORS: tuple[type[BaseException], ...] = (DatabaseUnavailable, *_DATABASE_ERRORS)


class SourceUnavailable(Exception):
    """The database could not answer; the message is fit for the status bar (no secrets)."""


class ActionRefused(Exception):
    """An action that makes no sense in the current state (e.g. no previous release)."""


class DashboardSource:
    """The dashboard's connection to PostgreSQL: connects lazily and reconnects after
    outages (the asyncpg pool replaces broken connections), so no error here is fatal."""

    def __init__(self, settings: AgentSettings, *, clock: Clock | None = None) -> None:
        # A dashboard needs few connections; an idle one is enough between refreshes.
        self.settings = settings.model_copy(update={"db_pool_min_size": 1, "db_pool_max_size": 3})
        self.clock = clock
        self._repo: Repository | None = None
        self._connecting = asyncio.Lock()
        self._skew = timedelta(0)
        self._prefetched: asyncio.Future[Snapshot] | None = None

    async def close(self) -> None:
        self._drop_prefetched()
        if self._repo is not None:
            repo, self._repo = self._repo, None
            await repo.close()

    # -- reads -------------------------------------------------------------------------
    async def snapshot(self, filters: Filters) -> Snapshot:
        # imported with the first whole snapshot, after the first paint (it brings the
        # process-running machinery along)
        from wrktalk_agent.live_output import OUTPUT_MARK, output_text

        async with self._repository() as repo:
            overview = await repo.dashboard_overview()
            now = self._now(overview["now"])
            tasks = await repo.dashboard_tasks(
                status=filters.status, task_type=filters.task_type, limit=TASK_LIMIT
            )
            running = [Running(t, e) for t, e in await repo.dashboard_running()]
            agents = [
                AgentState.model_validate(row)
                for row in await repo.dashboard_agent_states(now - AGENT_WINDOW)
            ]
            releases = await repo.dashboard_releases(RELEASE_LIMIT)
            state = await repo.dashboard_state()
            output = []
            if running:
                rows = await repo.dashboard_output(
                    running[0].task.id, OUTPUT_MARK, OUTPUT_PANE_LINES
                )
                output = [
                    OutputLine(r["created_at"], r["step"], output_text(r["message"])) for r in rows
                ]
        return Snapshot(
            now=now,
            filters=filters,
            installation=InstallationState(
                maintenance=overview["maintenance"],
                last_agent_poll=overview["last_agent_poll"],
                current_id=overview["current_id"],
                current_version=overview["current_version"],
                previous_id=overview["previous_id"],
                previous_version=overview["previous_version"],
                pending_count=overview["pending_count"],
                due_count=state["due_count"],
                maintenance_owner=state["maintenance_owner"],
                maintenance_reason=state["maintenance_reason"],
                maintenance_since=state["maintenance_since"],
                live_warning=_live_warning(state),
            ),
            tasks=tasks,
            running=running,
            agents=agents,
            releases=releases,
            stale_after=self.settings.stale_after_seconds,
            output=output,
        )

    def prefetch_first_rows(self) -> None:
        """Send the first screen's query now — the app does, before its screen is built,
        so that the database answers while the widgets are styled. The next
        :meth:`first_rows` with the default filters takes the answer."""
        self._prefetched = asyncio.ensure_future(self._first_rows(Filters(), FIRST_ROWS))

    async def prefetched_first_rows(self, timeout: float) -> Snapshot | None:
        """The prefetched first rows if they arrive within ``timeout`` seconds (taken:
        :meth:`first_rows` will not return them again); ``None`` when they are late or
        failed — then :meth:`first_rows` waits for them or reports the failure."""
        prefetched = self._prefetched
        if prefetched is None:
            return None
        await asyncio.wait({prefetched}, timeout=timeout)
        if not prefetched.done() or prefetched.cancelled() or prefetched.exception():
            return None
        self._prefetched = None
        return prefetched.result()

    async def first_rows(self, filters: Filters, limit: int = FIRST_ROWS) -> Snapshot:
        """The newest ``limit`` tasks (and the steps of running ones), for the first paint
        only: agents, releases and the installation's details come with :meth:`snapshot`
        right after; a partial snapshot is never kept as the dashboard's state."""
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is not None and (filters, limit) == (Filters(), FIRST_ROWS):
            return await prefetched
        self._prefetched = prefetched
        self._drop_prefetched()
        return await self._first_rows(filters, limit)

    def _drop_prefetched(self) -> None:
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is not None and not prefetched.cancel() and not prefetched.cancelled():
            prefetched.exception()  # read: asyncio would log an error nobody awaited

    async def _first_rows(self, filters: Filters, limit: int) -> Snapshot:
        async with self._repository() as repo:
            overview = await repo.dashboard_overview()
            tasks = await repo.dashboard_tasks(
                status=filters.status, task_type=filters.task_type, limit=limit
            )
            running = [Running(t, e) for t, e in await repo.dashboard_running()]
        return Snapshot(
            now=self._now(overview["now"]),
            filters=filters,
            installation=InstallationState(
                maintenance=overview["maintenance"],
                last_agent_poll=overview["last_agent_poll"],
                current_id=overview["current_id"],
                current_version=overview["current_version"],
                previous_id=overview["previous_id"],
                previous_version=overview["previous_version"],
                pending_count=overview["pending_count"],
            ),
            tasks=tasks,
            running=running,
            agents=[],
            releases=[],
            stale_after=self.settings.stale_after_seconds,
        )

    async def detail(self, task_id: UUID) -> TaskDetail | None:
        async with self._repository() as repo:
            task = await repo.get_task(task_id)
            if task is None:
                return None
            events = await repo.task_events(task_id)
        return TaskDetail(now=self.now(), task=task, events=events)

    def now(self) -> datetime:
        """The database's clock as of now (see :attr:`Snapshot.now`), or the injected one."""
        if self.clock is not None:
            return self.clock()
        return datetime.now(UTC) + self._skew

    def _now(self, database_now: datetime) -> datetime:
        # Remember how far the local clock is off, so ages tick correctly between refreshes.
        self._skew = database_now - datetime.now(UTC)
        return self.now()

    # -- actions -----------------------------------------------------------------------
    async def request_rollback(self, previous_id: UUID) -> Task:
        """Queue a rollback to ``previous_id``, the release the operator confirmed."""
        async with self._repository() as repo:
            previous = await repo.previous_release()
            if previous is None or previous.id != previous_id:
                raise ActionRefused(
                    "the previous release changed since the dialog opened; nothing was queued"
                )
            return await repo.create_task("rollback", previous_id)

    async def deploy(self, release_id: UUID, execute_after: datetime | None) -> Task:
        async with self._repository() as repo:
            return await repo.create_task("deploy", release_id, execute_after)

    async def cancel(self, task_id: UUID) -> Task:
        async with self._repository() as repo:
            task = await repo.cancel_task(task_id, by=_operator(), via="dashboard")
        if task is None:
            raise ActionRefused("the task is no longer pending; nothing was cancelled")
        return task

    # -- live updates --------------------------------------------------------------------
    async def listen(
        self, on_change: Callable[[], object], on_state: Callable[[str | None], object]
    ) -> None:
        """LISTEN for task changes forever on a connection of its own, reconnecting with
        backoff. ``on_state(None)`` means listening, a message means not listening; every
        (re)connect calls ``on_change`` too, since changes may have been missed."""
        delay = 1.0
        while True:
            try:
                conn = await connect_listener(self.settings, timeout=QUERY_TIMEOUT)
            except _CONNECT_ERRORS as exc:
                on_state(f"live updates off: {exc}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            delay = 1.0
            try:
                await self._listen_on(conn, on_change, on_state)
                on_state("live updates lost: the connection was closed")
            except _DATABASE_ERRORS as exc:
                on_state(f"live updates lost: {_reason(exc)}")
            finally:
                if not conn.is_closed():
                    conn.terminate()

    async def _listen_on(
        self,
        conn: asyncpg.Connection,
        on_change: Callable[[], object],
        on_state: Callable[[str | None], object],
    ) -> None:
        """Return when the connection is gone (closed by the server, or no keepalive
        answer)."""
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())

        def notified(_conn: object, _pid: int, _channel: str, _payload: object) -> None:
            on_change()

        await conn.add_listener(NOTIFY_CHANNEL, notified)
        on_state(None)
        on_change()
        while not lost.is_set():
            try:
                await asyncio.wait_for(lost.wait(), timeout=LISTENER_KEEPALIVE)
            except TimeoutError:
                await keepalive(conn, QUERY_TIMEOUT)

    # -- plumbing ------------------------------------------------------------------------
    @asynccontextmanager
    async def _repository(self) -> AsyncIterator[Repository]:
        """The repository, connected on first use; errors become :class:`SourceUnavailable`
        and a lost connection retires the pool's connections, which are likely dead too
        (a restarted server), so that the next attempt starts afresh."""
        server = self.settings.server_label()
        try:
            async with asyncio.timeout(QUERY_TIMEOUT):
                async with self._connecting:
                    if self._repo is None:
                        self._repo = await Repository.connect(
                            self.settings, timeout=CONNECT_TIMEOUT, tui=True
                        )
                with tolerant_rows():  # a row with an unknown status is shown, not fatal
                    yield self._repo
        except DatabaseUnavailable as exc:
            raise SourceUnavailable(str(exc)) from None
        except _LOST_CONNECTION as exc:
            if self._repo is not None:
                await self._repo.pool.expire_connections()
            raise SourceUnavailable(f"lost PostgreSQL at {server}: {_reason(exc)}") from None
        except asyncpg.PostgresError as exc:
            # e.g. a database being shut down, or a schema the agent has not migrated yet
            raise SourceUnavailable(f"PostgreSQL at {server}: {_reason(exc)}") from None


def _live_warning(state: dict[str, object]) -> LiveWarning | None:
    live = state.get("last_live")
    task_id = state.get("last_task_id")
    if not isinstance(live, dict) or not isinstance(task_id, UUID):
        return None
    next_step = state.get("last_next_step")
    version = live.get("version")
    return LiveWarning(
        task_id=task_id,
        version=str(version) if version is not None else None,
        state=str(live.get("state") or "unknown"),
        detail=str(live.get("detail") or ""),
        next_step=str(next_step) if next_step else None,
    )


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _operator() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        user = "operator"
    return f"{user}@{socket.gethostname()}"
