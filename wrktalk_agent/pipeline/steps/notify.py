"""Notify: what the admins are told about a task, promised with its outcome (the outbox
delivers it, :mod:`wrktalk_agent.outbox`)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from wrktalk_agent import outbox
from wrktalk_agent.db.models import ArtifactInfo
from wrktalk_agent.interfaces import NotificationEvent, NotificationKind, StepTiming
from wrktalk_agent.pipeline.lease_run import LeasedTask


def notification(
    leased: LeasedTask,
    *,
    kind: NotificationKind,
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
    """The notification of ``leased``'s task, from this agent of this installation."""
    return outbox.build_event(
        kind=kind,
        settings_installation=leased.settings.installation_name,
        agent_id=leased.agent_id,
        task=leased.task,
        outcome=outcome,
        target=target,
        current=current,
        error=error,
        started_at=started_at,
        steps=steps,
        rollback_error=rollback_error,
        live=live,
        changes=changes,
        maintenance=maintenance,
    )
