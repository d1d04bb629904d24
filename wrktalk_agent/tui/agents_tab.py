"""The Agents tab: every agent seen in the last day, alive, stale or stopped."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text

from wrktalk_agent.tui import format as fmt
from wrktalk_agent.tui.table import Cells, KeyedTable

if TYPE_CHECKING:
    from wrktalk_agent.db.models import AgentInstance
    from wrktalk_agent.tui.snapshot import Snapshot


class AgentsTable(KeyedTable):
    COLUMNS = tuple(
        (label, label.lower())
        for label in ("Agent", "State", "Last seen", "Heartbeat", "Task", "Host", "Version")
    )

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
