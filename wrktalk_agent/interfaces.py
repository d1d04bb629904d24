"""The objects a plugin's backends receive and return, and the protocols they implement.

Everything a plugin author needs besides :mod:`wrktalk_agent.hookspecs` lives here. The
runtime only ever talks to backends through these protocols; backend methods are
``async`` and are awaited by the core.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable
from uuid import UUID

from pydantic import BaseModel, SecretStr

__all__ = [
    "RELEASE_TYPE_PATTERN",
    "VERSION_PATTERN",
    "BackendError",
    "BaseDeployer",
    "BaseMaintenanceHandler",
    "BaseNotifier",
    "CheckResult",
    "Deliveries",
    "Delivery",
    "DeliveryAttempt",
    "DeliveryOutcome",
    "DeployError",
    "DeployOutcome",
    "DeployRequest",
    "Deployer",
    "Directory",
    "LiveState",
    "MaintenanceHandler",
    "NotificationEvent",
    "NotificationKind",
    "Notifier",
    "PluginContext",
    "Recipient",
    "Release",
    "SmtpConfig",
    "StepTiming",
    "ValidationError",
    "validate_version",
]

#: Release versions reach command lines (helm, docker compose) and file names, so they are
#: restricted to a conservative, semver-like alphabet. A leading dash would read as a flag.
VERSION_PATTERN = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")
#: What a release type (``release_artifact.chart_type``, a deployer's ``chart_types``)
#: may be: the core pins no names, only their shape.
RELEASE_TYPE_PATTERN = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,39}$")


def validate_version(version: str) -> str:
    """Return ``version`` unchanged, or raise ``ValueError`` naming what is allowed."""
    if not VERSION_PATTERN.fullmatch(version):
        raise ValueError(
            f"invalid release version {version!r}: use 1-64 characters from "
            "[0-9A-Za-z.+_-], starting with a letter or digit"
        )
    return version


class BackendError(Exception):
    """A backend could not do what was asked; the message is shown to operators as is."""


class DeployError(BackendError):
    """A deploy or rollback failed.

    ``system_changed`` tells the core whether the target may have been modified (so an
    automatic rollback is worth trying); ``output`` is a bounded tail of the tool's output.
    """

    def __init__(self, message: str, *, output: str = "", system_changed: bool = True) -> None:
        super().__init__(message)
        self.output = output
        self.system_changed = system_changed


class ValidationError(BackendError):
    """The release cannot be applied as it is. Raised by a deployer's optional
    ``validate(request)``: the core fails the task before maintenance goes on, with
    nothing changed and no rollback. ``output`` is the tool's own message (bounded)."""

    def __init__(self, message: str, *, output: str = "") -> None:
        super().__init__(message)
        self.output = output


@dataclass(frozen=True)
class LiveState:
    """What a deployer finds running on its target (its optional ``live_release()``).

    ``version`` is the release version the target runs (``None``: nothing, or not known);
    ``state`` is ``"deployed"`` (that version is fully applied), ``"half-applied"``
    (an interrupted deploy or rollback left it partly changed: ``version`` is the best
    guess), ``"absent"`` (nothing of the installation runs) or ``"unknown"`` (the
    deployer could not tell; ``detail`` says why). ``detail`` is shown to operators.
    """

    version: str | None
    state: Literal["deployed", "half-applied", "absent", "unknown"]
    detail: str = ""


@dataclass(frozen=True)
class Release:
    """One row of ``release_artifact``, without its bytes."""

    id: UUID
    version: str
    #: ``release_artifact.chart_type``: any text; a deployer's ``chart_types`` says which
    #: values it applies (the core does not pin the set)
    chart_type: str
    sha256: str


@dataclass(frozen=True)
class DeployRequest:
    """What a deployer gets for one deploy or rollback.

    ``workdir`` holds the extracted release (chart directory or compose files) plus
    ``.env`` (``env_file``) and ``values.yaml`` (``values_file``) when the release has
    them; the directory is private (0700) and securely deleted after the task, so a
    deployer that needs the files afterwards (compose bind mounts) copies them.
    ``current`` is the release live before this task (``None`` on a first deploy).
    ``purpose`` is ``"deploy"``, ``"rollback"`` (an operator's rollback task) or
    ``"auto-rollback"`` (the core undoing a failed deploy). ``report`` appends a line
    to the task's event timeline (use it for progress an operator should see).
    """

    task_id: UUID
    purpose: Literal["deploy", "rollback", "auto-rollback"]
    release: Release
    workdir: Path
    env_file: Path | None
    values_file: Path | None
    current: Release | None
    report: Callable[[str], Awaitable[None]]


@dataclass
class DeployOutcome:
    """A successful deploy or rollback: ``output`` is a bounded tail of the tool's output,
    ``details`` small JSON-able facts (revision numbers, commands run) kept in the task
    result."""

    output: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckResult:
    """One line of a preflight check (``wrktalk-agent check``)."""

    name: str
    ok: bool
    detail: str = ""


