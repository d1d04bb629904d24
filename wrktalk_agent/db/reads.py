"""Read-only questions of the metrics endpoint and the operator dashboard
(``wrktalk-agent tui``), asked every few seconds. Statements:
:mod:`wrktalk_agent.db.queries.reads`."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from uuid import UUID

from wrktalk_agent.db.base import RepositoryBase
from wrktalk_agent.db.models import AgentInstance, ArtifactInfo, Task, TaskEvent
from wrktalk_agent.db.queries import reads as q


class ReadsMixin(RepositoryBase):
    """What the metrics and the dashboard read."""

    async def metrics_snapshot(self) -> dict[str, Any]:
        """Pending tasks and the live release (version, chart type), one cheap statement."""
        row = await self.pool.fetchrow(q.METRICS_REFRESH)
        return dict(row) if row is not None else {}

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
