"""The fake helm itself: the plugin tests are only as good as its likeness to Helm.

Expected outputs below are Helm 3's (cmd/helm and pkg/action in helm/helm).
"""

from __future__ import annotations

import json
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