@runtime_checkable
class Deployer(Protocol):
    """Applies a release to the installation (Helm, Docker Compose, ...)."""

    name: ClassVar[str]
    #: the ``release_artifact.chart_type`` values this deployer accepts; an empty tuple
    #: accepts any (a deployer that applies whatever the release carries)
    chart_types: ClassVar[tuple[str, ...]]

    async def check(self) -> Sequence[CheckResult]:
        """Preflight: tools found, versions supported, target reachable."""
        ...

    async def deploy(self, request: DeployRequest) -> DeployOutcome:
        """Install or upgrade to ``request.release``; raise :class:`DeployError` on failure."""
        ...

    async def rollback(self, request: DeployRequest) -> DeployOutcome:
        """Return the installation to ``request.release`` (the previous release, whose
        artifact is extracted in ``request.workdir``); raise :class:`DeployError`."""
        ...

    # Optional methods: the core calls them when the class defines them (the list, with
    # what the core does with each, is declared in wrktalk_agent.contract).
    #
    # async def describe_changes(
    #     self, current_workdir: Path | None, target_workdir: Path
    # ) -> Sequence[str]:
    #     What the task changes (services, resources, images, ports), comparing the
    #     extracted live release (None on a first deploy) with the target. Shown in the
    #     timeline, the result and the notification; a failure is only a note.
    #
    # async def validate(self, request: DeployRequest) -> Sequence[str]:
    #     Check the release before anything changes (before maintenance goes on): render
    #     or lint it, check images and ports. Return warnings (may be empty); raise
    #     ValidationError to refuse the release (the task fails with no downtime).
    #
    # async def prepare(self, request: DeployRequest) -> None:
    #     Stage what can be staged without touching what is live (load images, install
    #     the release directory), still before maintenance. Raise DeployError on failure.
    #
    # async def live_release(self) -> LiveState:
    #     Tell what the target runs now, from the target itself (helm: the release's
    #     status; compose: labels of the project's containers; script: its current
    #     link). Called after an agent died mid-task, so that the database records the
    #     truth. Must not change anything.


@runtime_checkable
class MaintenanceHandler(Protocol):
    """Switches the site's reverse proxy into maintenance mode (HTTP 503) and back.

    ``enable`` and ``disable`` are idempotent; ``status`` reads the real state.
    """

    name: ClassVar[str]

    async def check(self) -> Sequence[CheckResult]: ...

    async def enable(self, reason: str) -> None: ...

    async def disable(self) -> None: ...

    async def status(self) -> bool: ...


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


@runtime_checkable
class Notifier(Protocol):
    """Tells people about a task's outcome. Must not raise for delivery problems:
    return failed :class:`Delivery` entries instead (the core also guards against raises)."""

    name: ClassVar[str]

    async def check(self) -> Sequence[CheckResult]: ...

    async def notify(self, event: NotificationEvent) -> Deliveries: ...

    # Optional method: the core calls it instead of ``notify`` when the class defines it.
    #
    # async def deliver(self, event: NotificationEvent, attempt: DeliveryAttempt) -> Deliveries:
    #     Deliver to each recipient not in ``attempt.skip``: call ``attempt.sending(r)``
    #     before the point of no return, ``attempt.report(delivery)`` as soon as an outcome
    #     is known, and return one Delivery with an ``outcome`` per recipient tried. The
    #     core retries ``temporary`` recipients (and only those) with backoff until a final
    #     deadline, and repeats an ``unknown`` one at most once. Raising means "nothing
    #     more to report": what was reported stands, the rest is tried again.


class Recipient(BaseModel):
    name: str
    email: str


class SmtpConfig(BaseModel):
    """SMTP columns of ``deployment_config`` (all optional in the database)."""

    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: SecretStr | None = None
    sender: str | None = None


class Directory(Protocol):
    """Read-only facts from the database a plugin may need at run time."""

    async def active_admins(self) -> list[Recipient]: ...

    async def smtp_config(self) -> SmtpConfig: ...


@dataclass(frozen=True)
class PluginContext:
    """Handed to every backend factory next to the backend's own settings."""

    agent_id: str
    installation: str
    work_dir: Path
    directory: Directory


# -- optional base classes ----------------------------------------------------------------
# A backend need not inherit from anything: the protocols above are the contract. These
# carry the boring parts, so a minimal backend is only its real methods.


class _BaseBackend(abc.ABC):
    #: the unique name operators select the backend by (set it in the subclass)
    name: ClassVar[str]
    #: the backend's pydantic-settings model (prefix ``WRKTALK_AGENT_<NAME>_``), or None
    settings_model: ClassVar[type[Any] | None] = None

    def __init__(self, settings: Any, context: PluginContext) -> None:
        #: the settings model's instance (``None`` without a model)
        self.settings = settings
        self.context = context

    async def check(self) -> Sequence[CheckResult]:
        """Nothing to check: ``wrktalk-agent check`` says the backend loaded."""
        return []


class BaseDeployer(_BaseBackend):
    """Optional base of a deployer: implement ``deploy`` and ``rollback`` (and set
    ``name``; ``chart_types`` defaults to any). Raise :class:`DeployError` on failure."""

    chart_types: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    async def deploy(self, request: DeployRequest) -> DeployOutcome:
        raise NotImplementedError

    @abc.abstractmethod
    async def rollback(self, request: DeployRequest) -> DeployOutcome:
        raise NotImplementedError


class BaseMaintenanceHandler(_BaseBackend):
    """Optional base of a maintenance handler: implement ``enable``, ``disable`` (both
    idempotent) and ``status`` (the real state, read from the target)."""

    @abc.abstractmethod
    async def enable(self, reason: str) -> None:
        raise NotImplementedError

    @abc.abstractmethod
    async def disable(self) -> None:
        raise NotImplementedError

    @abc.abstractmethod
    async def status(self) -> bool:
        raise NotImplementedError


class BaseNotifier(_BaseBackend):
    """Optional base of a notifier: implement ``notify`` (one :class:`Delivery` per
    recipient or channel; report delivery problems as ``ok=False``, don't raise), and
    ``deliver(event, attempt)`` for per-recipient retries (see :class:`Notifier`)."""

    @abc.abstractmethod
    async def notify(self, event: NotificationEvent) -> Deliveries:
        raise NotImplementedError
