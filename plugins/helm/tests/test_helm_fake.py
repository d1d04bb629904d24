"""The fake helm itself: the plugin tests are only as good as its likeness to Helm.

Expected outputs below are Helm 3's (cmd/helm and pkg/action in helm/helm).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .conftest import FakeHelm


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["helm", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def chart(tmp_path: Path) -> Path:
    directory = tmp_path / "chart"
    directory.mkdir()
    (directory / "Chart.yaml").write_text(
        'apiVersion: v2\nname: web\nversion: 0.2.0\nappVersion: "1.27"\n'
    )
    return directory


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["status", "web"], "Error: release: not found"),
        (["history", "web"], "Error: release: not found"),
        (["rollback", "web", "1"], "Error: release: not found"),
        (["uninstall", "web"], "Error: uninstall: Release not loaded: web: release: not found"),
        (["frobnicate"], 'Error: unknown command "frobnicate" for "helm"'),
        (["upgrade", "web"], 'Error: "helm upgrade" requires 2 arguments'),
        (["upgrade", "web", "/nope", "--install"], 'Error: path "/nope" not found'),
        (["list", "-x"], "Error: unknown shorthand flag: 'x' in -x"),
        (
            ["upgrade", "-i", "web", ".", "--timeout", "5"],
            'Error: invalid argument "5" for "--timeout" flag: time: invalid duration "5"',
        ),
    ],
)
def test_errors_and_exit_status(fake_helm: FakeHelm, args: list[str], error: str) -> None:
    result = helm(*args)
    assert result.returncode == 1
    assert result.stderr.startswith(error)


def test_json_shapes(fake_helm: FakeHelm, chart: Path) -> None:
    assert helm("upgrade", "--install", "web", str(chart), "-n", "default").returncode == 0
    assert helm("upgrade", "--install", "web", str(chart), "-n", "default").returncode == 0

    status = json.loads(helm("status", "web", "-o", "json").stdout)
    assert {"name", "info", "config", "manifest", "version", "namespace"} <= status.keys()
    assert status["info"]["status"] == "deployed"
    assert status["version"] == 2

    history = json.loads(helm("history", "web", "-o", "json").stdout)
    assert [set(r) for r in history] == [
        {"revision", "updated", "status", "chart", "app_version", "description"}
    ] * 2
    assert [(r["revision"], r["status"], r["description"]) for r in history] == [
        (1, "superseded", "Install complete"),
        (2, "deployed", "Upgrade complete"),
    ]
    assert history[0]["chart"] == "web-0.2.0"
    assert history[0]["app_version"] == "1.27"

    listed = json.loads(helm("list", "-o", "json").stdout)
    assert listed[0]["revision"] == "2"  # a string in `helm list`, unlike history
    assert set(listed[0]) == {
        "name",
        "namespace",
        "revision",
        "updated",
        "status",
        "chart",
        "app_version",
    }


def test_install_needs_the_namespace_or_create_namespace(fake_helm: FakeHelm, chart: Path) -> None:
    result = helm("upgrade", "--install", "web", str(chart), "-n", "apps")
    assert result.stderr.strip() == 'Error: create: failed to create: namespaces "apps" not found'
    assert (
        helm(
            "upgrade", "--install", "web", str(chart), "-n", "apps", "--create-namespace"
        ).returncode
        == 0
    )


def test_pending_release_blocks_upgrades_but_not_rollback(fake_helm: FakeHelm, chart: Path) -> None:
    fake_helm.seed(
        [("deployed", "Install complete"), ("pending-upgrade", "Preparing upgrade")],
        "web",
        "default",
    )
    result = helm("upgrade", "--install", "web", str(chart))
    assert result.stderr.strip() == (
        "Error: UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress"
    )
    assert helm("rollback", "web", "7").stderr.strip() == "Error: release has no 7 version"
    assert helm("rollback", "web", "1").stdout.strip() == "Rollback was a success! Happy Helming!"


def test_version_template(fake_helm: FakeHelm) -> None:
    assert helm("version", "--template", "{{.Version}}").stdout == fake_helm.version
    fake_helm.configure(version="v4.0.1")
    assert helm("version", "--template", "{{.Version}}").stdout == "v4.0.1"
    result = helm("upgrade", "-i", "web", ".", "--atomic")
    assert "Flag --atomic has been deprecated, use --rollback-on-failure instead" in result.stderr


# -- where Helm 4 differs from Helm 3.16 -------------------------------------------------
def test_unreachable_cluster_wording(fake_helm: FakeHelm) -> None:
    fake_helm.configure(cluster="unreachable")
    error = helm("history", "web", "-o", "json").stderr
    if fake_helm.major == 3:
        assert error.startswith("Error: Kubernetes cluster unreachable: Get ")
    else:  # pkg/kube/client.go IsReachable, lower case since Helm 4
        assert error.startswith("Error: kubernetes cluster unreachable: Get ")


def test_flags_helm_4_removed(fake_helm: FakeHelm, chart: Path) -> None:
    assert helm("upgrade", "-i", "web", str(chart), "-n", "default").returncode == 0
    assert helm("upgrade", "-i", "web", str(chart), "-n", "default").returncode == 0
    recreate = helm("rollback", "web", "1", "--recreate-pods")
    client = helm("version", "-c")
    if fake_helm.major == 3:
        assert (recreate.returncode, client.returncode) == (0, 0)
    else:
        assert recreate.stderr.strip() == "Error: unknown flag: --recreate-pods"
        assert client.stderr.strip() == "Error: unknown shorthand flag: 'c' in -c"
        assert helm("version", "--client").stderr.strip() == "Error: unknown flag: --client"


def test_status_json_deleted_and_notes(fake_helm: FakeHelm, chart: Path) -> None:
    assert helm("upgrade", "-i", "web", str(chart)).returncode == 0
    info = json.loads(helm("status", "web", "-o", "json").stdout)["info"]
    assert "notes" not in info  # omitempty in both
    if fake_helm.major == 3:  # helm's own time type writes an unset time as ""
        assert info["deleted"] == ""
    else:  # omitzero
        assert "deleted" not in info


def test_wait_errors(fake_helm: FakeHelm, chart: Path) -> None:
    assert helm("upgrade", "-i", "web", str(chart)).returncode == 0
    fake_helm.configure(inject={"upgrade": "timeout"})
    strategy = [] if fake_helm.major == 3 else ["--wait=legacy"]
    legacy = helm("upgrade", "web", str(chart), "--wait", *strategy)
    assert legacy.stderr.strip() == "Error: UPGRADE FAILED: context deadline exceeded"
    watcher = helm("upgrade", "web", str(chart), "--wait")
    if fake_helm.major == 3:
        assert watcher.stderr.strip() == "Error: UPGRADE FAILED: context deadline exceeded"
    else:  # errors.Join: one line per resource, then the context's error
        assert watcher.stderr.strip().splitlines() == [
            "Error: UPGRADE FAILED: resource Deployment/default/web not ready. status: "
            "InProgress, message: Available: 0/1",
            "context deadline exceeded",
        ]


# -- what the agent refuses in EXTRA_ARGS, and why ------------------------------------
@pytest.mark.parametrize("how", ["--debug", "HELM_DEBUG", "-o json", "-o yaml", "plain"])
def test_debug_and_output_flags_print_the_values(
    fake_helm: FakeHelm, chart: Path, tmp_path: Path, how: str
) -> None:
    values = tmp_path / "values.yaml"
    values.write_text("dbPassword: s3cr3t-do-not-log\n")
    args = ["upgrade", "-i", "web", str(chart), "-f", str(values)]
    env = dict(os.environ)
    if how == "HELM_DEBUG":
        env["HELM_DEBUG"] = "true"
    elif how != "plain":
        args += how.split()
    result = subprocess.run(["helm", *args], capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 0
    assert ("s3cr3t-do-not-log" in result.stdout) == (how != "plain")


# -- uninstall failures and kinds the API server no longer serves -----------------------
@pytest.mark.parametrize("mode", ["before-purge", "after-purge"])
def test_uninstall_failures(fake_helm: FakeHelm, chart: Path, mode: str) -> None:
    assert helm("upgrade", "-i", "web", str(chart)).returncode == 0
    fake_helm.configure(inject={"uninstall": mode})
    result = helm("uninstall", "web", "--wait")
    assert result.returncode == 1
    if mode == "before-purge":
        assert result.stderr.strip() == "Error: failed to delete release: web"
        assert [r["status"] for r in fake_helm.revisions("web", "default")] == ["uninstalling"]
    else:
        assert result.stderr.startswith("Error: uninstallation completed with 1 error(s): ")
        assert result.stderr.strip().endswith("context deadline exceeded")
        assert fake_helm.revisions("web", "default") == []


CRON = """apiVersion: batch/v1beta1
kind: CronJob
metadata:
  name: {{ .Release.Name }}-nightly
