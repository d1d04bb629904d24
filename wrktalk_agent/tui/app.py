"""The dashboard app: one main screen (overview, tasks, agents, releases), a detail screen
per task and confirmation dialogs for the actions.

Refresh loop: a one-shot timer re-armed when a refresh finishes, so refreshes never overlap
however slow the database is; a NOTIFY on the task channel refreshes at once (or right
after the refresh in flight). Failures back off and show in the status bar, never crash.
"""

from __future__ import annotations

from datetime import datetime
from typing import TypeVar, get_args
from uuid import UUID

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Input, Static, TabbedContent, TabPane

from wrktalk_agent.config import AgentSettings
from wrktalk_agent.db.models import SHOWN_STATUSES, Task
from wrktalk_agent.safe_text import visible
from wrktalk_agent.tui import format as fmt
from wrktalk_agent.tui.data import (
    ActionRefused,
    Clock,
    DashboardSource,
    Filters,
    Snapshot,
    SourceUnavailable,
    TaskTypeFilter,
)
from wrktalk_agent.tui.messages import (
    ActionFinished,
    ListenerState,
    RefreshFailed,
    SnapshotLoaded,
    TasksChanged,
)
from wrktalk_agent.tui.screens import (
    ConfirmDialog,
    DeployChoice,
    DeployDialog,
    HelpScreen,
    TaskDetailScreen,
)
from wrktalk_agent.tui.widgets import (
    SORTS,
    AgentsTable,
    FilterBar,
    MaintenanceBadge,
    OutputPane,
    Overview,
    ReleasesTable,
    StatusBar,
    TasksTable,
    empty_text,
)

STATUS_CYCLE: tuple[str | None, ...] = (None, *SHOWN_STATUSES)
TYPE_CYCLE: tuple[TaskTypeFilter | None, ...] = (None, *get_args(TaskTypeFilter))
#: Longest wait between attempts while the database is unreachable.
MAX_RETRY_DELAY = 15.0
#: Actions that write; hidden in read-only mode.
WRITE_ACTIONS = {"rollback", "deploy", "cancel_task"}


