"""What the outbox holds for notifiers: the one event built per task outcome, stored as
JSON with the outcome and read back by whichever agent delivers it; and the timeline's
one-line summary of what became of its recipients."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from wrktalk_agent.db.models import ArtifactInfo, Task
from wrktalk_agent.interfaces import NotificationEvent, NotificationKind, StepTiming


def build_event(
    *,
    kind: NotificationKind,
    settings_installation: str,
    agent_id: str,
    task: Task,
    outcome: str,
    target: ArtifactInfo | None,
    current: ArtifactInfo | None,
    error: str | None,
    started_at: datetime | None,
    steps: Sequence[StepTiming] = (),
    rollback_error: str | None = None,
    live: str | None = None,
    changes: Sequence[str] = (),
    maintenance: str | None = None,
) -> NotificationEvent:
    """The one builder of what notifiers are told about a task."""
    version = target.release_version if target else task.release_version
    return NotificationEvent(
        kind=kind,
        installation=settings_installation,
        task_id=task.id,
        task_type=task.type,
        outcome="completed" if outcome == "completed" else "failed",
        version=version,
        from_version=current.release_version if current else None,
        to_version=version,
        error=error,
        agent_id=agent_id,
        started_at=started_at,
        finished_at=datetime.now(UTC),
        steps=tuple(steps),
        rollback_error=rollback_error,
        live=live,
        changes=tuple(changes),
        maintenance=maintenance,
    )


def event_json(event: NotificationEvent) -> dict[str, Any]:
    data = asdict(event)
    data["kind"] = event.kind.value
    for key in ("task_id", "notification_id"):
        data[key] = str(data[key]) if data[key] is not None else None
    for key in ("started_at", "finished_at"):
        data[key] = data[key].isoformat() if data[key] is not None else None
    return data


def event_from_json(data: Mapping[str, Any], notification_id: UUID) -> NotificationEvent:
    def when(value: Any) -> datetime | None:
        return datetime.fromisoformat(value) if isinstance(value, str) else None

    try:
        kind = NotificationKind(str(data.get("kind")))
    except ValueError:
        kind = NotificationKind.DEPLOY_FAILED
    return NotificationEvent(
        kind=kind,
        installation=str(data.get("installation") or ""),
        task_id=UUID(str(data["task_id"])),
        task_type=str(data.get("task_type") or ""),
        outcome="completed" if data.get("outcome") == "completed" else "failed",
        version=data.get("version"),
        from_version=data.get("from_version"),
        to_version=data.get("to_version"),
        error=data.get("error"),
        agent_id=str(data.get("agent_id") or ""),
        started_at=when(data.get("started_at")),
        finished_at=when(data.get("finished_at")) or datetime.now(UTC),
        steps=tuple(StepTiming(**s) for s in data.get("steps") or ()),
        rollback_error=data.get("rollback_error"),
        notification_id=notification_id,
        live=data.get("live"),
        changes=tuple(str(line) for line in data.get("changes") or ()),
        maintenance=data.get("maintenance"),
    )


def summarize(name: str, deliveries: Sequence[Mapping[str, Any]]) -> str:
    """One timeline line: ``smtp: 2/3 delivered; retrying: x@y (451 ...)``."""
    if not deliveries:
        return f"warning: {name} had no recipients (no active admins?)"
    ok = sum(1 for d in deliveries if d["ok"])
    line = f"{name}: {ok}/{len(deliveries)} delivered"
    for label, states in (
        ("retrying", {"pending", "sending"}),
        ("failed", {"failed"}),
        ("outcome unknown", {"unknown"}),
        ("no longer recipients", {"dropped"}),
    ):
        named = [
            f"{d['recipient']} ({d['detail']})"
            for d in deliveries
            if not d["ok"] and d.get("state", "failed") in states
        ]
        if named:
            line += f"; {label}: {', '.join(named)}"
    return line