spec: {}
"""


def test_a_stored_kind_no_longer_served_fails_upgrade_rollback_and_uninstall(
    fake_helm: FakeHelm, chart: Path
) -> None:
    (chart / "templates").mkdir()
    (chart / "templates" / "cron.yaml").write_text(CRON)
    assert helm("upgrade", "-i", "web", str(chart)).returncode == 0
    (chart / "templates" / "cron.yaml").unlink()  # the next chart no longer has it ...
    assert helm("upgrade", "web", str(chart)).returncode == 0
    fake_helm.configure(unserved=["batch/v1beta1/CronJob"])  # ... but revision 1 does
    unserved = (
        'resource mapping not found for name: "web-nightly" namespace: "default" from "": '
        'no matches for kind "CronJob" in version "batch/v1beta1"'
    )
    # revision 2 is deployed and no longer names it: an upgrade works
    assert helm("upgrade", "web", str(chart)).returncode == 0
    rollback = helm("rollback", "web", "1")
    assert rollback.stderr.startswith(
        f"Error: unable to build kubernetes objects from new release manifest: {unserved}"
    )
    statuses = [r["status"] for r in fake_helm.revisions("web", "default")]
    assert statuses == ["superseded", "superseded", "deployed", "pending-rollback"]
    # the pending revision carries revision 1's manifest: now everything is refused
    assert helm("upgrade", "web", str(chart)).stderr.startswith(
        "Error: UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress"
    )
    uninstall = helm("uninstall", "web")
    assert uninstall.stderr.strip() == "Error: failed to delete release: web"
    assert fake_helm.revisions("web", "default")[-1]["status"] == "uninstalling"
    assert helm("rollback", "web", "3").stderr.startswith(
        f"Error: unable to build kubernetes objects from current release manifest: {unserved}"
    )
