"""The objects a plugin's backends receive and return, and the protocols they implement.

Everything a plugin author needs besides :mod:`wrktalk_agent.hookspecs` lives here. The
runtime only ever talks to backends through these protocols; backend methods are
``async`` and are awaited by the core.

The values are defined in :mod:`~wrktalk_agent.plugin_types` and
:mod:`~wrktalk_agent.notification_types`; this module holds the protocols and the
optional base classes, and re-exports the rest: import everything from here.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from wrktalk_agent.notification_types import (
    Deliveries,
    Delivery,
    DeliveryAttempt,
    DeliveryOutcome,
    NotificationEvent,
    NotificationKind,
    StepTiming,
)
from wrktalk_agent.plugin_types import (
    RELEASE_TYPE_PATTERN,
    VERSION_PATTERN,
    BackendError,
    CheckResult,
    DeployError,
    DeployOutcome,
    DeployRequest,
    Directory,
    LiveState,
    PluginContext,
    Recipient,
    Release,
    SmtpConfig,
    ValidationError,
    validate_version,
)

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
