"""Typed rows of the tables the agent reads.

Rows come from a database that a backend (or a person with psql) writes, possibly on a
schema without the agent's CHECK constraints. By default a task type or task status
outside the known values is a validation error, so the agent can never act on
one by mistake. Readers that only show rows (the CLI, the dashboard) parse inside
:func:`tolerant_rows`: there an unknown value is kept as it is, so one bad row does not
hide all the others, and :meth:`Task.problems` names it. Infinite timestamps arrive from
asyncpg as naive ``datetime.max`` / ``datetime.min``; they are read as UTC so that
comparisons work.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal, get_args
from uuid import UUID

from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from wrktalk_agent.interfaces import Release

TaskType = Literal["deploy", "rollback"]
TaskStatus = Literal["pending", "inProgress", "completed", "failed"]


TASK_TYPES: tuple[str, ...] = get_args(TaskType)
TASK_STATUSES: tuple[str, ...] = get_args(TaskStatus)
#: The statuses operators see: the stored ones plus ``cancelled`` — a pending task that an
#: operator cancelled, stored as ``failed`` (the backend's status set has no "cancelled")
#: with an error starting ``cancelled by ``. Tables, JSON, the dashboard and filters use it.
SHOWN_STATUSES: tuple[str, ...] = (*TASK_STATUSES, "cancelled")
CANCELLED_PREFIX = "cancelled by "


class _Row(BaseModel):
    # defer_build: each row model is built when first used (the dashboard's first screen
    # needs only Task), not when the module is imported
    model_config = ConfigDict(extra="ignore", frozen=True, defer_build=True)

    @field_validator("*", mode="before")
    @classmethod
    def _aware(cls, value: Any) -> Any:
        # 'infinity' / '-infinity' come back naive; every other timestamp is UTC-aware
        if isinstance(value, datetime) and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


_TOLERANT: ContextVar[bool] = ContextVar("wrktalk_tolerant_rows", default=False)


@contextmanager
def tolerant_rows() -> Iterator[None]:
    """Rows parsed in this block keep unknown types and statuses (for display only)."""
    token = _TOLERANT.set(True)
    try:
        yield
    finally:
        _TOLERANT.reset(token)


def _keep_unknown(value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
    """Inside :func:`tolerant_rows`, a value outside the Literal is kept as text instead of
    failing the whole row."""
    try:
        return handler(value)
    except ValueError:
        if isinstance(value, str) and _TOLERANT.get():
            return value
        raise


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

    _tolerant = field_validator("type", "status", mode="wrap")(_keep_unknown)

    @property
    def shown_status(self) -> str:
        """The status as operators see it (see :data:`SHOWN_STATUSES`)."""
        if self.status == "failed" and (self.error_message or "").startswith(CANCELLED_PREFIX):
            return "cancelled"
        return str(self.status)

    def shown_json(self) -> dict[str, Any]:
        """The row as JSON with the shown status (``stored_status``: the column's value)."""
        return {
            **self.model_dump(mode="json"),
            "status": self.shown_status,
            "stored_status": self.status,
        }

    @field_validator("result", mode="before")
    @classmethod
    def _object(cls, value: Any) -> Any:
        # The agent writes an object; a backend may have left anything (the poll fails
        # such a pending row, naming it). Kept for display under "value".
        if value is None or isinstance(value, dict):
            return value
        return {"value": value}

    @field_validator("recovery", mode="before")
    @classmethod
    def _flag(cls, value: Any) -> Any:
        return False if value is None else value

    def problems(self) -> list[str]:
        """What makes this row impossible to process, column and value named (empty: none).

        Only rows parsed inside :func:`tolerant_rows` can have any (see the module
        docstring)."""
        found = []
        if self.type not in TASK_TYPES:
            found.append(f"type {self.type!r} is not one of {', '.join(TASK_TYPES)}")
        if self.status not in TASK_STATUSES:
            found.append(f"status {self.status!r} is not one of {', '.join(TASK_STATUSES)}")
        return found


class ArtifactInfo(_Row):
    """A release without its bytes (``size`` comes from ``octet_length``)."""

    id: UUID
    release_version: str
    #: a release type: whatever text the row holds (installed deployers say which they take)
    chart_type: str
    sha256: str
    size: int = 0
    is_current: bool = False
    is_previous: bool = False
    applied_at: datetime | None = None
    created_at: datetime | None = None
    signature: str | None = None
    has_env: bool = False
    has_values: bool = False

    @field_validator("release_version", "sha256", "chart_type", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return "" if value is None else value  # NOT NULL on our schema, maybe not on theirs

    @field_validator("size", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return 0 if value is None else value  # octet_length(NULL)

    @field_validator("is_current", "is_previous", "has_env", "has_values", mode="before")
    @classmethod
    def _flags(cls, value: Any) -> Any:
        return False if value is None else value  # NOT NULL on our schema, maybe not on theirs

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


class MaintenanceHold(_Row):
    """One reason maintenance is on: ``task:<id>`` (a running task's claim) or
    ``operator:<name>`` (a window an operator opened), why and since when."""

    holder: str
    reason: str | None = None
    since: datetime | None = None

    @property
    def task_id(self) -> UUID | None:
        if self.holder.startswith("task:"):
            try:
                return UUID(self.holder[5:])
            except ValueError:
                return None
        return None

    @property
    def kind(self) -> str:
        return self.holder.partition(":")[0]


class MaintenanceState(_Row):
    """Maintenance as recorded: the flag in ``deployment_config``, the holds that keep it
    on, and since when a switch-off has been failing (the agent retries it)."""

    enabled: bool = False
    holds: list[MaintenanceHold] = []
    off_pending_since: datetime | None = None
    off_error: str | None = None

    @field_validator("holds", mode="before")
    @classmethod
    def _json(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    @property
    def since(self) -> datetime | None:
        times = [h.since for h in self.holds if h.since is not None]
        return min(times) if times else self.off_pending_since

    def held_by(self, holder: str) -> MaintenanceHold | None:
        return next((h for h in self.holds if h.holder == holder), None)


class PollResult(_Row):
    claimed: Task | None = None
    #: a task whose owner's lease ran out, now ours to recover
    taken_over: Task | None = None
    #: pending rows no agent can run, failed by this poll: (task id, error)
    rejected: list[tuple[UUID, str]] = []
    #: seconds until the nearest future ``execute_after``, if any
    next_due_in: float | None = None
    #: seconds until the running task's lease (or a failover's quiet period) ends
    lease_ends_in: float | None = None
