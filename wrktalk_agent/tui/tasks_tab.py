"""The Tasks tab: the task list, its filter bar and search field, what an empty list
means, and the live output of the running task."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import Input, Static, TabPane

from wrktalk_agent.safe_text import visible
from wrktalk_agent.tui import format as fmt
from wrktalk_agent.tui.snapshot import Filters
from wrktalk_agent.tui.table import Cells, KeyedTable

if TYPE_CHECKING:
    from wrktalk_agent.db.models import Task, TaskEvent
    from wrktalk_agent.tui.snapshot import OutputLine, Snapshot


#: How the task list can be ordered (``o`` cycles): label, key, newest/largest first.
SORTS: tuple[tuple[str, Callable[[Task], Any], bool], ...] = (
    ("newest", lambda t: (t.created_at, str(t.id)), True),
    ("oldest", lambda t: (t.created_at, str(t.id)), False),
    ("status", lambda t: (t.shown_status, t.created_at), False),
    ("version", lambda t: (t.release_version or "", t.created_at), True),
    ("type", lambda t: (t.type, t.created_at), False),
)


def task_matches(task: Task, search: str) -> bool:
    """Whether ``search`` (case-insensitive) is in the task's id, version, type, status,
    agent or error."""
    if not search:
        return True
    needle = search.casefold()
    haystack = (
        str(task.id),
        task.release_version or "",
        task.type,
        task.shown_status,
        task.claimed_by or "",
        task.error_message or "",
    )
    return any(needle in field.casefold() for field in haystack)


def shown_tasks(snapshot: Snapshot, search: str, sort: int) -> list[Task]:
    """The tasks of a snapshot that match ``search``, in the order ``SORTS[sort]``."""
    _, key, reverse = SORTS[sort % len(SORTS)]
    return sorted((t for t in snapshot.tasks if task_matches(t, search)), key=key, reverse=reverse)


class TasksTable(KeyedTable):
    BINDINGS = [Binding("enter", "select_cursor", "Detail")]

    COLUMNS = (
        ("ID", "id"),
        ("Status", "status"),
        ("Type", "type"),
        ("Version", "version"),
        ("Picked up / due", "when"),
        ("Took", "took"),
        ("Step / error", "info"),
        ("Agent", "agent"),
    )

    def show(self, snapshot: Snapshot, search: str = "", sort: int = 0) -> int:
        """Fill the table; returns how many tasks are shown."""
        tasks = shown_tasks(snapshot, search, sort)
        self.replace_rows([(str(t.id), task_cells(t, snapshot)) for t in tasks])
        return len(tasks)


def task_cells(task: Task, snapshot: Snapshot) -> Cells:
    now = snapshot.now
    if task.status == "pending":
        when = Text(
            "due " + fmt.clock_time(task.execute_after, now) if task.execute_after else "queued",
            style="yellow",
        )
    else:
        when = Text(fmt.clock_time(task.picked_up_at, now))
    end = task.completed_at or (now if task.status == "inProgress" else None)
    if task.status == "inProgress":
        info = running_info(task, snapshot.step_of.get(task.id), snapshot)
    else:
        info = Text(fmt.first_line(fmt.mask_secrets(task.error_message), 200), style="red")
    return (
        Text(fmt.short_id(task.id), style="dim"),
        fmt.status_text(task.shown_status),
        fmt.plain(task.type),
        fmt.plain(task.release_version or "—"),
        when,
        Text(fmt.duration(task.picked_up_at, end)),
        info,
        fmt.plain(task.claimed_by or ""),
    )


def running_info(task: Task, step: TaskEvent | None, snapshot: Snapshot) -> Text:
    """``▶ <step> 12s · ♥ 3s ago`` — the heartbeat turns red once the task counts as stale."""
    text = Text("▶ ", style="cyan")
    if step is None:
        text.append("claimed", style="bold")
    else:
        text.append(visible(step.step), style="bold")
        text.append(f" {fmt.span((snapshot.now - step.created_at).total_seconds())}")
    # the lease the task's owner recorded, not this dashboard's settings
    stale = fmt.is_stale(
        task.last_heartbeat, snapshot.now, task.lease_seconds or snapshot.stale_after
    )
    text.append(
        " · ♥ " + fmt.age(task.last_heartbeat, snapshot.now), style="bold red" if stale else ""
    )
    return text


class FilterBar(Static):
    def show(self, filters: Filters, search: str = "", sort: int = 0) -> None:
        text = Text.assemble(
            ("status ", "dim"),
            (filters.status or "all", "bold"),
            ("  type ", "dim"),
            (filters.task_type or "all", "bold"),
            ("  sort ", "dim"),
            (SORTS[sort % len(SORTS)][0], "bold"),
        )
        if search:
            text.append("  search ", style="dim")
            text.append(visible(search), style="bold")
        text.append("   (s t o / ? help)", style="dim")
        text.no_wrap, text.overflow = True, "ellipsis"
        self.update(text)


def empty_text(filters: Filters, search: str) -> Text:
    """What an empty task list says: no tasks at all, or none matching the filters."""
    parts = []
    if filters.status:
        parts.append(f"status {filters.status}")
    if filters.task_type:
        parts.append(f"type {filters.task_type}")
    if search:
        parts.append(f"search {visible(search)!r}")
    if not parts:
        return Text("no tasks yet", style="dim")
    return Text.assemble(
        ("no tasks match ", "yellow"), ", ".join(parts), ("  (esc clears the search)", "dim")
    )


class OutputPane(Static):
    """The newest lines the running task's commands printed (its live output)."""

    def show(self, lines: Sequence[OutputLine], title: str, now: datetime) -> None:
        height = max(self.size.height - 1, 1) if self.size.height else 5
        text = Text(title, style="bold")
        if not lines:
            text.append("\nno output yet", style="dim")
        for line in lines[-height:]:
            text.append("\n")
            text.append(fmt.clock_time(line.at, now) + " ", style="dim")
            text.append(visible(fmt.mask_secrets(line.text)))
        text.no_wrap, text.overflow = True, "ellipsis"
        self.update(text)


