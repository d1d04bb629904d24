"""How a task ends: the verdict of its steps and the one transaction that writes it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import asyncpg
from tenacity import AsyncRetrying, retry_if_exception, wait_exponential_jitter

from wrktalk_agent import outbox
from wrktalk_agent.db.models import Task
from wrktalk_agent.db.repository import FlagChange, Repository
from wrktalk_agent.guard import describe
from wrktalk_agent.interfaces import NotificationEvent, NotificationKind
from wrktalk_agent.pipeline.timeline import DB_ERRORS, Timeline
from wrktalk_agent.safe_text import storable, storable_value
from wrktalk_agent.services import Services


class TaskOutcome(StrEnum):
    """How a task run ended, as far as this agent is concerned."""

    COMPLETED = "completed"
    FAILED = "failed"
    #: the outcome write found the task no longer ours (taken over): nothing written
    TAKEN_AWAY = "taken away"
    #: the lease was lost: the deploy was stopped and nothing written
    FENCED = "fenced"


@dataclass
class Verdict:
    """What the steps concluded, before it is written."""

    status: Literal["completed", "failed"]
    error: str | None = None
    kind: NotificationKind | None = None
    rollback_error: str | None = None
    #: the deploy's own cause when ``error`` names the rollback's too
    deploy_error: str | None = None


#: Joins the two causes of a failed deploy whose automatic rollback failed as well.
ROLLBACK_FAILED_TOO = "; automatic rollback to {version} failed too: "


def both_causes(deploy_error: str, version: str, rollback_error: str) -> str:
    """One line naming why the deploy failed and why the rollback to ``version`` did."""
    deploy = " ".join(deploy_error.split())
    rollback = " ".join(rollback_error.split())
    return deploy + ROLLBACK_FAILED_TOO.format(version=version) + rollback


def kind_for(task_type: str, status: str) -> NotificationKind:
    """What a finished task tells the admins, by its type and status."""
    if task_type == "rollback":
        return (
            NotificationKind.ROLLBACK_SUCCEEDED
            if status == "completed"
            else NotificationKind.ROLLBACK_FAILED
        )
    return (
        NotificationKind.DEPLOY_SUCCEEDED
        if status == "completed"
        else NotificationKind.DEPLOY_FAILED
    )


def db_retrying(log: Any, what: str, repo: Repository) -> AsyncRetrying:
    """Retry a database write with exponential backoff and jitter until it succeeds (an
    outage ends some day); not once the agent has closed its own pool."""

    def before_sleep(state: Any) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(f"{what}.retrying", attempt=state.attempt_number, error=describe(exc))

    def outage(exc: BaseException) -> bool:
        return isinstance(exc, DB_ERRORS) and not repo.closed

    return AsyncRetrying(
        retry=retry_if_exception(outage),
        wait=wait_exponential_jitter(multiplier=0.2, max=15.0, jitter=0.5),
        before_sleep=before_sleep,
        reraise=True,
    )


async def write_outcome(
    services: Services,
    task: Task,
    timeline: Timeline,
    *,
    status: Literal["completed", "failed"],
    result: dict[str, Any],
    error: str | None,
    flags: FlagChange | None,
    event: NotificationEvent,
) -> Literal["completed", "failed"] | None:
    """The one transaction that ends a task, retried through outages; only while
    ``task``'s claim still owns it. Returns the status written (None: taken away,
    nothing written).

    Everything written is made storable first (:func:`wrktalk_agent.safe_text.storable`),
    so no output, error or detail can make the database refuse it. When it refuses all
    the same (a constraint, a trigger, a missing privilege: retrying cannot help) the task
    still ends, in ever smaller writes that keep the verdict and record what was dropped
    (``result.dropped``): without the timeline entries (their table may be what is
    refused); then with only the verdict in the result and a plain-ASCII error; then
    failed, saying what was refused, without the flag change; then also without the
    notification. Only a refusal of the task row itself leaves it to the lease."""
    log = timeline.log
    assert task.claim_token is not None
    names = outbox.notifier_names(services.notifiers)
    result_now = storable_value(result)
    error_now = storable(error) if error is not None else None
    event_now = storable_value(outbox.event_json(event))
    flags_now, status_now, notify = flags, status, True
    dropped: list[str] = []
    for degraded in range(5):
        try:
            async for attempt in db_retrying(log, "outcome", services.repo):
                with attempt:
                    row = await services.repo.finish_task(
                        task.id,
                        task.claim_token,
                        status=status_now,
                        result=result_now,
                        error=error_now,
                        flags=flags_now,
                        events=list(timeline.unsaved),
                        agent_id=services.settings.agent_id,
                        notifications=(names, event_now) if notify else None,
                    )
        except _REFUSED as exc:
            if degraded == 4:
                raise
            refused = storable(describe(exc), limit=1000)
            log.error("outcome.refused", error=refused, outcome=status_now, degraded=degraded)
            if degraded == 0:
                dropped.append(f"{len(timeline.unsaved)} timeline entries")
                timeline.unsaved.clear()
            elif degraded == 1:
                dropped.append("the task result (outputs, steps, details)")
                error_now = _plain(error_now)
                event_now = storable_value(
                    outbox.event_json(dataclasses.replace(event, error=error_now, steps=()))
                )
                result_now = {"agent_id": services.settings.agent_id, "outcome": status_now}
                if error_now:
                    result_now["error"] = error_now
            elif degraded == 2:
                dropped.append("the release flag change")
                flags_now, status_now = None, "failed"
                error_now = _plain(f"the database refused the outcome ({status}): {refused}")
                event_now = storable_value(
                    outbox.event_json(
                        dataclasses.replace(event, outcome="failed", error=error_now, steps=())
                    )
                )
                result_now = {**result_now, "outcome": "failed", "error": error_now}
            else:
                dropped.append("the notification")
                notify = False
            result_now = {**result_now, "dropped": list(dropped), "refused": refused}
            continue
        if row is None:
            return None
        timeline.unsaved.clear()
        if dropped:
            log.warning("outcome.degraded", outcome=status_now, dropped=dropped)
        return status_now
    return None


#: What makes a write fail for its content or a constraint (not an outage): asyncpg
#: reports arguments it cannot encode as DataError, a PostgresError like the server's.
_REFUSED: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    ValueError,
    TypeError,
    RecursionError,
)


def _plain(text: str | None) -> str | None:
    """``text`` in plain ASCII, bounded: what any database takes."""
    if text is None:
        return None
    return storable(text.encode("ascii", "backslashreplace").decode("ascii"), limit=2000)