class MainScreen(Screen[None]):
    """Overview, tasks, agents and releases, refreshed live; the actions start here."""

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
        #: client-side: text the task list must contain, and the order (index in SORTS)
        self.search = ""
        self.sort = 0
        self.show_output = True
        self.snapshot: Snapshot | None = None
        #: the database stopped answering after the snapshot shown was read
        self.unreachable = False
        self.listener_error: str | None = "connecting"
        self._timer: Timer | None = None
        self._refreshing = False
        self._refresh_again = False
        self._failures = 0
        self._actions_state: tuple[bool | None, ...] = ()

    def compose(self) -> ComposeResult:
        with Horizontal(id="top"):
            yield Overview(Text("connecting…"), id="overview")
            yield MaintenanceBadge(id="maintenance")
        with TabbedContent(id="tabs"):
            with TabPane("1 Tasks", id="tasks"):
                yield FilterBar(id="filters")
                search = Input(placeholder="search id, version, type, status, agent, error")
                search.id = "search"
                search.display = False
                yield search
                yield TasksTable(id="tasks-table")
                yield Static(id="tasks-empty")
                yield OutputPane(id="output")
            with TabPane("2 Agents", id="agents"):
                yield AgentsTable(id="agents-table")
            with TabPane("3 Releases", id="releases"):
                yield ReleasesTable(id="releases-table")
        yield StatusBar(Text("connecting…"), id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(FilterBar).show(self.filters)
        self.query_one("#tasks-empty").display = False
        self.query_one(OutputPane).display = False
        self.query_one(TasksTable).focus()
        self.request_refresh()
        self.listen_for_changes()
        # while the database does not answer, the age of the data shown keeps growing
        self.set_interval(1.0, self._tick_stale)

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
            snapshot = await self.source.snapshot(filters)
        except SourceUnavailable as exc:
            self.post_message(RefreshFailed(str(exc)))
        else:
            self.post_message(SnapshotLoaded(snapshot))

    @on(SnapshotLoaded)
    def show_snapshot(self, message: SnapshotLoaded) -> None:
        snapshot = self.snapshot = message.snapshot
        self._failures = 0
        self.unreachable = False
        self.query_one(Overview).show(snapshot, self.installation)
        self.query_one(MaintenanceBadge).show(snapshot.installation, snapshot.now)
        self._show_tasks()
        self.query_one(AgentsTable).show(snapshot)
        self.query_one(ReleasesTable).show(snapshot)
        self.query_one(StatusBar).show_ok(snapshot.now, self.listener_error)
        self.context_changed()
        self._refresh_finished(self.refresh_interval)

    @on(RefreshFailed)
    def show_refresh_failure(self, message: RefreshFailed) -> None:
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

    def _show_tasks(self) -> None:
        """The task list as filtered, searched and sorted; what an empty one means; the
        running task's output."""
        snapshot = self.snapshot
        if snapshot is None:
            return
        self.query_one(FilterBar).show(self.filters, self.search, self.sort)
        shown = self.query_one(TasksTable).show(snapshot, self.search, self.sort)
        empty = self.query_one("#tasks-empty", Static)
        empty.display = shown == 0
        if shown == 0:
            empty.update(empty_text(self.filters, self.search))
        pane = self.query_one(OutputPane)
        pane.display = self.show_output and bool(snapshot.running)
        if pane.display:
            task = snapshot.running[0].task
            title = visible(
                f"output of {task.type} {task.release_version or ''} "
                f"(task {fmt.short_id(task.id)}) · l hides"
            )
            pane.show(snapshot.output, title, snapshot.now)

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
        self.query_one(TabbedContent).active = tab
        self.query_one(f"#{tab}-table", DataTable).focus()

    @on(TabbedContent.TabActivated)
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

    def action_cycle_sort(self) -> None:
        self.sort = (self.sort + 1) % len(SORTS)
        self.action_show_tab("tasks")
        self._show_tasks()

    def action_toggle_output(self) -> None:
        self.show_output = not self.show_output
        self._show_tasks()

    def action_help(self) -> None:
        self.app.push_screen(HelpScreen(read_only=self.read_only))

    def action_search(self) -> None:
        self.action_show_tab("tasks")
        search = self.query_one("#search", Input)
        search.display = True
        search.focus()

    def action_clear_search(self) -> None:
        search = self.query_one("#search", Input)
        if search.display or self.search:
            search.value = ""
            search.display = False
            self.search = ""
            self._show_tasks()
            self.query_one(TasksTable).focus()

    @on(Input.Changed, "#search")
    def search_changed(self, event: Input.Changed) -> None:
        self.search = event.value.strip()
        self._show_tasks()

    @on(Input.Submitted, "#search")
    def search_done(self) -> None:
        search = self.query_one("#search", Input)
        if not search.value.strip():
            search.display = False
        self.query_one(TasksTable).focus()

    def action_cycle_type(self) -> None:
        task_type = _next(TYPE_CYCLE, self.filters.task_type)
        self._set_filters(Filters(status=self.filters.status, task_type=task_type))

    def _set_filters(self, filters: Filters) -> None:
        self.filters = filters
        self.query_one(FilterBar).show(filters)
        self.action_show_tab("tasks")
        self.request_refresh()

    @on(DataTable.RowSelected, "#tasks-table")
    def open_detail(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self.app.push_screen(
                TaskDetailScreen(self.source, UUID(event.row_key.value), self.refresh_interval)
            )

    # -- actions -----------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Write actions: hidden when read-only or on another tab, shown disabled when the
        selected row does not allow them (a task that is not pending)."""
        if action not in WRITE_ACTIONS:
            return True
        if self.read_only:
            return False
        active = self.query_one(TabbedContent).active
        if action == "deploy":
            if active != "releases":
                return False
            allowed = self.query_one(ReleasesTable).selected_release(self.snapshot) is not None
        elif action == "cancel_task":
            if active != "tasks":
                return False
            # always allowed: on a task that is not pending it says why nothing happens
            allowed = self._selected_task() is not None
        else:
            allowed = True
        return True if allowed else None  # None: shown, but disabled

    def _selected_task(self) -> Task | None:
        if self.snapshot is None:
            return None
        key = self.query_one(TasksTable).selected_key
        return next((t for t in self.snapshot.tasks if str(t.id) == key), None)

    def action_rollback(self) -> None:
        if self.snapshot is None:
            self.notify("No data from the database yet.", severity="warning")
            return
        state = self.snapshot.installation
        if state.previous_id is None:
            self.notify("There is no previous release to roll back to.", severity="warning")
            return
        previous_id = state.previous_id
        body = Text.assemble(
            "Queue a rollback from ",
            (visible(state.current_version or "none"), "bold"),
            " to ",
            (visible(state.previous_version or "?"), "bold"),
            ".\n",
            "An agent will put the site in maintenance mode while it runs.",
        )
        body.append("\n")
        body.append_text(rollback_timing(state.due_count, len(self.snapshot.running)))

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.request_rollback(previous_id)

        self.app.push_screen(ConfirmDialog("Request a rollback?", body, "Roll back"), confirmed)

    def action_deploy(self) -> None:
        release = self.query_one(ReleasesTable).selected_release(self.snapshot)
        if release is None or self.snapshot is None:
            self.notify("Select a release in the Releases tab first.", severity="warning")
            return
        self.app.push_screen(
            DeployDialog(release, self.snapshot.installation.current_version, self.source.now()),
            self._deploy_chosen,
        )

    def _deploy_chosen(self, choice: DeployChoice | None) -> None:
        if choice is not None:
            self.queue_deploy(
                choice.release.id, choice.release.release_version, choice.execute_after
            )

    def action_cancel_task(self) -> None:
        task = self._selected_task()
        if task is None:
            return
        if task.status != "pending":
            why = {
                "inProgress": "it is running; an agent stops a deploy only on shutdown",
                "completed": "it has completed",
                "failed": "it has already failed",
            }.get(task.status, f"it is {task.status}")
            self.notify(
                visible(
                    f"Task {fmt.short_id(task.id)} is not cancelled: {why}. "
                    "Only pending tasks can be cancelled."
                ),
                severity="warning",
                markup=False,
            )
            return
        body = Text.assemble(
            "Cancel the pending ",
            (visible(f"{task.type} {task.release_version or ''}".strip()), "bold"),
            f" (task {fmt.short_id(task.id)})?\n",
            "It will be marked failed with a 'cancelled' message.",
        )
        task_id = task.id

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.cancel_pending(task_id)

        self.app.push_screen(ConfirmDialog("Cancel this task?", body, "Cancel task"), confirmed)

    @work(exclusive=True, group="action")
    async def request_rollback(self, previous_id: UUID) -> None:
        try:
            task = await self.source.request_rollback(previous_id)
        except (SourceUnavailable, ActionRefused) as exc:
            self.post_message(ActionFinished(f"Rollback not requested: {exc}", ok=False))
        else:
            self.post_message(
                ActionFinished(f"Rollback queued (task {fmt.short_id(task.id)}).", ok=True)
            )

    @work(exclusive=True, group="action")
    async def queue_deploy(self, release_id: UUID, version: str, when: datetime | None) -> None:
        try:
            task = await self.source.deploy(release_id, when)
        except SourceUnavailable as exc:
            self.post_message(ActionFinished(f"Deploy not queued: {exc}", ok=False))
        else:
            due = f"for {fmt.full_time(when)}" if when else "to run now"
            self.post_message(
                ActionFinished(
                    f"Deploy of {version} queued {due} (task {fmt.short_id(task.id)}).", ok=True
                )
            )

    @work(exclusive=True, group="action")
    async def cancel_pending(self, task_id: UUID) -> None:
        try:
            await self.source.cancel(task_id)
        except (SourceUnavailable, ActionRefused) as exc:
            self.post_message(ActionFinished(f"Not cancelled: {exc}", ok=False))
        else:
            self.post_message(ActionFinished(f"Task {fmt.short_id(task_id)} cancelled.", ok=True))

    @on(ActionFinished)
    def action_finished(self, message: ActionFinished) -> None:
        # the text quotes versions and database errors: never read it as markup
        self.notify(
            visible(message.text),
            severity="information" if message.ok else "error",
            markup=False,
        )
        self.request_refresh()


class DashboardApp(App[None]):
    """``wrktalk-agent tui``: see :func:`wrktalk_agent.tui.create_app`."""

    CSS_PATH = "dashboard.tcss"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [Binding("q", "quit", "Quit")]

    def __init__(
        self,
        settings: AgentSettings,
        *,
        read_only: bool = False,
        refresh_interval: float = 2.0,
        clock: Clock | None = None,
    ) -> None:
        super().__init__()
        self.source = DashboardSource(settings, clock=clock)
        self.main = MainScreen(
            self.source,
            installation=settings.installation_name,
            read_only=read_only,
            refresh_interval=refresh_interval,
        )
        self.title = f"wrktalk-agent · {settings.installation_name}"
        self.sub_title = "read-only" if read_only else ""

    def get_default_screen(self) -> Screen[None]:
        return self.main

    async def on_unmount(self) -> None:
        await self.source.close()


T = TypeVar("T")


def rollback_timing(due: int, running: int) -> Text:
    """When a rollback queued now runs: tasks are claimed oldest first, one at a time."""
    if not due and not running:
        return Text("It starts at once (nothing is running or due before it).")
    ahead = []
    if running:
        ahead.append("a task is running")
    if due:
        ahead.append(f"{due} task{'s' if due != 1 else ''} due before it")
    return Text(f"It waits: {' and '.join(ahead)}.", style="yellow")


def _next(cycle: tuple[T, ...], current: T) -> T:
    return cycle[(cycle.index(current) + 1) % len(cycle)]
