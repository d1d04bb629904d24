"""Typed rows of the tables the agent reads."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from wrktalk_agent.interfaces import Release

TaskType = Literal["deploy", "rollback"]
TaskStatus = Literal["pending", "inProgress", "completed", "failed"]


class _Row(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class Task(_Row):
    id: UUID
    type: TaskType
    status: TaskStatus
    release_artifact_id: UUID | None = None
    execute_after: datetime | None = None
    picked_up_at: datetime | None = None
    completed_at: datetime | None = None
    last_heartbeat: datetime | None = None
    result: dict[str, Any] | None = None
    error_message: str | None = None
    created_at: datetime | None = None
    claimed_by: str | None = None
    claim_token: UUID | None = None
    lease_seconds: float | None = None
    #: taken over after its agent stopped heartbeating: being recovered
    recovery: bool = False
    release_version: str | None = None


class ArtifactInfo(_Row):
    """A release without its bytes (``size`` comes from ``octet_length``)."""

    id: UUID
    release_version: str
    chart_type: Literal["helm", "compose"]
    sha256: str
    size: int = 0
    is_current: bool = False
    is_previous: bool = False
    applied_at: datetime | None = None
    created_at: datetime | None = None
    signature: str | None = None
    has_env: bool = False
    has_values: bool = False

    def as_release(self) -> Release:
        return Release(
            id=self.id, version=self.release_version, chart_type=self.chart_type, sha256=self.sha256
        )


class TaskEvent(_Row):
    id: int
    task_id: UUID
    created_at: datetime
    step: str
    status: str
    message: str
    agent_id: str | None = None


class AgentInstance(_Row):
    agent_id: str
    hostname: str
    pid: int
    version: str
    started_at: datetime
    last_poll: datetime
    current_task_id: UUID | None = None
    last_heartbeat: datetime | None = None


class MaintenanceState(_Row):
    """Maintenance as recorded in ``deployment_config``: on or off, and who switched it
    on (``task:<id>`` or ``operator:<name>``), why and since when."""

    enabled: bool = False
    owner: str | None = None
    reason: str | None = None
    since: datetime | None = None

    @property
    def owner_task(self) -> UUID | None:
        if self.owner and self.owner.startswith("task:"):
            try:
                return UUID(self.owner[5:])
            except ValueError:
                return None
        return None


class PollResult(_Row):
    claimed: Task | None = None
    #: a task whose owner's lease ran out, now ours to recover
    taken_over: Task | None = None
    #: pending rows no agent can run, failed by this poll: (task id, error)
    rejected: list[tuple[UUID, str]] = []
    #: seconds until the nearest future ``execute_after``, if any
    next_due_in: float | None = None
