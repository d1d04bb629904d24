"""check(): what `wrktalk-agent check` tells an operator about Helm and the cluster."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from wrktalk_agent.interfaces import CheckResult
from wrktalk_agent_helm import HelmDeployer

from .conftest import FakeHelm, RequestFactory

pytestmark = pytest.mark.timeout(60)
MakeDeployer = Callable[..., HelmDeployer]


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results}


async def test_all_good(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    deployer = make_deployer(kube_context="onprem")
    await deployer.deploy(make_request("1.0.0"))
    results = by_name(await deployer.check())

    assert list(results) == ["helm binary", "kubernetes cluster", "namespace access"]
    assert all(r.ok for r in results.values())
    assert (
        results["helm binary"].detail == f"{fake_helm.bin_dir / 'helm'}, Helm {fake_helm.version}"
    )
    assert results["namespace access"].detail == (
        "can list Helm releases in namespace 'wrktalk' (1 found)"
    )
    assert fake_helm.calls()[-1] == [
        "list", "--namespace", "wrktalk", "--output", "json", "--kube-context", "onprem"
    ]  # fmt: skip


async def test_missing_binary(fake_helm: FakeHelm, make_deployer: MakeDeployer) -> None:
    results = await make_deployer(binary="helm3-not-installed").check()
    assert results == [
        CheckResult(
            "helm binary",
            False,
            "'helm3-not-installed' not found; install Helm 3 or 4 or set WRKTALK_AGENT_HELM_BINARY",
        )
    ]
    assert fake_helm.calls() == []


async def test_unsupported_version(fake_helm: FakeHelm, make_deployer: MakeDeployer) -> None:
    fake_helm.configure(version="v2.17.0")
    [result] = await make_deployer().check()
    assert not result.ok
    assert "Helm v2.17.0 is not supported" in result.detail


async def test_cluster_unreachable(fake_helm: FakeHelm, make_deployer: MakeDeployer) -> None:
    fake_helm.configure(cluster="unreachable")
    results = by_name(await make_deployer().check())
    assert results["helm binary"].ok
    assert not results["kubernetes cluster"].ok
    k = "K" if fake_helm.major == 3 else "k"  # Helm 4 writes it in lower case
    assert results["kubernetes cluster"].detail.startswith(
        f'Error: {k}ubernetes cluster unreachable: Get "https://127.0.0.1:6443/version"'
    )
    assert results["namespace access"] == CheckResult(
        "namespace access", False, "not checked: the cluster is not reachable"
    )


async def test_namespace_forbidden(fake_helm: FakeHelm, make_deployer: MakeDeployer) -> None:
    fake_helm.configure(cluster="forbidden")
    results = by_name(await make_deployer(namespace="apps").check())
    assert results["kubernetes cluster"].ok
    assert not results["namespace access"].ok
    assert 'cannot list resource "secrets" in API group "" in the namespace "apps"' in (
        results["namespace access"].detail
    )
