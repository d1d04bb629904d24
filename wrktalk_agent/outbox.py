"""Notifications that are never lost and never sent twice blindly: built once, promised
with the outcome, delivered by any agent, per recipient.

The outcome of a task and the intent to tell the admins are written in one transaction
(one ``agent_notification`` row per notifier). A :class:`Deliverer` beside the agent's main
loop delivers due rows, never holding up the next deploy. Each row is leased to one agent
at a time (a token per claim, renewed while the notifier works; every write presents it),
and each recipient has a state in ``agent_notification_recipient``:

- a notifier with ``deliver(event, attempt)`` (the smtp notifier) says, per recipient,
  when a message is about to go out and how it ended. ``temporary`` failures (refused
  connections, ``4xx``, timeouts before the message was sent) are retried with backoff,
  for those recipients only, until they succeed or ``NOTIFY_GIVE_UP_AFTER`` passes;
  ``permanent`` ones (``5xx``) are recorded and not retried; a send whose outcome is
  ``unknown`` (no answer after the message went out, or its agent was cut off, died or
  froze meanwhile) is repeated once — a recipient gets a message at most twice;
- a notifier with only ``notify(event)`` is one unit: what it returns is final (``ok`` or
  a permanent failure), a raise is retried, and an attempt cut short by
  ``NOTIFY_TIMEOUT`` or a dead agent is repeated once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

import asyncpg
import structlog

from wrktalk_agent import metrics
from wrktalk_agent.contract import NOTIFIER
from wrktalk_agent.db.models import ArtifactInfo, Task
from wrktalk_agent.db.repository import CONNECTION_ERRORS, EventStatus
from wrktalk_agent.guard import bounded, cancel_requested, describe
from wrktalk_agent.interfaces import (
    BackendError,
    Delivery,
    DeliveryAttempt,
    NotificationEvent,
    NotificationKind,
    Notifier,
    StepTiming,
)
from wrktalk_agent.safe_text import visible
from wrktalk_agent.services import Services

#: Recipient of a notifier that reports no per-recipient progress (``notify`` only): the
#: notification as a whole.
WHOLE = "*"
#: Longest recipient detail stored (a server's reply, an error).
_DETAIL_LIMIT = 500
#: Bound of one outbox statement made on a notifier's behalf.
_DB_BOUND = 10.0
#: Recipient states that end a recipient's part (no further sends).
SETTLED = frozenset({"delivered", "failed", "unknown", "dropped"})


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


def per_recipient(notifier: Notifier) -> bool:
    """Whether the notifier reports per recipient (has the optional ``deliver``)."""
    return inspect.iscoroutinefunction(NOTIFIER.optional_method(notifier, "deliver"))


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


class OutboxAttempt(DeliveryAttempt):
    """The core's :class:`DeliveryAttempt`: every send and outcome is written to the
    outbox under the lease, before the notifier goes on."""

    def __init__(
        self,
        repo: Any,
        notification_id: UUID,
        lease_token: UUID,
        lease_seconds: float,
        log: Any,
        skip: frozenset[str] = frozenset(),
        repeats: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(skip, repeats)
        self.repo = repo
        self.notification_id = notification_id
        self.lease_token = lease_token
        self.lease_seconds = lease_seconds
        self.log = log
        #: set when the lease was taken away: nothing more is sent
        self.lost = False
        #: what was recorded per recipient in this attempt: (outcome, detail)
        self.recorded: dict[str, tuple[str, str]] = {}

    async def sending(self, recipient: str) -> bool:
        if self.lost or recipient in self.skip:
            return False
        try:
            async with asyncio.timeout(_DB_BOUND):
                sends = await self.repo.begin_send(
                    self.notification_id, recipient, self.lease_token, self.lease_seconds
                )
        except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            # unrecorded, a send could be repeated without limit: don't send
            self.log.warning("notify.send_unrecorded", recipient=recipient, error=describe(exc))
            return False
        if sends is None:
            self.log.warning(
                "notify.send_withheld",
                recipient=recipient,
                detail="lease lost or this recipient's one repeat is used up",
            )
            return False
        if sends > 1:
            self.log.info("notify.repeat", recipient=recipient, send=sends)
        return True

    async def report(self, delivery: Delivery) -> None:
        key = (delivery.result, delivery.detail)
        if self.recorded.get(delivery.recipient) == key:
            return  # reported already, now returned as well
        try:
            async with asyncio.timeout(_DB_BOUND):
                await self.repo.report_delivery(
                    self.notification_id,
                    self.lease_token,
                    recipient=delivery.recipient,
                    outcome=delivery.result,
                    # server replies are not ours: storable whatever bytes they carried
                    detail=visible(delivery.detail)[:_DETAIL_LIMIT],
                    attempts=max(0, delivery.attempts),
                )
        except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
            # a send left 'sending' counts as an unknown outcome: never more than one repeat
            self.log.warning(
                "notify.outcome_unrecorded", recipient=delivery.recipient, error=describe(exc)
            )
            return
        self.recorded[delivery.recipient] = key


class Deliverer:
    """Delivers the outbox's due notifications; one per agent, beside its main loop."""

    def __init__(self, services: Services, log: Any) -> None:
        self.s = services
        self.repo = services.repo
        self.settings = services.settings
        self.by_name = {n.name: n for n in services.notifiers}
        self.log = log
        self.wake = asyncio.Event()
        #: how long a claim holds without renewal (a dead or frozen deliverer's lapses),
        #: and how often it is renewed while a notifier works
        self.lease_seconds = self.settings.takeover_after_seconds
        self.renew_every = min(self.settings.heartbeat_interval, self.lease_seconds / 3)
        #: loop time of the soonest retry this deliverer scheduled
        self.next_retry = math.inf

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop``; wakes at once on :attr:`wake`, else every poll interval."""
        if not self.by_name:
            return
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            self.wake.clear()
            self.next_retry = math.inf
            try:
                await self.deliver_due()
            except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
                self.log.warning("notify.outbox_unreachable", error=describe(exc))
            # the poll interval finds what other agents left; our own retries are awaited
            # no longer than they need
            wait = min(self.settings.poll_interval, 30.0, self.next_retry - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=max(wait, 0.01))

    async def deliver_due(self) -> int:
        """Deliver what is due now; returns how many notifications were handled."""
        if not self.by_name:
            return 0
        handled = 0
        while True:
            rows = await self.repo.claim_notifications(
                self.settings.agent_id, self.lease_seconds, list(self.by_name), limit=10
            )
            if not rows:
                return handled
            # Notifications of different tasks and notifiers go out side by side.
            await asyncio.gather(*(self._deliver(row) for row in rows))
            handled += len(rows)

    async def _keep_lease(self, attempt: OutboxAttempt, call: asyncio.Task[Any]) -> None:
        """Renew the lease while the notifier works; when it is lost (taken away, or not
        renewable for a whole lease), stop the notifier: another agent may deliver now."""
        loop = asyncio.get_running_loop()
        renewed = loop.time()
        while not call.done():
            await asyncio.sleep(self.renew_every)
            try:
                async with asyncio.timeout(self.renew_every):
                    held = await self.repo.renew_notification(
                        attempt.notification_id, attempt.lease_token, self.lease_seconds
                    )
            except (*CONNECTION_ERRORS, asyncpg.PostgresError) as exc:
                self.log.warning("notify.lease_unrenewed", error=describe(exc))
                held = loop.time() - renewed < self.lease_seconds - self.renew_every
            else:
                renewed = loop.time() if held else renewed
            if not held:
                attempt.lost = True
                self.log.warning("notify.lease_lost", notification_id=str(attempt.notification_id))
                call.cancel()
                return

    async def _deliver(self, row: asyncpg.Record) -> None:
        notifier = self.by_name[row["notifier"]]
        event = event_from_json(row["event"], row["id"])
        log = self.log.bind(task_id=str(event.task_id), notifier=notifier.name)
        loop = asyncio.get_running_loop()
        started = loop.time()
        token: UUID = row["lease_token"]
        attempts = int(row["attempts"])
        itemized = per_recipient(notifier)
        before = {
            r["recipient"]: r for r in await self.repo.notification_recipients(row["id"], token)
        }
        attempt = OutboxAttempt(
            self.repo,
            row["id"],
            token,
            self.lease_seconds,
            log,
            skip=frozenset(k for k, r in before.items() if r["state"] in SETTLED),
            repeats=frozenset(
                k for k, r in before.items() if r["state"] == "pending" and r["unsure"] > 0
            ),
        )
        error: str | None = None
        deliveries: Sequence[Delivery] | None = None
        if not itemized and not await attempt.sending(WHOLE):
            error = "not sent again: an earlier attempt may have delivered it"
        else:
            with structlog.contextvars.bound_contextvars(
                task_id=str(event.task_id), plugin=notifier.name
            ):
                call = asyncio.create_task(
                    bounded(
                        notifier.deliver(event, attempt)  # type: ignore[attr-defined]
                        if itemized
                        else notifier.notify(event),
                        self.settings.notify_timeout,
                        f"notifier {notifier.name!r}",
                    ),
                    name=f"notify-{notifier.name}",
                )
            keeper = asyncio.create_task(self._keep_lease(attempt, call), name="notify-lease")
            try:
                deliveries = await call
            except asyncio.CancelledError:
                if cancel_requested() or not attempt.lost:
                    call.cancel()
                    await self._interrupted(row["id"], token, log)
                    raise
                error = "stopped: the lease was lost, another agent delivers the rest"
            except BackendError as exc:
                error = str(exc)
            finally:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
            cut_off = loop.time() - started >= self.settings.notify_timeout
            if not itemized and error is not None and not cut_off and not attempt.lost:
                # notify() raised: it is tried again. One that was cut off may have
                # delivered: its send stays unanswered, an unknown outcome (one repeat).
                await attempt.report(Delivery.of(WHOLE, "temporary", error, 0))
        for delivery in deliveries or ():
            await attempt.report(delivery)
        if not itemized and deliveries is not None:
            await attempt.report(Delivery.of(WHOLE, "delivered", "the notifier returned", 0))
        mentioned = set(attempt.recorded) | {d.recipient for d in deliveries or ()}
        dropped = (
            [k for k, r in before.items() if r["state"] == "pending" and k not in mentioned]
            if itemized and deliveries is not None
            else []
        )
        remaining = self.settings.notify_give_up_after - float(row["age"]) - (loop.time() - started)
        give_up = remaining <= 0
        states = await self.repo.settle_attempt(row["id"], token, dropped=dropped, give_up=give_up)
        if states is None:
            log.warning("notify.taken_away", detail="another agent holds this notification now")
            return
        recorded = [
            {
                "recipient": r["recipient"],
                "ok": r["state"] == "delivered",
                "state": r["state"],
                "detail": r["detail"],
                "attempts": r["attempts"],
                "sends": r["sends"],
            }
            for r in states
            if not (r["recipient"] == WHOLE and r["state"] == "delivered")
        ]
        whole = next((r["state"] for r in states if r["recipient"] == WHOLE), None)
        waiting = any(r["state"] == "pending" for r in states)
        if itemized:
            again = waiting or error is not None
        else:
            again = whole == "pending"
        if error is not None and not recorded:
            recorded = [{"recipient": WHOLE, "ok": False, "state": "pending", "detail": error,
                         "attempts": attempts, "sends": 0}]  # fmt: skip
        if again and not give_up:
            delay = min(
                self.settings.notify_retry_max,
                self.settings.notify_retry_min * 2 ** min(attempts - 1, 30),
                max(remaining, 0.0),
            )
            self.next_retry = min(self.next_retry, loop.time() + delay)
            metrics.NOTIFICATIONS.labels(
                notifier=notifier.name, result="error" if error else "retry"
            ).inc()
            summary = summarize(notifier.name, recorded)
            await self.repo.finish_notification(
                row["id"], token, status="pending", deliveries=recorded, retry_in=delay,
                # the first attempt says so in the timeline; later ones only in the log
                timeline=("info", f"{summary}; retrying (attempt 1)", self.settings.agent_id)
                if attempts == 1 else None,
            )  # fmt: skip
            log.warning(
                "notify.retrying", attempt=attempts, retry_in=round(delay, 3),
                summary=summary, error=error,
            )  # fmt: skip
            return
        ok = not again and all(r["state"] in ("delivered", "dropped") for r in states)
        status: Literal["delivered", "failed"] = "delivered" if ok else "failed"
        if error is not None and give_up:
            recorded = [
                {**d, "state": "failed", "detail": f"gave up at the deadline; last: {error}"}
                if d["state"] == "pending" else d
                for d in recorded
            ]  # fmt: skip
        summary = summarize(notifier.name, recorded)
        line: tuple[EventStatus, str, str] = (
            ("info", summary, self.settings.agent_id)
            if ok
            else ("failed", f"notification failed: {summary}", self.settings.agent_id)
        )
        await self.repo.finish_notification(
            row["id"], token, status=status, deliveries=recorded, timeline=line
        )
        metrics.NOTIFICATIONS.labels(notifier=notifier.name, result=status).inc()
        if ok:
            log.info("notify.delivered", summary=summary, attempt=attempts)
        else:
            metrics.NOTIFICATIONS_FAILED.labels(notifier=notifier.name).inc()
            log.error("notify.failed", summary=summary, attempt=attempts)

    async def _interrupted(self, notification_id: UUID, token: UUID, log: Any) -> None:
        """The agent is stopping: give the notification back (a send that was under way
        counts as an unknown outcome) for another agent or our restart."""
        log.warning("notify.interrupted", detail="stopping; delivery will be retried")

        async def give_back() -> None:
            states = await self.repo.settle_attempt(notification_id, token)
            if states is None:
                return
            recorded = [
                {"recipient": r["recipient"], "ok": r["state"] == "delivered",
                 "state": r["state"], "detail": r["detail"], "attempts": r["attempts"],
                 "sends": r["sends"]}
                for r in states
            ] or [{"recipient": WHOLE, "ok": False, "state": "pending",
                   "detail": "interrupted", "attempts": 0, "sends": 0}]  # fmt: skip
            await self.repo.finish_notification(
                notification_id, token, status="pending", deliveries=recorded, retry_in=0.0
            )

        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(give_back()), 2)
