"""The main screen's widgets. They only display what they are given: no database here.

Each tab's table lives in a module of its own (:mod:`.tasks_tab`, :mod:`.agents_tab`,
:mod:`.releases_tab`); their names are importable from here too.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from rich.text import Text
from textual.screen import Screen
from textual.widgets import Footer, Static

from wrktalk_agent.safe_text import visible
from wrktalk_agent.tui import format as fmt
from wrktalk_agent.tui.agents_tab import AGENT_STATE_TEXT, AgentsTable, agent_cells
from wrktalk_agent.tui.releases_tab import ReleasesTable, release_cells
from wrktalk_agent.tui.table import Cells, KeyedTable
from wrktalk_agent.tui.tasks_tab import (
    SORTS,
    FilterBar,
    OutputPane,
    TasksTable,
    empty_text,
    running_info,
    shown_tasks,
    task_cells,
    task_matches,
)

if TYPE_CHECKING:
    from wrktalk_agent.tui.snapshot import InstallationState, Snapshot

__all__ = [
    "AGENT_STATE_TEXT",
    "SORTS",
    "AgentsTable",
    "Cells",
    "DashboardFooter",
    "FilterBar",
    "KeyedTable",
    "MaintenanceBadge",
    "OutputPane",
    "Overview",
    "ReleasesTable",
    "StatusBar",
    "TasksTable",
    "agent_cells",
    "empty_text",
    "live_warning_text",
    "release_cells",
    "running_info",
    "shown_tasks",
    "task_cells",
    "task_matches",
]


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


class DashboardFooter(Footer):
    """The footer, rebuilt once however many times the keys change before the next
    refresh: the first screen changes them several times (focus, the tab, the selected
    row) and each rebuild restyles every key. The keys shown are those of the moment of
    the rebuild, so none is missed."""

    _rebuild_pending = False

    def bindings_changed(self, screen: Screen[object]) -> None:
        if self._rebuild_pending:
            return
        super().bindings_changed(screen)  # schedules the rebuild, after the next refresh
        self._rebuild_pending = (
            self._bindings_ready
            and self.is_attached
            and screen is self.screen
            and screen.app.app_focus
        )

    async def recompose(self) -> None:
        self._rebuild_pending = False
        await super().recompose()
