"""The main screen: overview, tasks, agents and releases, refreshed live.

Refresh loop: a one-shot timer re-armed when a refresh finishes, so refreshes never overlap
however slow the database is; a NOTIFY on the task channel refreshes at once (or right
after the refresh in flight). Failures back off and show in the status bar, never crash.

First paint: the app sends the first query before this screen is built
(``DashboardSource.prefetch_first_rows``); the screen composes what the first screen shows
and nothing more, and the rest of the first snapshot loads once the first rows are on
screen. The Agents and Releases tables are built when their tab is first shown, the search
field when it is first opened; the dialogs and the task detail are imported when first
opened.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, TypeVar, get_args
from uuid import UUID

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, TabbedContent, TabPane

from wrktalk_agent.db.models import SHOWN_STATUSES
from wrktalk_agent.safe_text import visible
from wrktalk_agent.tui.actions import WRITE_ACTIONS, WriteActions
from wrktalk_agent.tui.agents_tab import AgentsTable
from wrktalk_agent.tui.data import DashboardSource, SourceUnavailable
from wrktalk_agent.tui.messages import (
    ActionFinished,
    FirstRowsLoaded,
    ListenerState,
    RefreshFailed,
    SnapshotLoaded,
    TasksChanged,
)
from wrktalk_agent.tui.releases_tab import ReleasesTable
from wrktalk_agent.tui.snapshot import Filters, Snapshot, TaskTypeFilter
from wrktalk_agent.tui.tasks_tab import TasksTab
from wrktalk_agent.tui.widgets import DashboardFooter, MaintenanceBadge, Overview, StatusBar

if TYPE_CHECKING:
    from textual.timer import Timer

STATUS_CYCLE: tuple[str | None, ...] = (None, *SHOWN_STATUSES)
TYPE_CYCLE: tuple[TaskTypeFilter | None, ...] = (None, *get_args(TaskTypeFilter))
#: Longest wait between attempts while the database is unreachable.
MAX_RETRY_DELAY = 15.0
#: how long the first frame waits for the first rows (asked for at the app's start) before
#: it is drawn without them: a database that answers at once is drawn once, with its rows;
#: a slow or unreachable one never keeps the screen blank for longer than this
FIRST_FRAME_WAIT = 0.3


class MainScreen(Screen[None]):
    """Overview, tasks, agents and releases, refreshed live; the actions start here."""

    #: the task list has the focus from the start (not the tab bar first, then the list:
    #: each change of focus rebuilds the footer)
    AUTO_FOCUS = "#tasks-table"

    BINDINGS = [
        Binding("question_mark", "help", "Help"),
        Binding("slash", "search", "Search"),
        Binding("s", "cycle_status", "Status"),
        Binding("t", "cycle_type", "Type"),
        Binding("o", "cycle_sort", "Sort", show=False),
        Binding("l", "toggle_output", "Output", show=False),
        Binding("r", "rollback", "Rollback"),
        Binding("d", "deploy", "Deploy"),
        Binding("c", "cancel_task", "Cancel task"),
        Binding("ctrl+r", "refresh_now", "Refresh", show=False),
        Binding("escape", "clear_search", "Clear search", show=False),
        Binding("1", "show_tab('tasks')", "Tasks", show=False),
        Binding("2", "show_tab('agents')", "Agents", show=False),
        Binding("3", "show_tab('releases')", "Releases", show=False),
    ]

    def __init__(
        self,
        source: DashboardSource,
        *,
        installation: str,
        read_only: bool,
        refresh_interval: float,
    ) -> None:
        super().__init__()
        self.source = source
        # said on screen, so that nobody wonders where the actions went
        self.installation = f"{installation} (read-only)" if read_only else installation
        self.read_only = read_only
        self.refresh_interval = refresh_interval
        self.filters = Filters()
        self.snapshot: Snapshot | None = None
        #: the database stopped answering after the snapshot shown was read
        self.unreachable = False
        self.listener_error: str | None = "connecting"
        self.writes = WriteActions(self)
        self._timer: Timer | None = None
        self._refreshing = False
        self._refresh_again = False
        self._failures = 0
        self._listening = False
        self._actions_state: tuple[bool | None, ...] = ()
        #: the first rows are on screen: the rest of the first snapshot may load
        self._first_painted = asyncio.Event()
        self._first_rows_shown = False

    def compose(self) -> ComposeResult:
        with Horizontal(id="top"):
            yield Overview(Text("connecting…"), id="overview")
            yield MaintenanceBadge(id="maintenance")
        with TabbedContent(id="tabs"):
            yield TasksTab("1 Tasks", id="tasks")
            # filled by _build_tab when first shown
            yield TabPane("2 Agents", id="agents")
            yield TabPane("3 Releases", id="releases")
        yield StatusBar(Text("connecting…"), id="status")
        yield DashboardFooter()

    @property
    def tasks(self) -> TasksTab:
        return self.query_one(TasksTab)

    async def on_mount(self) -> None:
        self.tasks.table.focus()
        # while the database does not answer, the age of the data shown keeps growing
        self.set_interval(1.0, self._tick_stale)
        # The first rows were asked for when the app started: when they come within a
        # moment, the first frame shows them (no empty table drawn first, then again);
        # otherwise the frame is drawn at once and the rows follow.
        first = await self.source.prefetched_first_rows(FIRST_FRAME_WAIT)
        if first is not None:
            self._show_first_rows(first)
        self.request_refresh()  # the LISTEN connection follows the first snapshot

    # -- refresh loop ------------------------------------------------------------------
    def request_refresh(self) -> None:
        """Refresh now, or right after the refresh in flight (never two at once)."""
        if self._refreshing:
            self._refresh_again = True
            return
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        self._refreshing = True
        self.load_snapshot(self.filters)

    @work(exclusive=True, group="refresh")
    async def load_snapshot(self, filters: Filters) -> None:
        try:
            if self.snapshot is None:
                if not self._first_rows_shown:  # a screenful of the newest tasks first
                    self.post_message(FirstRowsLoaded(await self.source.first_rows(filters)))
                # the rest once those rows are on screen: its work does not delay them
                await self._first_painted.wait()
            snapshot = await self.source.snapshot(filters)
        except SourceUnavailable as exc:
            self.post_message(RefreshFailed(str(exc)))
        else:
            self.post_message(SnapshotLoaded(snapshot))

    @on(FirstRowsLoaded)
    def show_first_rows(self, message: FirstRowsLoaded) -> None:
        if self.snapshot is None:  # the whole snapshot did not overtake it
            self._show_first_rows(message.snapshot)
        else:
            self.call_after_refresh(self._first_painted.set)

    def _show_first_rows(self, snapshot: Snapshot) -> None:
        self._first_rows_shown = True
        self.tasks.show_first_rows(snapshot)
        self.call_after_refresh(self._first_painted.set)

    @on(SnapshotLoaded)
    def show_snapshot(self, message: SnapshotLoaded) -> None:
        self._start_listening()
        snapshot = self.snapshot = message.snapshot
        self._failures = 0
        self.unreachable = False
        self.query_one(Overview).show(snapshot, self.installation)
        self.query_one(MaintenanceBadge).show(snapshot.installation, snapshot.now)
        self.tasks.show(snapshot)
        for table in self.query(AgentsTable):  # the tabs built so far
            table.show(snapshot)
        for releases in self.query(ReleasesTable):
            releases.show(snapshot)
        self.query_one(StatusBar).show_ok(snapshot.now, self.listener_error)
        self.context_changed()
        self._refresh_finished(self.refresh_interval)

    def _start_listening(self) -> None:
        """LISTEN from the end of the first refresh on: its connection does not compete
        with the first paint (what it would report then, the refresh reports too)."""
        if not self._listening:
            self._listening = True
            self.listen_for_changes()

    @on(RefreshFailed)
    def show_refresh_failure(self, message: RefreshFailed) -> None:
        self._start_listening()
        self._failures += 1
        delay = min(self.refresh_interval * 2 ** (self._failures - 1), MAX_RETRY_DELAY)
        last_good = self.snapshot.now if self.snapshot else None
        self.query_one(StatusBar).show_error(message.error, delay, last_good)
        self.unreachable = True
        self._tick_stale()
        self._refresh_finished(delay)

    def _tick_stale(self) -> None:
        if self.unreachable and self.snapshot is not None:
            age = (self.source.now() - self.snapshot.now).total_seconds()
            self.query_one(Overview).show(self.snapshot, self.installation, unreachable_for=age)

    def _refresh_finished(self, delay: float) -> None:
        self._refreshing = False
        if self._refresh_again:
            self._refresh_again = False
            self.request_refresh()
        else:
            self._timer = self.set_timer(delay, self.request_refresh)

    @work(exclusive=True, group="listen")
    async def listen_for_changes(self) -> None:
        await self.source.listen(
            on_change=lambda: self.post_message(TasksChanged()),
            on_state=lambda error: self.post_message(ListenerState(error)),
        )

    @on(TasksChanged)
    def tasks_changed(self) -> None:
        self.request_refresh()

    @on(ListenerState)
    def listener_state(self, message: ListenerState) -> None:
        self.listener_error = message.error
        if self.snapshot is not None and self._failures == 0:
            self.query_one(StatusBar).show_ok(self.snapshot.now, message.error)

    def action_refresh_now(self) -> None:
        self.request_refresh()

    # -- navigation and filters ----------------------------------------------------------
    def action_show_tab(self, tab: str) -> None:
        self._build_tab(tab)
        self.query_one(TabbedContent).active = tab
        self.query_one(f"#{tab}-table", DataTable).focus()

    def _build_tab(self, tab: str) -> None:
        """Mount a tab's table the first time the tab is shown, with the data at hand."""
        table: AgentsTable | ReleasesTable
        if tab == "agents" and not self.query(AgentsTable):
            table = AgentsTable(id="agents-table")
        elif tab == "releases" and not self.query(ReleasesTable):
            table = ReleasesTable(id="releases-table")
        else:
            return
        self.query_one(f"#{tab}", TabPane).mount(table)
        if self.snapshot is not None:
            table.show(self.snapshot)  # shown once mounted

    @on(TabbedContent.TabActivated)
    def tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id is not None:
            self._build_tab(event.pane.id)  # a click on the tab, not a key
        self.context_changed()

    @on(DataTable.RowHighlighted)
    def context_changed(self) -> None:
        """ "deploy" needs a release row, "cancel" a pending task: update the footer, but only
        when that changes — the footer rebuilds its keys every time it is told to."""
        state = tuple(self.check_action(action, ()) for action in sorted(WRITE_ACTIONS))
        if state != self._actions_state:
            self._actions_state = state
            self.refresh_bindings()

    def action_cycle_status(self) -> None:
        status = _next(STATUS_CYCLE, self.filters.status)
        self._set_filters(Filters(status=status, task_type=self.filters.task_type))

    def action_cycle_type(self) -> None:
        task_type = _next(TYPE_CYCLE, self.filters.task_type)
        self._set_filters(Filters(status=self.filters.status, task_type=task_type))

    def _set_filters(self, filters: Filters) -> None:
        self.filters = filters
        self.tasks.set_filters(filters)
        self.action_show_tab("tasks")
        self.request_refresh()

    def action_cycle_sort(self) -> None:
        self.action_show_tab("tasks")
        self.tasks.cycle_sort()

    def action_toggle_output(self) -> None:
        self.tasks.toggle_output()

    def action_help(self) -> None:
        from wrktalk_agent.tui.dialogs import HelpScreen  # first opened: off the first paint

        self.app.push_screen(HelpScreen(read_only=self.read_only))

    def action_search(self) -> None:
        self.action_show_tab("tasks")
        self.tasks.open_search()

    def action_clear_search(self) -> None:
        self.tasks.clear_search()

    # -- the task detail and the write actions -------------------------------------------
    @on(DataTable.RowSelected, "#tasks-table")
    def open_detail(self, event: DataTable.RowSelected) -> None:
        from wrktalk_agent.tui.detail import TaskDetailScreen  # first opened: off the first paint

        if event.row_key.value is not None:
            self.app.push_screen(
                TaskDetailScreen(self.source, UUID(event.row_key.value), self.refresh_interval)
            )

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action not in WRITE_ACTIONS:
            return True
        return self.writes.allowed(action)

    def action_rollback(self) -> None:
        self.writes.rollback()

    def action_deploy(self) -> None:
        self.writes.deploy()

    def action_cancel_task(self) -> None:
        self.writes.cancel()

    @on(ActionFinished)
    def action_finished(self, message: ActionFinished) -> None:
        # the text quotes versions and database errors: never read it as markup
        self.notify(
            visible(message.text),
            severity="information" if message.ok else "error",
            markup=False,
        )
        self.request_refresh()


T = TypeVar("T")


def _next(cycle: tuple[T, ...], current: T) -> T:
    return cycle[(cycle.index(current) + 1) % len(cycle)]
