"""A plugin for the agent's own tests: a deployer, a maintenance handler and a notifier
that record what happens to files, so tests (and agents in other processes) can see it.

Load it with WRKTALK_AGENT_EXTRA_PLUGINS=wrktalk_test_plugin (tests/support on PYTHONPATH).
A release steers the deployer through a ``behaviour.json`` at its root:
``{"sleep": seconds, "fail": "message", "system_changed": bool, "wait_for": path,
"started": path, "child": seconds}`` — ``child`` runs the deploy as child processes
(``child_deploy.py``) through :func:`wrktalk_agent.process.run`, which write the live
file themselves; otherwise the deployer writes it after a successful deploy.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from wrktalk_agent.hookspecs import hookimpl
from wrktalk_agent.interfaces import (
    BackendError,
    CheckResult,
    Delivery,
    DeployError,
    DeployOutcome,
    DeployRequest,
    LiveState,
    NotificationEvent,
    PluginContext,
)
from wrktalk_agent.process import run

CHILD_DEPLOY = Path(__file__).with_name("child_deploy.py")


class RecordingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WRKTALK_AGENT_RECORDING_", extra="ignore")

    log: Path = Field(Path("/tmp/wrktalk-recording.jsonl"), description="Where records go.")
    maintenance_flag: Path = Field(Path("/tmp/wrktalk-recording.maint"), description="Flag file.")
    fail_enable: bool = Field(False, description="enable() raises, as a misconfigured proxy.")
    live: Path = Field(Path("/tmp/wrktalk-recording.live"), description="What the target runs.")
    notify_hang: bool = Field(False, description="notify() never returns (a stuck notifier).")


def _append(path: Path, record: dict[str, Any]) -> None:
    line = json.dumps(record, default=str) + "\n"
    # O_APPEND writes of one short line are atomic across processes
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


class RecordingDeployer:
    name: ClassVar[str] = "recording"
    chart_types: ClassVar[tuple[str, ...]] = ("compose", "helm")
    settings_model: ClassVar[type[BaseSettings]] = RecordingSettings

    def __init__(self, settings: RecordingSettings, context: PluginContext) -> None:
        self.settings = settings
        self.context = context

    async def check(self) -> list[CheckResult]:
        return [CheckResult("recording", True, str(self.settings.log))]

    async def deploy(self, request: DeployRequest) -> DeployOutcome:
        return await self._apply("deploy", request)

    async def rollback(self, request: DeployRequest) -> DeployOutcome:
        return await self._apply(request.purpose, request)

    async def _apply(self, action: str, request: DeployRequest) -> DeployOutcome:
        behaviour_file = request.workdir / "behaviour.json"
        behaviour = json.loads(behaviour_file.read_text()) if behaviour_file.exists() else {}
        start = time.time()
        record = {
            "agent": self.context.agent_id,
            "pid": os.getpid(),
            "task": str(request.task_id),
            "action": action,
            "version": request.release.version,
            "current": request.current.version if request.current else None,
            "env": (request.env_file.read_text() if request.env_file else None),
            "env_mode": (
                oct(request.env_file.stat().st_mode & 0o777) if request.env_file else None
            ),
            "workdir": str(request.workdir),
            "start": start,
        }
        _append(self.settings.log, {**record, "phase": "start"})
        if behaviour.get("started"):
            Path(behaviour["started"]).touch()
        if behaviour.get("wait_for"):
            while not Path(behaviour["wait_for"]).exists():
                await asyncio.sleep(0.05)
        if behaviour.get("sleep"):
            await asyncio.sleep(float(behaviour["sleep"]))
        if behaviour.get("child") is not None:
            args = {
                "log": str(self.settings.log),
                "flag": str(self.settings.maintenance_flag),
                "live": str(self.settings.live),
                "task": str(request.task_id),
                "version": request.release.version,
                "seconds": float(behaviour["child"]),
                "daemon": behaviour.get("daemon"),
                "background": behaviour.get("background"),
            }
            result = await run([sys.executable, str(CHILD_DEPLOY), json.dumps(args)])
            if not result.ok:
                raise DeployError("child deploy failed", output=result.output)
        await request.report(f"recording {action} of {request.release.version}")
        _append(self.settings.log, {**record, "phase": "end", "end": time.time()})
        if behaviour.get("fail") and action == "deploy":
            raise DeployError(
                behaviour["fail"],
                output="line 1\nthe tool said: " + behaviour["fail"],
                system_changed=behaviour.get("system_changed", True),
            )
        if behaviour.get("child") is None:
            self.settings.live.write_text(json.dumps({"version": request.release.version}))
        return DeployOutcome(
            output=f"{action} {request.release.version} ok", details={"pid": os.getpid()}
        )

    async def describe_changes(self, current: Path | None, target: Path) -> list[str]:
        """Files added and removed between the two extracted releases."""
        before = {p.name for p in current.iterdir()} if current is not None else set()
        after = {p.name for p in target.iterdir()}
        return [f"added {n}" for n in sorted(after - before)] + [
            f"removed {n}" for n in sorted(before - after)
        ]

    async def live_release(self) -> LiveState:
        if not self.settings.live.exists():
            return LiveState(None, "absent", "recording: nothing deployed yet")
        version = json.loads(self.settings.live.read_text())["version"]
        return LiveState(version, "deployed", "recording live file")


class RecordingMaintenance:
    name: ClassVar[str] = "recording"
    settings_model: ClassVar[type[BaseSettings]] = RecordingSettings

    def __init__(self, settings: RecordingSettings, context: PluginContext) -> None:
        self.settings = settings

    async def check(self) -> list[CheckResult]:
        return [CheckResult("recording maintenance", True, "")]

    async def enable(self, reason: str) -> None:
        if self.settings.fail_enable:
            raise BackendError("no such backend 'wrong' (test)")
        self.settings.maintenance_flag.write_text(reason)
        _append(self.settings.log, {"phase": "maintenance", "on": True, "at": time.time()})

    async def disable(self) -> None:
        self.settings.maintenance_flag.unlink(missing_ok=True)
        _append(self.settings.log, {"phase": "maintenance", "on": False, "at": time.time()})

    async def status(self) -> bool:
        return self.settings.maintenance_flag.exists()


class RecordingNotifier:
    name: ClassVar[str] = "recording"
    settings_model: ClassVar[type[BaseSettings]] = RecordingSettings

    def __init__(self, settings: RecordingSettings, context: PluginContext) -> None:
        self.settings = settings
        self.context = context

    async def check(self) -> list[CheckResult]:
        return []

    async def notify(self, event: NotificationEvent) -> list[Delivery]:
        if self.settings.notify_hang:
            await asyncio.Event().wait()
        admins = await self.context.directory.active_admins()
        _append(
            self.settings.log,
            {
                "phase": "notify",
                "kind": event.kind.value,
                "outcome": event.outcome,
                "task": str(event.task_id),
                "error": event.error,
                "rollback_error": event.rollback_error,
                "from": event.from_version,
                "to": event.to_version,
                "steps": [s.step for s in event.steps],
                "notification_id": str(event.notification_id),
                "live": event.live,
                "changes": list(event.changes),
                "maintenance": event.maintenance,
                "agent": self.context.agent_id,
            },
        )
        return [Delivery(recipient=a.email, ok=True) for a in admins]


class ExplodingNotifier:
    name: ClassVar[str] = "exploding"

    def __init__(self, settings: None, context: PluginContext) -> None:
        pass

    async def check(self) -> list[CheckResult]:
        return []

    async def notify(self, event: NotificationEvent) -> list[Delivery]:
        raise RuntimeError("notifier bug")


@hookimpl
def wrktalk_register_deployers(register: Any) -> None:
    register(RecordingDeployer)


@hookimpl
def wrktalk_register_maintenance_handlers(register: Any) -> None:
    register(RecordingMaintenance)


@hookimpl
def wrktalk_register_notifiers(register: Any) -> None:
    register(RecordingNotifier)
    register(ExplodingNotifier)
