"""What real Helm can leave or do that the deployer once did not handle (issue 20).

Every test runs against the fake helm as Helm 3.16 and as Helm 4.2.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest

from wrktalk_agent.interfaces import DeployError, ValidationError
from wrktalk_agent_helm import HelmDeployer, HelmSettings

from .conftest import FakeHelm, RequestFactory
from .test_helm_deploy import HISTORY, LATEST

pytestmark = pytest.mark.timeout(60)
MakeDeployer = Callable[..., HelmDeployer]
CERTIFICATE = """apiVersion: cert-manager.io/v1
kind: Certificate
metadata:
  name: {{ .Release.Name }}-tls
spec:
  secretName: {{ .Release.Name }}-tls
"""


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["helm", *args], capture_output=True, text=True, timeout=30)


async def test_uninstalling_release_is_finished_then_installed(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    fake_helm.seed(
        [
            ("superseded", "wrktalk-agent release 1.0.0"),
            ("uninstalling", "Deletion in progress (or silently failed)"),
        ]
    )
    # what Helm itself says to an upgrade in that state
    chart = make_request("9.9.9").workdir / "wrktalk"
    refused = helm("upgrade", "--install", "wrktalk", str(chart), "-n", "wrktalk")
    assert refused.stderr.strip() == 'Error: UPGRADE FAILED: "wrktalk" has no deployed releases'

    outcome = await make_deployer().deploy(make_request("1.1.0"))
    assert outcome.details["recovered"] == "finished the interrupted uninstall of revision 2"
    assert [(r["revision"], r["status"]) for r in fake_helm.revisions()] == [(1, "deployed")]
    assert ["uninstall", "wrktalk", "--namespace", "wrktalk", fake_helm.wait,
            "--timeout", "10m"] in fake_helm.calls()  # fmt: skip


async def test_rollback_of_an_uninstalling_release_redeploys_the_artifact(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    fake_helm.seed([("uninstalling", "Deletion in progress (or silently failed)")])
    outcome = await make_deployer().rollback(make_request("1.0.0", purpose="rollback"))
    assert outcome.details["action"] == "upgrade --install"
    assert fake_helm.revisions()[-1]["description"] == "wrktalk-agent release 1.0.0"


async def test_failed_after_a_cancelled_upgrade_is_upgraded_as_it_is(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    fake_helm.seed(
        [
            ("deployed", "wrktalk-agent release 1.0.0"),
            ("failed", 'Upgrade "wrktalk" failed: context canceled'),
        ]
    )
    outcome = await make_deployer().deploy(make_request("1.1.0"))
    assert "recovered" not in outcome.details
    assert [r["status"] for r in fake_helm.revisions()] == ["superseded", "failed", "deployed"]


async def test_state_is_read_from_storage_not_from_the_cluster(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    deployer = make_deployer()
    await deployer.deploy(make_request("1.0.0", template=CERTIFICATE))
    fake_helm.configure(unserved=["cert-manager.io/v1/Certificate"])  # CRD deleted
    status = helm("status", "wrktalk", "-n", "wrktalk", "-o", "json")
    if fake_helm.major == 4:  # Helm 4's status asks the API server for every resource
        assert status.returncode == 1
        assert 'no matches for kind "Certificate" in version "cert-manager.io/v1"' in status.stderr
    else:
        assert status.returncode == 0
    fake_helm.clear_log()

    live = await deployer.live_release()
    assert (live.version, live.state) == ("1.0.0", "deployed")
    fake_helm.clear_log()
    # real Helm cannot upgrade over that stored manifest either (see the next test), but
    # the agent reads the release's state without asking the cluster
    with pytest.raises(DeployError, match="current release manifest"):
        await deployer.deploy(make_request("1.1.0"))
    assert not any(call[0] == "status" for call in fake_helm.calls())
    assert fake_helm.calls()[0] == LATEST


async def test_a_rollback_to_a_revision_naming_a_dropped_kind_is_refused_with_the_remedy(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    deployer = make_deployer()
    await deployer.deploy(make_request("1.0.0", template=CERTIFICATE))
    await deployer.deploy(make_request("1.1.0"))  # 1.1.0 has no Certificate
    fake_helm.configure(unserved=["cert-manager.io/v1/Certificate"])  # CRD deleted
    before = fake_helm.revisions()

    # deploying 1.2.0 works: Helm builds only the deployed revision's (1.1.0) manifest
    assert list(await deployer.validate(make_request("1.2.0"))) == []
    # returning to 1.0.0 does not: validation cannot see it (a rollback has no dry run),
    # the rollback fails with what to do, and Helm leaves its revision pending
    with pytest.raises(DeployError) as caught:
        await deployer.rollback(make_request("1.0.0", purpose="rollback"))
    message = str(caught.value)
    assert message.startswith(
        "helm rollback to revision 1 failed: Error: unable to build kubernetes objects from "
        'new release manifest: resource mapping not found for name: "wrktalk-tls"'
    )
    assert 'no matches for kind "Certificate" in version "cert-manager.io/v1"' in message
    assert len(fake_helm.revisions()) == len(before) + 1
    assert fake_helm.revisions()[-1]["status"] == "pending-rollback"

    assert "helm-mapkubeapis" in message
    # the pending revision carries 1.0.0's manifest: validation skips its dry run (a
    # deploy recovers a pending release first), and that recovery names the remedy
    [warning] = await deployer.validate(make_request("1.2.0"))
    assert "is pending-rollback; the deploy recovers it first" in warning
    with pytest.raises(DeployError) as stuck:
        await deployer.deploy(make_request("1.2.0"))
    assert "helm rollback of the stuck release to revision 2 failed" in str(stuck.value)
    assert "from current release manifest" in str(stuck.value)
    assert "helm-mapkubeapis" in str(stuck.value)


async def test_a_dropped_kind_in_the_deployed_revision_fails_validation_with_the_remedy(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    deployer = make_deployer()
    await deployer.deploy(make_request("1.0.0", template=CERTIFICATE))
    fake_helm.configure(unserved=["cert-manager.io/v1/Certificate"])
    before = fake_helm.revisions()
    with pytest.raises(ValidationError) as refused:
        await deployer.validate(make_request("1.1.0"))
    message = str(refused.value)
    assert message.startswith(
        "helm upgrade --dry-run=server failed: Error: UPGRADE FAILED: unable to build "
        "kubernetes objects from current release manifest: "
    )
    assert "reinstall its CRD, or rewrite the stored release with the helm-mapkubeapis" in message
    with pytest.raises(DeployError, match="helm-mapkubeapis") as caught:
        await deployer.deploy(make_request("1.1.0"))  # the deploy itself says the same
    assert "UPGRADE FAILED: unable to build kubernetes objects" in str(caught.value)
    assert fake_helm.revisions() == before  # Helm stored nothing


@pytest.mark.parametrize("text", ["v3.16", "v3.16+unreleased", "v4.2.0-rc.1", "v4.2"])
async def test_versions_of_source_builds_are_accepted(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory, text: str
) -> None:
    fake_helm.configure(version=text)
    outcome = await make_deployer().deploy(make_request("1.0.0"))
    assert outcome.details["helm_version"] == text
    atomic = "--atomic" if text.startswith("v3") else "--rollback-on-failure"
    assert atomic in fake_helm.calls()[2]


async def test_values_file_path_with_commas(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    request = make_request("1.0.0", workdir_name='release,with "commas"')
    await make_deployer().deploy(request)
    upgrade = fake_helm.calls()[2]
    assert (
        upgrade[upgrade.index("-f") + 1]
        == f'"{str(request.values_file).replace(chr(34), 2 * chr(34))}"'
    )
    assert fake_helm.revisions()[0]["config"]["dbPassword"] == "s3cr3t-do-not-log"


@pytest.mark.parametrize("item", ["-nother", "-n=other", "-in", "-i", "-io", "-ojson"])
def test_extra_args_cannot_slip_a_shorthand_past_the_check(item: str) -> None:
    with pytest.raises(ValueError, match=f"'{item}' is not allowed: "):
        HelmSettings(extra_args=[item])


@pytest.mark.parametrize("item", ["-fvalues-n.yaml", "--set=n=1", "-lowner=ops", "--set=o=1"])
def test_extra_args_values_that_merely_contain_a_managed_letter(item: str) -> None:
    assert HelmSettings(extra_args=[item]).extra_args == [item]


async def test_rollback_sees_revisions_beyond_the_newest_256(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    revisions = [("superseded", "wrktalk-agent release 0.9.0")]
    revisions += [("superseded", f"wrktalk-agent release 1.0.{n}") for n in range(298)]
    revisions += [("deployed", "wrktalk-agent release 2.0.0")]
    fake_helm.seed(revisions)
    assert len(json.loads(helm("history", "wrktalk", "-n", "wrktalk", "-o", "json").stdout)) == 256

    outcome = await make_deployer(history_max=0).rollback(make_request("0.9.0", purpose="rollback"))
    assert outcome.details["rolled_back_to"] == 1
    assert HISTORY in fake_helm.calls()


async def test_helm_4_wait_strategy(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    request = make_request("1.0.0")
    chart = str(request.workdir / "wrktalk")
    bogus = helm("upgrade", "-i", "web", chart, "--wait=soon")
    if fake_helm.major == 4:
        assert bogus.stderr.strip() == (
            'Error: invalid argument "soon" for "--wait" flag: invalid wait input "soon". '
            "Valid inputs are watcher, hookOnly, and legacy"
        )
        await make_deployer(wait_strategy="legacy").deploy(request)
        assert "--wait=legacy" in fake_helm.calls()[-2]
    else:  # Helm 3's --wait is a boolean: the agent must never give it a strategy
        assert "strconv.ParseBool" in bogus.stderr
        await make_deployer(wait_strategy="legacy").deploy(request)
        assert "--wait" in fake_helm.calls()[-2]


async def test_a_release_without_values_does_not_inherit_the_previous_ones(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    deployer = make_deployer()
    await deployer.deploy(make_request("1.0.0"))
    await deployer.deploy(make_request("1.1.0", values=None))
    assert fake_helm.revisions()[0]["config"]["dbPassword"] == "s3cr3t-do-not-log"
    assert fake_helm.revisions()[1]["config"] == {}  # --reset-values: the chart's defaults


def test_helm_reuses_values_without_reset(
    fake_helm: FakeHelm, make_request: RequestFactory
) -> None:
    """The fake does what Helm does when an upgrade gets no values, so the test above can fail."""
    request = make_request("1.0.0")
    chart = str(request.workdir / "wrktalk")
    assert helm("upgrade", "-i", "web", chart, "-f", str(request.values_file)).returncode == 0
    assert helm("upgrade", "-i", "web", chart).returncode == 0
    assert fake_helm.revisions("web", "default")[1]["config"]["dbPassword"] == "s3cr3t-do-not-log"


def test_helm_4_status_json_has_resources(
    fake_helm: FakeHelm, make_request: RequestFactory
) -> None:
    chart = str(make_request("1.0.0").workdir / "wrktalk")
    assert helm("upgrade", "-i", "web", chart).returncode == 0
    info = json.loads(helm("status", "web", "-o", "json").stdout)["info"]
    assert ("resources" in info) == (fake_helm.major == 4)


def test_history_max_prunes_before_storing_and_keeps_the_deployed_one(
    fake_helm: FakeHelm, make_request: RequestFactory
) -> None:
    fake_helm.seed([("deployed", "one"), ("failed", "two"), ("failed", "three")], "web", "default")
    chart = str(make_request("1.0.0").workdir / "wrktalk")
    assert helm("upgrade", "-i", "web", chart, "--history-max", "2").returncode == 0
    assert [(r["revision"], r["status"]) for r in fake_helm.revisions("web", "default")] == [
        (1, "superseded"),
        (4, "deployed"),
    ]
