"""What notifiers are told about a task and what they answer: the event, one delivery per
recipient, and an attempt's per-recipient bookkeeping. Public through
:mod:`wrktalk_agent.interfaces`: plugins import them from there."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Literal
from uuid import UUID


class NotificationKind(StrEnum):
    DEPLOY_SUCCEEDED = "deploy_succeeded"
    DEPLOY_FAILED = "deploy_failed"
    ROLLBACK_SUCCEEDED = "rollback_succeeded"
    ROLLBACK_FAILED = "rollback_failed"
    TASK_ABANDONED = "task_abandoned"
    AUTO_ROLLBACK = "auto_rollback"
    #: a row no agent can run (unknown type, an impossible due time): failed unrun
    TASK_REJECTED = "task_rejected"


@dataclass(frozen=True)
class StepTiming:
    step: str
    seconds: float
    ok: bool


@dataclass(frozen=True)
class NotificationEvent:
    """The outcome of one task, as told to notifiers. Contains no secrets.

    ``from_version``/``to_version``: the release live before the task and the one it
    aimed at. For ``AUTO_ROLLBACK``, ``error`` is the deploy failure and
    ``rollback_error`` the rollback's (``None`` when the rollback succeeded).
    """

    kind: NotificationKind
    installation: str
    task_id: UUID
    task_type: str
    outcome: Literal["completed", "failed"]
    version: str | None
    from_version: str | None
    to_version: str | None
    error: str | None
    agent_id: str
    started_at: datetime | None
    finished_at: datetime
    steps: tuple[StepTiming, ...] = ()
    rollback_error: str | None = None
    #: stable id of this notification: the same on every delivery attempt (a notifier
    #: derives message ids from it so that a repeated delivery is recognisable)
    notification_id: UUID | None = None
    #: what the target was found running after its agent died (TASK_ABANDONED)
    live: str | None = None
    #: what the task changes (or changed): services, resources, images, ports, from the
    #: deployer's comparison of the live release with the target (may be empty)
    changes: tuple[str, ...] = ()
    #: maintenance mode stayed on after the task (a switch-off failed): for how long and
    #: why, or that it is still on and retried
    maintenance: str | None = None


#: What became of one recipient of a notification:
#:
#: - ``delivered``: accepted (SMTP: ``250`` after the message);
#: - ``temporary``: not delivered, worth trying again (a refused or lost connection, a
#:   ``4xx`` reply, a timeout before the message was sent, a configuration to fix);
#: - ``permanent``: will not be delivered (``5xx``, a malformed address): never retried;
#: - ``unknown``: the message went out but no answer came (a timeout or a dropped
#:   connection after SMTP ``DATA``): it may have arrived. The core repeats it at most
#:   once to that recipient.
DeliveryOutcome = Literal["delivered", "temporary", "permanent", "unknown"]


@dataclass(frozen=True)
class Delivery:
    """The outcome of sending to one recipient (or one channel). ``attempts`` is 0 when
    nothing was tried (a configuration problem, explained in ``detail``).

    ``outcome`` says what the core may do next (see :data:`DeliveryOutcome`); without
    it (notifiers written before it existed) ``ok`` decides: delivered, or a permanent
    failure that is recorded and not retried."""

    recipient: str
    ok: bool
    detail: str = ""
    attempts: int = 1
    outcome: DeliveryOutcome | None = None

    def __post_init__(self) -> None:
        if self.outcome is not None and (self.outcome == "delivered") != self.ok:
            raise ValueError(
                f"Delivery for {self.recipient!r}: ok={self.ok} contradicts "
                f"outcome={self.outcome!r} (ok is true exactly when delivered)"
            )

    @classmethod
    def of(
        cls, recipient: str, outcome: DeliveryOutcome, detail: str = "", attempts: int = 1
    ) -> Delivery:
        """A delivery with an explicit outcome (``ok`` follows from it)."""
        return cls(recipient, outcome == "delivered", detail, attempts, outcome)

    @property
    def result(self) -> DeliveryOutcome:
        """``outcome``, or what ``ok`` means when a notifier gave none."""
        if self.outcome is not None:
            return self.outcome
        return "delivered" if self.ok else "permanent"


Deliveries = Sequence[Delivery]


class DeliveryAttempt:
    """One attempt at delivering a notification, handed to a notifier's optional
    ``deliver(event, attempt)``.

    ``skip``: recipients settled by an earlier attempt (delivered, refused for good, or
    sent twice without an answer): send nothing to them. ``repeats``: recipients whose
    earlier message may or may not have arrived (an ``unknown`` outcome); this attempt is
    their one repeat. Recipients are the strings a notifier puts in
    :attr:`Delivery.recipient` (the smtp notifier: the admin's address).

    The core's own attempt records every call in the outbox; this base class, used when
    a notifier is called outside the outbox (``notify``, tests), allows everything.
    """

    def __init__(
        self, skip: frozenset[str] = frozenset(), repeats: frozenset[str] = frozenset()
    ) -> None:
        self.skip = skip
        self.repeats = repeats

    async def sending(self, recipient: str) -> bool:
        """Call right before the point of no return for ``recipient`` — the moment after
        which a failure leaves the outcome unknown (SMTP: before ``DATA``). ``False``:
        do not send (the notification was handed to another agent, or the recipient's one
        repeat is used up) and report the recipient as ``temporary``. Never raises."""
        return recipient not in self.skip

    async def report(self, delivery: Delivery) -> None:
        """Tell the core one recipient's outcome as soon as it is known, so that an
        attempt cut short (a timeout, the agent stopping) keeps what it achieved. Report
        each transmission's outcome before trying the same recipient again. Returning the
        same delivery from ``deliver`` as well is fine. Never raises."""
        return None
