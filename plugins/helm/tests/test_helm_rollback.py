"""Rollbacks against the fake helm: the right revision, or a redeploy when Helm has none."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from wrktalk_agent.interfaces import DeployError
from wrktalk_agent_helm import HelmDeployer
from wrktalk_agent_helm.deployer import find_revision

from .conftest import FakeHelm, RequestFactory
from .test_helm_deploy import HISTORY, LATEST

pytestmark = pytest.mark.timeout(60)
MakeDeployer = Callable[..., HelmDeployer]


def rollback_argv(revision: int, wait: str = "--wait") -> list[str]:
    return ["rollback", "wrktalk", str(revision), "--namespace", "wrktalk", wait,
            "--timeout", "10m", "--history-max", "10"]  # fmt: skip


async def test_rollback_returns_to_the_newest_revision_of_that_release(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    deployer = make_deployer()
    for version in ["1.0.0", "1.1.0", "1.0.0", "1.0.0-rc.1", "1.1.0"]:  # revisions 1..5
        await deployer.deploy(make_request(version))
    fake_helm.clear_log()

    request = make_request("1.0.0", purpose="rollback")
    outcome = await deployer.rollback(request)

    # revision 3: not 1 (older), nor 4 (1.0.0-rc.1 merely starts with the same text)
    assert fake_helm.calls() == [
        LATEST,
        HISTORY,
        rollback_argv(3, fake_helm.wait),
        HISTORY,
    ]
    latest = fake_helm.revisions()[-1]
    assert (latest["revision"], latest["status"], latest["description"]) == (
        6,
        "deployed",
        "Rollback to 3",
    )
    assert outcome.details["rolled_back_to"] == 3
    assert outcome.details["revision"] == 6
    assert outcome.output == "Rollback was a success! Happy Helming!"
    assert "rolling back Helm release wrktalk to revision 3 (release 1.0.0)" in make_request.reports


async def test_auto_rollback_after_a_failed_deploy(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    deployer = make_deployer()
    await deployer.deploy(make_request("1.0.0"))
    fake_helm.configure(inject={"upgrade": "timeout"})
    with pytest.raises(DeployError):
        await deployer.deploy(make_request("1.1.0"))

    await deployer.rollback(make_request("1.0.0", purpose="auto-rollback"))
    assert fake_helm.calls()[-2] == rollback_argv(1, fake_helm.wait)
    assert fake_helm.revisions()[-1]["description"] == "Rollback to 1"


def test_revisions_that_never_ran_are_not_rollback_targets() -> None:
    description = "wrktalk-agent release 1.0.0"
    history = [
        {"revision": 1, "status": "superseded", "description": description},
        {"revision": 2, "status": "failed", "description": description},
        {"revision": 3, "status": "pending-upgrade", "description": description},
    ]
    assert find_revision(history, "1.0.0") == 1
    assert find_revision(history[1:], "1.0.0") is None


async def test_rollback_redeploys_when_helm_pruned_the_revision(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    deployer = make_deployer(history_max=2)
    for version in ["1.0.0", "1.1.0", "1.2.0"]:
        await deployer.deploy(make_request(version))
    # --history-max 2 made Helm forget revision 1, the one of 1.0.0
    assert [r["revision"] for r in fake_helm.revisions()] == [2, 3]
    fake_helm.clear_log()

    request = make_request("1.0.0", purpose="rollback")
    outcome = await deployer.rollback(request)

    calls = fake_helm.calls()
    assert [c[0] for c in calls] == ["history", "history", "upgrade", "history"]
    assert calls[2][:4] == ["upgrade", "--install", "wrktalk", str(request.workdir / "wrktalk")]
    assert calls[2][-2:] == ["--description", "wrktalk-agent release 1.0.0"]
    assert fake_helm.revisions()[-1]["description"] == "wrktalk-agent release 1.0.0"
    assert outcome.details["action"] == "upgrade --install"
    assert (
        "Helm keeps no revision of release 1.0.0; redeploying it from its artifact"
        in make_request.reports
    )


async def test_rollback_installs_when_the_release_is_gone(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    outcome = await make_deployer().rollback(make_request("1.0.0", purpose="rollback"))
    assert [c[0] for c in fake_helm.calls()] == [
        "version",
        "history",
        "history",
        "upgrade",
        "history",
    ]
    assert fake_helm.revisions()[0]["status"] == "deployed"
    assert outcome.details["revision"] == 1


async def test_rollback_recovers_a_stuck_release_first(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    fake_helm.seed(
        [
            ("superseded", "wrktalk-agent release 1.0.0"),
            ("deployed", "wrktalk-agent release 1.1.0"),
            ("pending-upgrade", "Preparing upgrade"),
        ]
    )
    outcome = await make_deployer().rollback(make_request("1.0.0", purpose="rollback"))
    rollbacks = [c for c in fake_helm.calls() if c[0] == "rollback"]
    assert rollbacks == [rollback_argv(2, fake_helm.wait), rollback_argv(1, fake_helm.wait)]
    assert outcome.details["recovered"].startswith("rolled back revision 3 (pending-upgrade)")
    assert fake_helm.revisions()[-1]["description"] == "Rollback to 1"


async def test_failed_rollback_reports_helms_error(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    deployer = make_deployer()
    await deployer.deploy(make_request("1.0.0"))
    await deployer.deploy(make_request("1.1.0"))
    fake_helm.configure(inject={"rollback": "timeout"})
    with pytest.raises(DeployError) as caught:
        await deployer.rollback(make_request("1.0.0", purpose="rollback"))
    cause = "context deadline exceeded"
    assert str(caught.value) == (
        "helm rollback to revision 1 failed: Error: release wrktalk failed: "
        + fake_helm.wait_error(cause, joined="; ")
    )
    assert caught.value.output == f"Error: release wrktalk failed: {fake_helm.wait_error(cause)}"


async def test_rollback_refuses_an_unsafe_version(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    with pytest.raises(DeployError, match="invalid release version"):
        await make_deployer().rollback(make_request("1.0.0 --set x=y", purpose="rollback"))
    assert fake_helm.calls() == []
