"""For plugin authors: a registry holding their plugins, plausible notification events, and
whole tasks run through the real agent (public as :mod:`wrktalk_agent.testing`)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any, ClassVar, Literal

from wrktalk_agent._testing.releases import add_release
from wrktalk_agent.config import AgentSettings
from wrktalk_agent.db.models import ArtifactInfo, Task, TaskEvent
from wrktalk_agent.db.repository import Repository
from wrktalk_agent.interfaces import (
    CheckResult,
    Delivery,
    NotificationEvent,
    NotificationKind,
    StepTiming,
)
from wrktalk_agent.plugins import PluginRegistry


def registry_with(
    *plugins: ModuleType | object,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    entry_points: bool = False,
) -> PluginRegistry:
    """A registry holding ``plugins`` (each registered under its module name);
    ``settings`` maps a backend name to settings values that win over the environment.
    A broken plugin raises :class:`~wrktalk_agent.errors.PluginError` naming the problem."""
    registry = PluginRegistry(entry_points=entry_points, settings_overrides=settings)
    for plugin in plugins:
        registry.register_module(plugin, name=plugin_name(plugin))
    return registry


def plugin_name(plugin: ModuleType | object) -> str:
    return str(getattr(plugin, "__name__", None) or type(plugin).__name__)


def notification_event(
    kind: NotificationKind | str = NotificationKind.DEPLOY_SUCCEEDED, **fields: Any
) -> NotificationEvent:
    """A :class:`~wrktalk_agent.interfaces.NotificationEvent` with plausible values for a
    deploy of 1.1.0 over 1.0.0 (a failure when ``kind`` says so); ``fields`` replace any."""
    kind = NotificationKind(kind)
    failed = kind.value.endswith("failed") or kind in (
        NotificationKind.TASK_ABANDONED,
        NotificationKind.AUTO_ROLLBACK,
    )
    rollback = kind.value.startswith("rollback")
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "kind": kind,
        "installation": "test",
        "task_id": uuid.uuid4(),
        "task_type": "rollback" if rollback else "deploy",
        "outcome": "failed" if failed else "completed",
        "version": "1.0.0" if rollback else "1.1.0",
        "from_version": "1.1.0" if rollback else "1.0.0",
        "to_version": "1.0.0" if rollback else "1.1.0",
        "error": "the deployer said no (test)" if failed else None,
        "agent_id": "test-agent",
        "started_at": now - timedelta(seconds=3),
        "finished_at": now,
        "steps": (
            StepTiming("artifact", 0.1, True),
            StepTiming("rollback" if rollback else "deploy", 2.5, not failed),
        ),
    }
    values.update(fields)
    return NotificationEvent(**values)


@dataclass(frozen=True)
class TaskReport:
    """One task run by :class:`TaskHarness`, read back from the database."""

    #: the ``agent_task`` row after the run (``status``, ``error_message``, ``result``...)
    task: Task
    #: what ``wrktalk-agent run --once`` would have exited with (0 completed, 1 failed)
    exit_code: int
    #: the task's timeline, oldest first (``step``, ``status``, ``message``)
    timeline: list[TaskEvent]
    #: the events the notifiers were given (once each, whatever the number of notifiers)
    notifications: list[NotificationEvent]
    #: what each notifier returned, by notifier name
    deliveries: dict[str, list[Delivery]]

    @property
    def status(self) -> str:
        return self.task.status

    @property
    def error(self) -> str | None:
        return self.task.error_message

    @property
    def result(self) -> dict[str, Any]:
        return self.task.result or {}

    def steps(self) -> list[tuple[str, str]]:
        """``(step, status)`` of every timeline entry, oldest first."""
        return [(e.step, e.status) for e in self.timeline]

    def messages(self, step: str) -> list[str]:
        """The messages of ``step``'s entries (e.g. what a deployer ``report()``-ed)."""
        return [e.message for e in self.timeline if e.step == step]


class _RecordingNotifier:
    """Wraps a selected notifier: remembers what it was given and what it returned."""

    def __init__(self, inner: Any, harness: TaskHarness) -> None:
        self.inner = inner
        self.name = inner.name
        self.harness = harness

    async def check(self) -> Any:
        return await self.inner.check()

    async def notify(self, event: NotificationEvent) -> Any:
        if not any(seen is event for seen in self.harness._events):
            self.harness._events.append(event)
        deliveries = list(await self.inner.notify(event))
        self.harness._deliveries.setdefault(self.name, []).extend(deliveries)
        return deliveries


class _CaptureNotifier:
    """Selected when the test names no notifier, so the report still holds the event."""

    name: ClassVar[str] = "harness"

    async def check(self) -> list[CheckResult]:
        return []

    async def notify(self, event: NotificationEvent) -> list[Delivery]:
        return [Delivery(recipient="test harness", ok=True)]