class TasksTab(TabPane):
    """The tab itself. The search and the order are the operator's, applied here to the
    tasks of the snapshot shown; the filters are the database's (a refresh applies them).
    The search field is mounted the first time it is opened."""

    def __init__(self, title: str, *, id: str) -> None:
        super().__init__(title, id=id)
        self.filters = Filters()
        self.snapshot: Snapshot | None = None
        #: client-side: text the task list must contain, and the order (index in SORTS)
        self.search = ""
        self.sort = 0
        self.show_output = True

    def compose(self) -> ComposeResult:
        yield FilterBar(id="filters")
        yield TasksTable(id="tasks-table")
        empty = Static(id="tasks-empty")
        empty.display = False
        yield empty
        output = OutputPane(id="output")
        output.display = False
        yield output

    def on_mount(self) -> None:
        self.query_one(FilterBar).show(self.filters)

    @property
    def table(self) -> TasksTable:
        return self.query_one(TasksTable)

    def show_first_rows(self, snapshot: Snapshot) -> None:
        """The newest tasks, before the whole snapshot (see ``DashboardSource.first_rows``)."""
        self.table.show(snapshot, self.search, self.sort)

    def set_filters(self, filters: Filters) -> None:
        """New filters, shown at once; the tasks they select come with the next refresh."""
        self.filters = filters
        self.query_one(FilterBar).show(filters)

    def show(self, snapshot: Snapshot | None = None) -> None:
        """The task list as filtered, searched and sorted; what an empty one means; the
        running task's output."""
        if snapshot is not None:
            self.snapshot = snapshot
        snapshot = self.snapshot
        if snapshot is None:
            return
        self.query_one(FilterBar).show(self.filters, self.search, self.sort)
        shown = self.table.show(snapshot, self.search, self.sort)
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

    def cycle_sort(self) -> None:
        self.sort = (self.sort + 1) % len(SORTS)
        self.show()

    def toggle_output(self) -> None:
        self.show_output = not self.show_output
        self.show()

    # -- search ----------------------------------------------------------------------------
    def open_search(self) -> None:
        search = self._search_field()
        if search is None:
            search = Input(placeholder="search id, version, type, status, agent, error")
            search.id = "search"
            self.mount(search, before=self.table)
        search.display = True
        search.focus()

    def clear_search(self) -> None:
        search = self._search_field()
        if search is not None and (search.display or self.search):
            search.value = ""
            search.display = False
            self.search = ""
            self.show()
            self.table.focus()

    def _search_field(self) -> Input | None:
        return next(self.query("#search").results(Input), None)

    @on(Input.Changed, "#search")
    def search_changed(self, event: Input.Changed) -> None:
        self.search = event.value.strip()
        self.show()

    @on(Input.Submitted, "#search")
    def search_done(self) -> None:
        search = self._search_field()
        if search is not None and not search.value.strip():
            search.display = False
        self.table.focus()
