"""What the dashboard shows, as plain values: a refresh's snapshot, a task's detail and
the filters they were read with. :mod:`.data` reads them from the database."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import Literal
from uuid import UUID

from wrktalk_agent.db.models import AgentInstance, ArtifactInfo, Task, TaskEvent

Clock = Callable[[], datetime]
TaskTypeFilter = Literal["deploy", "rollback"]


@dataclass(frozen=True)
class Filters:
    #: one of models.SHOWN_STATUSES (``cancelled`` included)
    status: str | None = None
    task_type: TaskTypeFilter | None = None


@dataclass(frozen=True)
class LiveWarning:
    """What the latest finished task found live after a recovery (an agent died or lost
    its lease mid-task): the live version is not simply the one the flags say."""

    task_id: UUID
    version: str | None
    state: str
    detail: str
    next_step: str | None

    @property
    def serious(self) -> bool:
        return self.state != "deployed" or self.next_step is not None


@dataclass(frozen=True)
class InstallationState:
    """What is live and what is queued."""

    maintenance: bool
    last_agent_poll: datetime | None
    current_id: UUID | None
    current_version: str | None
    previous_id: UUID | None
    previous_version: str | None
    pending_count: int
    #: pending tasks due now: a new task runs after them (and after a running one)
    due_count: int = 0
    maintenance_owner: str | None = None
    maintenance_reason: str | None = None
    maintenance_since: datetime | None = None
    live_warning: LiveWarning | None = None


class AgentState(AgentInstance):
    """An agent row with the liveness it records: ``last_seen`` (polls and lease
    heartbeats) and ``stopped_at`` (a clean stop)."""

    last_seen: datetime | None = None
    stopped_at: datetime | None = None
    #: the agent's own lease as it recorded it (None: an agent too old to record one)
    lease_seconds: float | None = None
    #: the task it was running has been taken over by another agent: it is gone
    task_taken_over: bool = False


@dataclass(frozen=True)
class OutputLine:
    at: datetime
    step: str
    text: str


@dataclass(frozen=True)
class Running:
    """A task in progress and its latest timeline entry (the step it is in)."""

    task: Task
    step: TaskEvent | None


@dataclass(frozen=True)
class Snapshot:
    """Everything the main screen shows, read in one refresh."""

    #: the instant ages are measured from: the database's clock, so that a laptop with a
    #: wrong clock does not call a healthy agent stale (tests inject a fixed one)
    now: datetime
    filters: Filters
    installation: InstallationState
    tasks: list[Task]
    running: list[Running]
    agents: list[AgentState]
    releases: list[ArtifactInfo]
    stale_after: float
    #: the newest output lines of the running task (the first, if several run)
    output: list[OutputLine] = dataclasses.field(default_factory=list)

    @cached_property
    def step_of(self) -> dict[UUID, TaskEvent]:
        """The current step of each running task."""
        return {r.task.id: r.step for r in self.running if r.step is not None}

    def agent_last_seen(self, agent: AgentInstance) -> datetime:
        """An agent busy with a deploy stops polling but keeps heartbeating its task."""
        seen = [agent.last_poll, agent.last_heartbeat, getattr(agent, "last_seen", None)]
        return max(moment for moment in seen if moment is not None)

    def agent_state(self, agent: AgentInstance) -> Literal["alive", "stale", "stopped"]:
        """``stopped`` after a clean stop (until it polls again), ``stale`` when it has
        not been seen for the stale period, ``alive`` otherwise."""
        stopped_at = getattr(agent, "stopped_at", None)
        if stopped_at is not None and agent.current_task_id is None:
            return "stopped"
        if getattr(agent, "task_taken_over", False):
            return "stale"
        if fmt_is_stale(self.agent_last_seen(agent), self.now, self.agent_stale_after(agent)):
            return "stale"
        return "alive"

    def agent_stale_after(self, agent: AgentInstance) -> float:
        """The agent's own lease, as it recorded it; the dashboard's setting otherwise."""
        recorded = getattr(agent, "lease_seconds", None)
        return float(recorded) if recorded else self.stale_after


@dataclass(frozen=True)
class TaskDetail:
    now: datetime
    task: Task
    events: list[TaskEvent]

    @cached_property
    def steps(self) -> list[TaskEvent]:
        """The timeline without the lines of output."""
        from wrktalk_agent.live_output import is_output  # with processes: not at first paint

        return [e for e in self.events if not is_output(e.message)]

    @cached_property
    def output(self) -> list[OutputLine]:
        from wrktalk_agent.live_output import is_output, output_text

        return [
            OutputLine(e.created_at, e.step, output_text(e.message))
            for e in self.events
            if is_output(e.message)
        ]


def fmt_is_stale(moment: datetime | None, now: datetime, stale_after: float) -> bool:
    return moment is None or now - moment > timedelta(seconds=stale_after)
