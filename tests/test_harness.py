"""wrktalk_agent.testing's task harness: one task through the real agent, as a plugin
author meets it (the examples under examples/ use it for their whole-task tests)."""

from __future__ import annotations

from typing import ClassVar

import pytest

from wrktalk_agent.hookspecs import hookimpl
from wrktalk_agent.interfaces import BaseDeployer, DeployOutcome, DeployRequest
from wrktalk_agent.testing import TaskHarness, notification_event


class Echo(BaseDeployer):
    name: ClassVar[str] = "echo"

    async def deploy(self, request: DeployRequest) -> DeployOutcome:
        await request.report(f"echo saw {sorted(p.name for p in request.workdir.iterdir())}")
        return DeployOutcome(output=f"echoed {request.release.version}", details={"n": 1})

    async def rollback(self, request: DeployRequest) -> DeployOutcome:
        return DeployOutcome(output=f"back to {request.release.version}")


class EchoPlugin:
    @hookimpl
    def wrktalk_register_deployers(self, register) -> None:
        register(Echo)


async def test_a_deploy_reports_row_timeline_and_the_notified_event(
    task_harness: TaskHarness, repo
) -> None:
    task_harness.use(EchoPlugin(), name="echo")  # the only deployer: selected for us

    report = await task_harness.deploy("1.0.0", {"a.txt": "a"}, env_data="K=v\n")

    assert (report.status, report.exit_code, report.error) == ("completed", 0, None)
    assert report.task.claimed_by == "test-agent"
    assert report.result["deployer"] == {"output": "echoed 1.0.0", "details": {"n": 1}}
    assert report.messages("deploy")[1] == "echo saw ['.env', 'a.txt']"
    assert report.steps()[0] == ("claimed", "info")
    assert ("deploy", "succeeded") in report.steps()
    # no notifier selected: the harness still shows what the agent would have sent
    [event] = report.notifications
    assert (event.kind, event.to_version, event.outcome) == (
        "deploy_succeeded",
        "1.0.0",
        "completed",
    )
    assert report.deliveries == {"harness": [report.deliveries["harness"][0]]}
    assert (await repo.current_release()).release_version == "1.0.0"


async def test_rollback_and_a_refused_rollback(task_harness: TaskHarness) -> None:
    task_harness.use(EchoPlugin(), name="echo")
    nothing = await task_harness.rollback()
    assert (nothing.status, nothing.error) == ("failed", "no previous release to roll back to")
    assert nothing.notifications[0].kind == "rollback_failed"

    await task_harness.deploy("1.0.0")
    await task_harness.deploy("1.1.0")
    back = await task_harness.rollback()
    assert back.status == "completed"
    assert back.result["deployer"]["output"] == "back to 1.0.0"
    with pytest.raises(ValueError, match="already stored"):
        await task_harness.deploy("1.0.0", {"other": "files"})


async def test_an_ambiguous_deployer_must_be_selected(task_harness: TaskHarness) -> None:
    with pytest.raises(ValueError, match="select"):
        await task_harness.deploy("1.0.0")


def test_notification_event_fits_its_kind() -> None:
    failed = notification_event("rollback_failed")
    assert (failed.task_type, failed.outcome, failed.error is not None) == (
        "rollback",
        "failed",
        True,
    )
    ok = notification_event(installation="Acme")
    assert (ok.kind, ok.outcome, ok.error, ok.installation) == (
        "deploy_succeeded",
        "completed",
        None,
        "Acme",
    )