class TaskHarness:
    """Runs one deploy or rollback task through the real agent, in process: claim,
    artifact, maintenance, deployer, health check, outcome, notifiers, exactly the path of
    ``wrktalk-agent run --once``, on the test database with your backends.

    ``use(module)`` registers a plugin; ``select(...)`` picks backends by name (a
    deployer is picked for you when your plugins register exactly one) and sets backend
    settings (``{"mydeployer": {"root": path}}``, winning over the environment) or agent
    settings (``healthcheck_url=...``); then ``await deploy("1.0.0", files)`` or
    ``await rollback()`` returns a :class:`TaskReport`.
    """

    def __init__(self, settings: AgentSettings, repo: Repository) -> None:
        self.settings = settings
        self.repo = repo
        self._plugins: list[tuple[str, ModuleType | object]] = []
        self._deployer: str | None = None
        self._maintenance: str | None = None
        self._notifiers: list[str] = []
        self._backend_settings: dict[str, dict[str, Any]] = {}
        self._agent_settings: dict[str, Any] = {}
        self._events: list[NotificationEvent] = []
        self._deliveries: dict[str, list[Delivery]] = {}

    def use(self, plugin: ModuleType | object, name: str | None = None) -> TaskHarness:
        """Register a plugin module (as its entry point would)."""
        self._plugins.append((name or plugin_name(plugin), plugin))
        return self

    def select(
        self,
        *,
        deployer: str | None = None,
        maintenance: str | None = None,
        notifiers: Sequence[str] | None = None,
        settings: Mapping[str, Mapping[str, Any]] | None = None,
        **agent_settings: Any,
    ) -> TaskHarness:
        """Pick backends and settings for the following tasks (unset: unchanged)."""
        if deployer is not None:
            self._deployer = deployer
        if maintenance is not None:
            self._maintenance = maintenance
        if notifiers is not None:
            self._notifiers = list(notifiers)
        for backend, values in (settings or {}).items():
            self._backend_settings.setdefault(backend, {}).update(values)
        self._agent_settings.update(agent_settings)
        return self

    def registry(self) -> PluginRegistry:
        """A fresh registry with the plugins given to :meth:`use`."""
        registry = PluginRegistry(entry_points=False, settings_overrides=self._backend_settings)
        for name, plugin in self._plugins:
            registry.register_module(plugin, name=name)
        return registry

    async def add_release(
        self, version: str, files: Mapping[str, bytes | str] | None = None, **kwargs: Any
    ) -> ArtifactInfo:
        """Store a release (see :func:`add_release` for ``chart_type``, ``env_data``...)."""
        return await add_release(self.repo, version, files, **kwargs)

    async def deploy(
        self, version: str, files: Mapping[str, bytes | str] | None = None, **kwargs: Any
    ) -> TaskReport:
        """Deploy ``version``: stored first (from ``files``) unless it already is."""
        release = await self.repo.release_by_version(version)
        if release is None:
            release = await self.add_release(version, files, **kwargs)
        elif files is not None or kwargs:
            raise ValueError(f"release {version} is already stored; give no files for it")
        return await self.run("deploy", release.id)

    async def rollback(self) -> TaskReport:
        """Roll back to the previous release (the one before the current)."""
        return await self.run("rollback", None)

    async def run(self, task_type: Literal["deploy", "rollback"], release_id: Any) -> TaskReport:
        """Create one task and run the agent once, as ``run --once`` does."""
        from wrktalk_agent.bootstrap import open_services
        from wrktalk_agent.runtime import Agent

        registry = self.registry()
        deployer = self._deployer
        if deployer is None:
            names = registry.names("deployer")
            if len(names) != 1:
                raise ValueError(f"select(deployer=...) one of: {', '.join(names) or 'none'}")
            deployer = names[0]
        settings = self.settings.model_copy(
            update={
                "deployer": deployer,
                "maintenance_mode_handler": self._maintenance or "none",
                "notifiers": list(self._notifiers),
                "extra_plugins": [],
                **self._agent_settings,
            }
        )
        task = await self.repo.create_task(task_type, release_id)
        self._events, self._deliveries = [], {}
        services = await open_services(settings, registry)
        try:
            notifiers: list[Any] = list(services.notifiers) or [_CaptureNotifier()]
            services.notifiers = [_RecordingNotifier(n, self) for n in notifiers]  # type: ignore[misc]
            exit_code = await Agent(services).run(once=True)
        finally:
            await services.repo.close()
        row = await self.repo.get_task(task.id)
        assert row is not None
        return TaskReport(
            task=row,
            exit_code=exit_code,
            timeline=await self.repo.task_events(task.id),
            notifications=list(self._events),
            deliveries=dict(self._deliveries),
        )
