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
from collections.abc import Sequence
from typing import Any, Literal
from uuid import UUID

import asyncpg
import structlog

from wrktalk_agent import metrics
from wrktalk_agent.contract import NOTIFIER
from wrktalk_agent.db.repository import CONNECTION_ERRORS, EventStatus
from wrktalk_agent.guard import bounded, cancel_requested, describe
from wrktalk_agent.interfaces import BackendError, Delivery, Notifier
from wrktalk_agent.outbox_attempt import OutboxAttempt
from wrktalk_agent.outbox_events import build_event, event_from_json, event_json, summarize
from wrktalk_agent.services import Services

__all__ = [
    "SETTLED",
    "WHOLE",
    "Deliverer",
    "OutboxAttempt",
    "build_event",
    "event_from_json",
    "event_json",
    "notifier_names",
    "per_recipient",
    "summarize",
]

#: Recipient of a notifier that reports no per-recipient progress (``notify`` only): the
#: notification as a whole.
WHOLE = "*"
#: Recipient states that end a recipient's part (no further sends).
SETTLED = frozenset({"delivered", "failed", "unknown", "dropped"})


def notifier_names(notifiers: Sequence[Notifier]) -> list[str]:
    return list(dict.fromkeys(n.name for n in notifiers))


def per_recipient(notifier: Notifier) -> bool:
    """Whether the notifier reports per recipient (has the optional ``deliver``)."""
    return inspect.iscoroutinefunction(NOTIFIER.optional_method(notifier, "deliver"))


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
