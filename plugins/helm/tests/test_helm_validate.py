"""validate() and live_release(): Helm's own verdict before maintenance, and what runs now.

Chart and values errors come from Helm's real engine (the fake helm delegates lint,
template and rendering to helm_python, Helm v4.2.3's Go SDK).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from wrktalk_agent.interfaces import LiveState, ValidationError
from wrktalk_agent_helm import HelmDeployer

from .conftest import CONFIGMAP, FakeHelm, RequestFactory

pytestmark = pytest.mark.timeout(60)
MakeDeployer = Callable[..., HelmDeployer]


async def test_a_good_release_passes_and_changes_nothing(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    deployer = make_deployer()
    await deployer.deploy(make_request("1.0.0"))
    before = fake_helm.revisions()
    fake_helm.clear_log()
    request = make_request("1.1.0")
    assert list(await deployer.validate(request)) == []
    assert [c[0] for c in fake_helm.calls()] == ["lint", "template", "history", "upgrade"]
    assert fake_helm.calls()[0][:3] == ["lint", "--strict", str(request.workdir / "wrktalk")]
    assert "--dry-run=server" in fake_helm.calls()[3]
    assert fake_helm.revisions() == before


@pytest.mark.parametrize(
    ("template", "values", "message"),
    [
        (
            CONFIGMAP.replace("| quote }}", "| nosuchfunc }}", 1),
            None,
            'function "nosuchfunc" not defined',
        ),
        (CONFIGMAP, "replicaCount: 0\n", "at '/replicaCount': minimum: got 0, want 1"),
        (CONFIGMAP, "image:\n  tag: null\n", "image.tag is required"),
    ],
    ids=["template-error", "schema-violation", "missing-required-value"],
)
async def test_a_bad_release_is_refused_with_helms_own_message(
    fake_helm: FakeHelm,
    make_deployer: MakeDeployer,
    make_request: RequestFactory,
    template: str,
    values: str | None,
    message: str,
) -> None:
    request = make_request("1.0.0", template=template, values=values or "replicaCount: 2\n")
    with pytest.raises(ValidationError) as caught:
        await make_deployer().validate(request)
    assert message in str(caught.value)
    assert fake_helm.revisions() == []
    assert not any(c[0] == "upgrade" and "--dry-run=server" not in c for c in fake_helm.calls())


async def test_secrets_stay_out_of_validation_errors(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    request = make_request("1.0.0", values="replicaCount: 0\ndbPassword: s3cr3t-do-not-log\n")
    with pytest.raises(ValidationError) as caught:
        await make_deployer().validate(request)
    assert "s3cr3t" not in str(caught.value) + caught.value.output


@pytest.mark.parametrize("setting", ["fail", "warn"])
async def test_unreachable_cluster(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory, setting: str
) -> None:
    fake_helm.configure(cluster="unreachable")
    deployer = make_deployer(on_validation_unavailable=setting)
    # "Kubernetes cluster unreachable" in Helm 3, "kubernetes ..." in Helm 4
    said = f"{'K' if fake_helm.major == 3 else 'k'}ubernetes cluster unreachable"
    if setting == "fail":
        with pytest.raises(ValidationError, match=said) as caught:
            await deployer.validate(make_request("1.0.0"))
        assert "ON_VALIDATION_UNAVAILABLE=warn deploys anyway" in str(caught.value)
    else:
        [warning] = await deployer.validate(make_request("1.0.0"))
        assert warning.startswith("server-side dry run not run: ")
        assert said in warning


@pytest.mark.parametrize("setting", ["fail", "warn"])
async def test_cluster_gone_at_the_dry_run(
    fake_helm: FakeHelm,
    make_deployer: MakeDeployer,
    make_request: RequestFactory,
    monkeypatch: pytest.MonkeyPatch,
    setting: str,
) -> None:
    """The history answered, the dry run finds the cluster gone: still "cannot run"."""
    await make_deployer().deploy(make_request("1.0.0"))
    deployer = make_deployer(on_validation_unavailable=setting)
    real_latest = deployer.helm.latest

    async def latest_then_unreachable() -> object:
        found = await real_latest()
        fake_helm.configure(cluster="unreachable")
        return found

    monkeypatch.setattr(deployer.helm, "latest", latest_then_unreachable)
    if setting == "fail":
        with pytest.raises(ValidationError, match=r"(?i)server-side dry run not run: .*cluster"):
            await deployer.validate(make_request("1.1.0"))
    else:
        [warning] = await deployer.validate(make_request("1.1.0"))
        assert warning.lower().startswith(
            "server-side dry run not run: error: kubernetes cluster unreachable"
        )
    assert [c[0] for c in fake_helm.calls()][-2:] == ["history", "upgrade"]


@pytest.mark.parametrize("setting", ["fail", "warn"])
async def test_missing_helm(
    make_deployer: MakeDeployer, make_request: RequestFactory, setting: str
) -> None:
    deployer = make_deployer(binary="/nonexistent/helm", on_validation_unavailable=setting)
    if setting == "fail":
        with pytest.raises(ValidationError, match="cannot run helm binary /nonexistent/helm"):
            await deployer.validate(make_request("1.0.0"))
    else:
        [warning] = await deployer.validate(make_request("1.0.0"))
        assert "could not be validated" in warning


async def test_a_release_without_a_chart_is_refused(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    with pytest.raises(ValidationError, match="no Helm chart found"):
        await make_deployer().validate(make_request("1.0.0", layout="none"))


async def test_pending_release_skips_the_dry_run_with_a_warning(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    fake_helm.seed([("deployed", "wrktalk-agent release 1.0.0"), ("pending-upgrade", "x")])
    [warning] = await make_deployer().validate(make_request("1.1.0"))
    assert "is pending-upgrade; the deploy recovers it first" in warning


# -- live_release ----------------------------------------------------------------------
async def test_live_release_of_each_state(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    deployer = make_deployer()
    assert (await deployer.live_release()).state == "absent"
    await deployer.deploy(make_request("1.0.0"))
    await deployer.deploy(make_request("1.1.0"))
    live = await deployer.live_release()
    assert (live.version, live.state) == ("1.1.0", "deployed")

    await deployer.rollback(make_request("1.0.0", purpose="rollback"))  # "Rollback to 1"
    assert (await deployer.live_release()).version == "1.0.0"

    calls = len(fake_helm.calls())
    assert {c[0] for c in fake_helm.calls()[calls:]} <= {"history"}  # read-only


@pytest.mark.parametrize(
    "left", ["pending-upgrade", "pending-rollback", "uninstalling", "failed", "pending-install"]
)
async def test_live_release_of_an_interrupted_run_is_half_applied(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, left: str
) -> None:
    fake_helm.seed([("deployed", "wrktalk-agent release 1.0.0"), (left, "Preparing upgrade")])
    live = await make_deployer().live_release()
    assert live.state == "half-applied"
    assert live.version == "1.0.0"  # the best guess: what last ran fine
    assert f"revision 2 is {left}" in live.detail


async def test_live_release_when_helm_cannot_tell(
    fake_helm: FakeHelm, make_deployer: MakeDeployer
) -> None:
    fake_helm.configure(cluster="unreachable")
    live = await make_deployer().live_release()
    assert live == LiveState(None, "unknown", live.detail)
    assert "kubernetes cluster unreachable" in live.detail.lower()


async def test_live_release_of_a_release_not_made_by_the_agent(
    fake_helm: FakeHelm, make_deployer: MakeDeployer
) -> None:
    fake_helm.seed([("deployed", "Install complete")])
    live = await make_deployer().live_release()
    assert (live.version, live.state) == (None, "deployed")
    assert "not by wrktalk-agent" in live.detail
