"""Fault injection: every backend method the core calls during a task, failing every way
a backend can fail, on every path (deploy, rollback, automatic rollback, recovery).

For each cell: the task reaches a terminal state, its real cause is stored, every step
that started is closed in the timeline, maintenance ends off, the admins are told, and
the agent goes on to serve the next task. This is the contract docs/plugins.md states.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from wrktalk_test_plugin import (
    RecordingDeployer,
    RecordingMaintenance,
    RecordingNotifier,
    RecordingSettings,
)

from wrktalk_agent.interfaces import (
    BackendError,
    DeployError,
    LiveState,
    PluginContext,
    ValidationError,
)
from wrktalk_agent.runtime import Agent
from wrktalk_agent.services import Services
from wrktalk_agent.testing import add_release

KINDS = ["documented error", "exception", "cancellation", "hang"]
#: what the stored cause must say, per kind ({m}: the method)
CAUSE = {
    "documented error": "injected {m} error",
    "exception": "RuntimeError: injected {m} bug",
    "cancellation": "cancelled from within",
    "hang": "did not finish within",
}


class Fault:
    """Fails ``method`` once, the ``kind`` way."""

    def __init__(self, method: str, kind: str) -> None:
        self.method, self.kind, self.fired = method, kind, False

    async def at(self, method: str) -> None:
        if method != self.method or self.fired:
            return
        self.fired = True
        if self.kind == "documented error":
            if method == "validate":
                raise ValidationError(f"injected {method} error")
            if method in ("deploy", "rollback", "auto-rollback"):
                raise DeployError(f"injected {method} error", output="tool output")
            raise BackendError(f"injected {method} error")
        if self.kind == "exception":
            raise RuntimeError(f"injected {method} bug")
        if self.kind == "cancellation":
            raise asyncio.CancelledError()
        await asyncio.sleep(3600)


class FaultyDeployer(RecordingDeployer):
    def __init__(self, settings: RecordingSettings, context: PluginContext, fault: Fault):
        super().__init__(settings, context)
        self.fault = fault

    async def validate(self, request: Any) -> list[str]:
        await self.fault.at("validate")
        return []

    async def prepare(self, request: Any) -> None:
        await self.fault.at("prepare")

    async def deploy(self, request: Any) -> Any:
        await self.fault.at("deploy")
        return await super().deploy(request)

    async def rollback(self, request: Any) -> Any:
        await self.fault.at("rollback" if request.purpose == "rollback" else "auto-rollback")
        return await super().rollback(request)

    async def live_release(self) -> LiveState:
        await self.fault.at("live_release")
        return await super().live_release()


class FaultyMaintenance(RecordingMaintenance):
    def __init__(self, settings: RecordingSettings, context: PluginContext, fault: Fault):
        super().__init__(settings, context)
        self.fault = fault

    async def enable(self, reason: str) -> None:
        await self.fault.at("enable")
        await super().enable(reason)

    async def disable(self) -> None:
        await self.fault.at("disable")
        await super().disable()

    async def status(self) -> bool:
        await self.fault.at("status")
        return await super().status()


class FaultyNotifier(RecordingNotifier):
    def __init__(self, settings: RecordingSettings, context: PluginContext, fault: Fault):
        super().__init__(settings, context)
        self.fault = fault

    async def notify(self, event: Any) -> Any:
        await self.fault.at("notify")
        return await super().notify(event)


@pytest.fixture
def faulty_agent(recording_settings, recording, repo) -> Callable[[Fault], Agent]:
    settings = recording_settings.model_copy(
        update={"deploy_timeout": 1.0, "backend_timeout": 1.0, "notify_timeout": 1.0}
    )
    backend_settings = RecordingSettings(
        log=recording.log, maintenance_flag=recording.flag, live=recording.live
    )
    context = PluginContext(
        agent_id=settings.agent_id,
        installation=settings.installation_name,
        work_dir=settings.work_dir,
        directory=repo,
    )

    def build(fault: Fault) -> Agent:
        services = Services(
            settings=settings,
            repo=repo,
            deployer=FaultyDeployer(backend_settings, context, fault),
            maintenance=FaultyMaintenance(backend_settings, context, fault),
            notifiers=[FaultyNotifier(backend_settings, context, fault)],
        )
        return Agent(services)

    return build


async def _setup(repo: Any, purpose: str) -> Any:
    """Releases and the task for ``purpose``; 1.0.0 (then 2.0.0) deployed before."""
    await repo.pool.execute("INSERT INTO admin (name, email) VALUES ('Ann', 'ann@acme.example')")
    one = await add_release(repo, "1.0.0")
    failing = {"behaviour.json": json.dumps({"fail": "health of 2.0.0 is bad"})}
    two = await add_release(repo, "2.0.0", failing if purpose == "auto-rollback" else None)
    if purpose == "rollback":
        await repo.pool.execute(
            "UPDATE release_artifact SET is_previous = true WHERE id=$1", one.id
        )
        await repo.pool.execute("UPDATE release_artifact SET is_current = true WHERE id=$1", two.id)
        return await repo.create_task("rollback", None)
    await repo.pool.execute("UPDATE release_artifact SET is_current = true WHERE id=$1", one.id)
    return await repo.create_task("deploy", two.id)


async def _events(repo: Any, task_id: Any) -> list[Any]:
    return await repo.task_events(task_id)


def _unclosed_steps(events: list[Any]) -> list[str]:
    open_steps: list[str] = []
    for event in events:
        if event.status == "started":
            open_steps.append(event.step)
        elif event.status in ("succeeded", "failed", "skipped") and event.step in open_steps:
            open_steps.remove(event.step)
    return open_steps


def _cells() -> list[tuple[str, str, str]]:
    paths = {
        "deploy": ["validate", "prepare", "enable", "deploy", "disable", "notify"],
        "rollback": ["validate", "prepare", "enable", "rollback", "disable", "notify"],
        "auto-rollback": ["auto-rollback"],
    }
    return [(p, m, k) for p, methods in paths.items() for m in methods for k in KINDS]


@pytest.mark.parametrize(("purpose", "method", "kind"), _cells())
async def test_backend_fault_is_contained(purpose, method, kind, faulty_agent, recording, repo):
    fault = Fault(method, kind)
    agent = faulty_agent(fault)
    task = await _setup(repo, purpose)
    await asyncio.wait_for(agent.run(once=True), 60)
    done = await repo.get_task(task.id)
    assert done.status in ("completed", "failed"), done
    assert fault.fired
    cause = CAUSE[kind].format(m=method)
    events = await _events(repo, task.id)
    timeline = " | ".join(f"{e.step} {e.status} {e.message}" for e in events)
    if method in ("validate", "prepare", "enable", "deploy", "rollback"):
        assert done.status == "failed"
        assert cause in (done.error_message or ""), (done.error_message, timeline)
    elif method == "auto-rollback":
        assert done.status == "failed" and "health of 2.0.0 is bad" in done.error_message
        assert cause in done.result["auto_rollback"]["error"], done.result
        # both causes on the error's first line: the site is in an unknown state
        first_line = done.error_message.splitlines()[0]
        assert "health of 2.0.0 is bad" in first_line and cause in first_line, first_line
        assert "automatic rollback to 1.0.0 failed too" in first_line
    elif method == "disable":  # fails once, retried by the task: off, and it says so
        assert "maintenance-off failed could not switch off" in timeline
        assert "maintenance-off succeeded switched off after 1 failed attempt" in timeline
        assert cause in timeline, timeline
        assert "stayed on" in done.result["maintenance"] and cause in done.result["maintenance"]
    assert _unclosed_steps(events) == [], timeline
    if method in ("validate", "prepare"):  # refused before maintenance: no downtime
        assert not any(r.get("on") for r in recording.records("maintenance"))
    # admins are told (a failed delivery is retried: the fault fires only once), and the
    # failed attempt is in the task's timeline
    if method == "notify":
        assert "notify info recording: 0/1 delivered; retrying: " in timeline, timeline
        assert "retrying (attempt 1)" in timeline
        await repo.pool.execute("UPDATE agent_notification SET next_attempt_at = now()")
        await agent.deliverer.deliver_due()
    mails = [r for r in recording.records("notify") if r["task"] == str(task.id)]
    assert len(mails) == 1, recording.records("notify")
    if method == "auto-rollback":
        assert cause in mails[0]["rollback_error"]
    if method == "disable":
        assert mails[0]["maintenance"].startswith("stayed on ")
    # and the agent serves the next task; maintenance ends off
    follow_up = await repo.create_task("deploy", (await add_release(repo, "3.0.0")).id)
    assert await asyncio.wait_for(agent.run(once=True), 60) == 0
    assert (await repo.get_task(follow_up.id)).status == "completed"
    assert not recording.flag.exists()
    assert await repo.maintenance_flag() is False


@pytest.mark.parametrize("kind", KINDS)
async def test_live_release_fault_during_recovery_is_contained(kind, faulty_agent, recording, repo):
    fault = Fault("live_release", kind)
    agent = faulty_agent(fault)
    task = await repo.create_task("deploy", (await add_release(repo, "1.0.0")).id)
    await repo.pool.execute(
        "UPDATE agent_task SET status='inProgress', claimed_by='gone', picked_up_at=now(),"
        " last_heartbeat=now() - interval '1 minute', lease_seconds=1 WHERE id=$1",
        task.id,
    )
    await asyncio.wait_for(agent.run(once=True), 60)
    done = await repo.get_task(task.id)
    assert done.status == "failed"
    assert "live release unknown" in done.error_message
    assert CAUSE[kind].format(m="live_release") in done.result["live"]["detail"]
    assert [r["kind"] for r in recording.records("notify")] == ["task_abandoned"]


@pytest.mark.parametrize("kind", KINDS)
async def test_maintenance_status_fault_at_startup_is_contained(
    kind, faulty_agent, recording, repo
):
    fault = Fault("status", kind)
    agent = faulty_agent(fault)
    task = await repo.create_task("deploy", (await add_release(repo, "1.0.0")).id)
    assert await asyncio.wait_for(agent.run(once=True), 60) == 0
    assert fault.fired
    assert (await repo.get_task(task.id)).status == "completed"
