"""Notifications that are never lost: built once, promised with the outcome, delivered by
any agent.

The outcome of a task and the intent to tell the admins are written in one transaction
(one ``agent_notification`` row per notifier). A :class:`Deliverer` beside the agent's main
loop delivers due rows: each locked for a bounded time, delivered within
``NOTIFY_TIMEOUT``, and retried with backoff when the notifier raised, hung or the agent
stopped midway — never holding up the next deploy. A notifier that returned has delivered
what it could (its per-recipient failures are recorded, not retried, so nobody gets the
same mail twice because a colleague's address bounced).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import structlog

from wrktalk_agent import metrics
from wrktalk_agent.db.models import ArtifactInfo, Task
from wrktalk_agent.db.repository import CONNECTION_ERRORS
from wrktalk_agent.guard import bounded, describe
from wrktalk_agent.interfaces import (
    BackendError,
    NotificationEvent,
    NotificationKind,
    Notifier,
    StepTiming,
)
from wrktalk_agent.services import Services

#: Delivery attempts of one notification before it is given up as failed.
MAX_ATTEMPTS = 6
#: Seconds before the n-th retry (capped).
RETRY_BASE, RETRY_CAP = 5.0, 300.0


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


def notifier_names(notifiers: Sequence[Notifier]) -> list[str]:
    return list(dict.fromkeys(n.name for n in notifiers))


def summarize(name: str, deliveries: Sequence[Mapping[str, Any]]) -> str:
    """One timeline line: ``smtp: 2/3 delivered; failed: x@y (550 ...)``."""
    if not deliveries:
        return f"warning: {name} had no recipients (no active admins?)"
    ok = sum(1 for d in deliveries if d["ok"])
    failed = [f"{d['recipient']} ({d['detail']})" for d in deliveries if not d["ok"]]
    return f"{name}: {ok}/{len(deliveries)} delivered" + (
        f"; failed: {', '.join(failed)}" if failed else ""
    )


class Deliverer:
    """Delivers the outbox's due notifications; one per agent, beside its main loop."""

    def __init__(self, services: Services, log: Any) -> None:
        self.s = services
        self.repo = services.repo
        self.settings = services.settings
        self.by_name = {n.name: n for n in services.notifiers}
        self.log = log
        self.wake = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop``; wakes at once on :attr:`wake`, else every poll interval."""
        if not self.by_name:
            return
        while not stop.is_set():
            self.wake.clear()
            try:
                await self.deliver_due()
            except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
                self.log.warning("notify.outbox_unreachable", error=describe(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self.wake.wait(), timeout=min(self.settings.poll_interval, 30.0)
                )

    async def deliver_due(self) -> int:
        """Deliver what is due now; returns how many notifications were handled."""
        if not self.by_name:
            return 0
        handled = 0
        while True:
            rows = await self.repo.claim_notifications(
                self.settings.agent_id,
                # a dead deliverer's lock outlives its cut-off, then lapses
                self.settings.notify_timeout * 1.5 + 5.0,
                list(self.by_name),
                limit=10,
            )
            if not rows:
                return handled
            # Notifications of different tasks and notifiers go out side by side.
            await asyncio.gather(*(self._deliver(row) for row in rows))
            handled += len(rows)

    async def _deliver(self, row: asyncpg.Record) -> None:
        notifier = self.by_name[row["notifier"]]
        event = event_from_json(row["event"], row["id"])
        log = self.log.bind(task_id=str(event.task_id), notifier=notifier.name)
        attempts = int(row["attempts"])
        try:
            with structlog.contextvars.bound_contextvars(
                task_id=str(event.task_id), plugin=notifier.name
            ):
                deliveries = await bounded(
                    notifier.notify(event),
                    self.settings.notify_timeout,
                    f"notifier {notifier.name!r}",
                )
        except asyncio.CancelledError:
            # The agent is stopping: give the row back for another agent or our restart.
            log.warning("notify.interrupted", detail="stopping; delivery will be retried")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    asyncio.shield(self._release(row["id"], attempts, "interrupted", now=True)),
                    2,
                )
            raise
        except BackendError as exc:
            metrics.NOTIFICATIONS.labels(notifier=notifier.name, result="error").inc()
            log.error("notify.failed", error=str(exc), attempt=attempts)
            await self._release(row["id"], attempts, str(exc))
            then = "given up" if attempts >= MAX_ATTEMPTS else "retried with backoff"
            with contextlib.suppress(*CONNECTION_ERRORS, asyncpg.PostgresError):
                await self.repo.add_event(
                    event.task_id, "notify", "failed",
                    f"{notifier.name}: attempt {attempts} failed: {exc}; {then}",
                    self.settings.agent_id,
                )  # fmt: skip
            return
        recorded = [
            {"recipient": d.recipient, "ok": d.ok, "detail": d.detail, "attempts": d.attempts}
            for d in deliveries
        ]
        metrics.NOTIFICATIONS.labels(notifier=notifier.name, result="delivered").inc()
        await self.repo.finish_notification(
            row["id"], self.settings.agent_id, status="delivered", deliveries=recorded
        )
        with contextlib.suppress(*CONNECTION_ERRORS, asyncpg.PostgresError):
            await self.repo.add_event(
                event.task_id, "notify", "info", summarize(notifier.name, recorded),
                self.settings.agent_id,
            )  # fmt: skip
        log.info("notify.delivered", summary=summarize(notifier.name, recorded))

    async def _release(
        self, notification_id: UUID, attempts: int, why: str, *, now: bool = False
    ) -> None:
        failed = attempts >= MAX_ATTEMPTS and not now
        await self.repo.finish_notification(
            notification_id,
            self.settings.agent_id,
            status="failed" if failed else "pending",
            deliveries=[{"recipient": "*", "ok": False, "detail": why, "attempts": attempts}],
            retry_in=0.0 if now else min(RETRY_CAP, RETRY_BASE * 2 ** (attempts - 1)),
        )
