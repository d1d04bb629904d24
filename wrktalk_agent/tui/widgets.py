"""The main screen's widgets. They only display what they are given: no database here."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.widgets import DataTable, Static

from wrktalk_agent.db.models import AgentInstance, ArtifactInfo, Task, TaskEvent
from wrktalk_agent.safe_text import visible
from wrktalk_agent.tui import format as fmt
from wrktalk_agent.tui.data import Filters, InstallationState, OutputLine, Snapshot

Cells = tuple[Text, ...]


class KeyedTable(DataTable[Text]):
    """A row-cursor table refilled on every refresh that keeps the operator's place: the
    selected row stays selected by key, not by position, when new rows arrive on top.
    When the rows are the same ones (the common case), only changed cells are redrawn."""

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        self._shown: list[tuple[str, Cells]] = []

    def replace_rows(self, rows: Sequence[tuple[str, Cells]]) -> None:
        keys = [key for key, _ in rows]
        if keys == [key for key, _ in self._shown]:
            for (key, cells), (_, before) in zip(rows, self._shown, strict=True):
                for column, new, old in zip(self.ordered_columns, cells, before, strict=True):
                    if new != old:
                        self.update_cell(key, column.key, new, update_width=True)
            self._shown = list(rows)
            return
        selected, row_index = self.selected_key, self.cursor_row
        self.clear()
        for key, cells in rows:
            self.add_row(*cells, key=key)
        self._shown = list(rows)
        if selected in keys:
            self.move_cursor(row=keys.index(selected))
        elif rows:
            self.move_cursor(row=min(row_index, len(rows) - 1))

    @property
    def selected_key(self) -> str | None:
        if self.row_count == 0 or not self.is_valid_row_index(self.cursor_row):
            return None
        return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value


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

    def on_mount(self) -> None:
        super().on_mount()
        for label, key in (
            ("ID", "id"),
            ("Status", "status"),
            ("Type", "type"),
            ("Version", "version"),
            ("Picked up / due", "when"),
            ("Took", "took"),
            ("Step / error", "info"),
            ("Agent", "agent"),
        ):
            self.add_column(label, key=key)

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


class AgentsTable(KeyedTable):
    def on_mount(self) -> None:
        super().on_mount()
        for label in ("Agent", "State", "Last seen", "Heartbeat", "Task", "Host", "Version"):
            self.add_column(label, key=label.lower())

    def show(self, snapshot: Snapshot) -> None:
        self.replace_rows([(a.agent_id, agent_cells(a, snapshot)) for a in snapshot.agents])


def agent_cells(agent: AgentInstance, snapshot: Snapshot) -> Cells:
    now = snapshot.now
    state = snapshot.agent_state(agent)
    stale = state == "stale"
    running = {r.task.id: r.task for r in snapshot.running}
    task = running.get(agent.current_task_id) if agent.current_task_id else None
    if task is not None:
        task_text = fmt.plain(f"{task.type} {task.release_version or ''}".strip(), "cyan")
    else:
        task_text = Text(fmt.short_id(agent.current_task_id) if agent.current_task_id else "idle")
    return (
        fmt.plain(agent.agent_id, "bold red" if stale else "bold"),
        AGENT_STATE_TEXT[state],
        Text(fmt.age(snapshot.agent_last_seen(agent), now)),
        Text(fmt.age(agent.last_heartbeat, now) if agent.last_heartbeat else "—"),
        task_text,
        fmt.plain(f"{agent.hostname}:{agent.pid}"),
        fmt.plain(agent.version),
    )


AGENT_STATE_TEXT = {
    "alive": Text("alive", style="green"),
    "stale": Text("STALE", style="bold white on red"),
    "stopped": Text("stopped", style="dim"),
}


class ReleasesTable(KeyedTable):
    def on_mount(self) -> None:
        super().on_mount()
        for label in (
            "Version",
            "Live",
            "Type",
            "Size",
            "SHA-256",
            "Signed",
            "Applied",
            "Created",
        ):
            self.add_column(label, key=label.lower())

    def show(self, snapshot: Snapshot) -> None:
        self.replace_rows([(str(r.id), release_cells(r, snapshot.now)) for r in snapshot.releases])

    def selected_release(self, snapshot: Snapshot | None) -> ArtifactInfo | None:
        key = self.selected_key
        if snapshot is None or key is None:
            return None
        return next((r for r in snapshot.releases if str(r.id) == key), None)


def release_cells(release: ArtifactInfo, now: datetime) -> Cells:
    if release.is_current:
        flag = Text("current", style="bold green")
    elif release.is_previous:
        flag = Text("previous", style="yellow")
    else:
        flag = Text("")
    return (
        fmt.plain(release.release_version, "bold" if release.is_current else ""),
        flag,
        fmt.plain(release.chart_type),
        Text(fmt.human_size(release.size), justify="right"),
        fmt.plain(fmt.short_sha(release.sha256)),
        Text("signed", style="green") if release.signature else Text("no", style="dim"),
        Text(fmt.clock_time(release.applied_at, now)),
        Text(fmt.clock_time(release.created_at, now)),
    )


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


class Overview(Static):
    """The three lines an operator reads first: what is live and queued, whether the agents
    are alive, what is running right now (maintenance mode has its own badge)."""

    def show(
        self, snapshot: Snapshot, installation: str, *, unreachable_for: float | None = None
    ) -> None:
        """``unreachable_for``: seconds since the data was read, when the database has
        stopped answering (the data is stale and says so instead of ages)."""
        state, now = snapshot.installation, snapshot.now
        first = Text.assemble(
            (visible(installation), "bold"),
            ("  live ", "dim"),
            (visible(state.current_version or "none"), "bold green"),
        )
        first.append_text(live_warning_text(state))
        first.append_text(
            Text.assemble(
                ("  pending ", "dim"),
                (str(state.pending_count), "bold yellow" if state.pending_count else ""),
                ("  prev ", "dim"),
                visible(state.previous_version or "none"),
            )
        )
        lines = [first]
        if unreachable_for is not None:
            lines.append(
                Text.assemble(
                    ("STALE DATA", "bold white on red"),
                    f" {fmt.span(unreachable_for)} old, database not answering"
                    f" (as of {fmt.clock_time(now, now)} UTC)",
                    style="bold red",
                )
            )
        else:
            states = [snapshot.agent_state(a) for a in snapshot.agents]
            alive, stale = states.count("alive"), states.count("stale")
            stopped = states.count("stopped")
            agents = Text.assemble(
                ("agents ", "dim"), (f"{alive} alive", "green" if alive else "bold red")
            )
            if stale:
                agents.append(f", {stale} stale", style="bold red")
            if stopped:
                agents.append(f", {stopped} stopped", style="dim")
            if state.last_agent_poll is not None:
                agents.append(f"  last poll {fmt.age(state.last_agent_poll, now)}", style="dim")
            lines.append(agents)
        for running in snapshot.running:
            task = running.task
            line = fmt.plain(f"{task.type} {task.release_version or ''} ", "bold cyan")
            line.append_text(running_info(task, running.step, snapshot))
            line.append(f" · {visible(task.claimed_by or 'unknown agent')}", style="dim")
            lines.append(line)
        if not snapshot.running:
            lines.append(Text("no task running", style="dim"))
        shown = Text("\n").join(lines)
        shown.no_wrap, shown.overflow = True, "ellipsis"  # three lines, however narrow
        self.update(shown)


def live_warning_text(state: InstallationState) -> Text:
    """`` ⚠ half-applied`` after the live version when the latest task was recovered."""
    warning = state.live_warning
    if warning is None:
        return Text("")
    label = "after recovery" if warning.state == "deployed" else warning.state
    return Text(f" ⚠ {visible(label)}", style="bold red" if warning.serious else "yellow")


class MaintenanceBadge(Static):
    """On or off; when on, who switched it on, since when and why."""

    def show(self, state: InstallationState, now: datetime) -> None:
        enabled = state.maintenance
        self.set_class(enabled, "on")
        if not enabled:
            self.update(" maintenance off ")
            return
        owner = state.maintenance_owner or "owner not recorded"
        if owner.startswith("task:"):
            owner = "task " + fmt.short_id(owner[5:])
        text = Text(" MAINTENANCE ON ", style="bold")
        text.append(f"\n{visible(owner)}")
        if state.maintenance_since is not None:
            text.append(f" · since {fmt.clock_time(state.maintenance_since, now)}")
        if state.maintenance_reason:
            text.append(f"\n{visible(state.maintenance_reason)}")
        text.no_wrap, text.overflow = True, "ellipsis"
        self.update(text)


class StatusBar(Static):
    """Connection state: healthy (with the time of the last refresh), or what went wrong
    and when the next attempt is."""

    def show_ok(self, refreshed: datetime, listener_error: str | None) -> None:
        self.remove_class("error")
        text = Text.assemble(("● ", "green"), "connected · refreshed ", fmt.full_time(refreshed))
        if listener_error is None:
            text.append(" · live updates on", style="dim")
        else:
            text.append(" · live updates reconnecting, polling meanwhile", style="yellow")
        self.update(text)

    def show_error(self, error: str, retry_in: float, last_good: datetime | None) -> None:
        """What went wrong, on at most two lines: the retry first, so that a long error
        (a DSN, a driver message) cannot push it off an 80-column screen."""
        self.add_class("error")
        text = Text.assemble("✖ retrying in ", fmt.span(retry_in))
        if last_good is not None:
            text.append(f" · data as of {fmt.full_time(last_good)}")
        text.append(" · ")
        text.append(visible(error))
        self.update(text)
