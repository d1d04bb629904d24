"""Fixtures for the helm plugin's tests: the fake ``helm`` on PATH, deployers, requests."""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest

from wrktalk_agent.interfaces import DeployRequest, PluginContext, Recipient, Release, SmtpConfig
from wrktalk_agent_helm import HelmDeployer, HelmSettings

FAKE_HELM = Path(__file__).with_name("fake_helm.py")

CHART_YAML = 'apiVersion: v2\nname: wrktalk\nversion: 2.3.0\nappVersion: "{version}"\n'
CHART_VALUES = "replicaCount: 1\nimage:\n  tag: stable\n"
CONFIGMAP = """apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-config
data:
  replicas: {{ .Values.replicaCount | quote }}
  image: {{ required "image.tag is required" .Values.image.tag | quote }}
"""
SCHEMA = """{"$schema": "https://json-schema.org/draft-07/schema#", "type": "object",
 "properties": {"replicaCount": {"type": "integer", "minimum": 1}}}
"""
VALUES_YAML = "replicaCount: 1\ndbPassword: s3cr3t-do-not-log\n"
#: the Helm versions every fake-helm test runs against: where the majors differ, the fake
#: follows each (see fake_helm.py)
HELM_VERSIONS = {"3.16": "v3.16.4", "4.2": "v4.2.4"}


@dataclass
class FakeHelm:
    """Handle on the fake helm of one test: its state file and its argv log."""

    bin_dir: Path
    state_path: Path
    log_path: Path
    version: str = "v3.16.4"

    @property
    def major(self) -> int:
        return int(self.version.lstrip("v").split(".")[0])

    @property
    def atomic(self) -> str:
        """The deployer's flag for an upgrade that undoes itself on failure."""
        return "--atomic" if self.major == 3 else "--rollback-on-failure"

    @property
    def atomic_word(self) -> str:
        return "atomic" if self.major == 3 else "rollback-on-failure"

    @property
    def wait(self) -> str:
        return "--wait" if self.major == 3 else "--wait=watcher"

    def wait_error(self, cause: str, *, joined: str = "\n", resource: str = "wrktalk") -> str:
        """What Helm says when the agent's wait gives up (``joined``: how the deployer's
        error message joins Helm's lines): Helm 4's watcher first names every resource it
        gave up on, one per line (the fake's: a Deployment named after the release)."""
        if self.major == 3:
            return cause
        return (
            f"resource Deployment/wrktalk/{resource} not ready. status: InProgress, "
            f"message: Available: 0/1{joined}{cause}"
        )

    def configure(self, **values: Any) -> None:
        state = self.state()
        state.update(values)
        self.state_path.write_text(json.dumps(state))
        self.version = state.get("version", self.version)

    def state(self) -> dict[str, Any]:
        if not self.state_path.exists():
            return {}
        return json.loads(self.state_path.read_text())

    def revisions(self, name: str = "wrktalk", namespace: str = "wrktalk") -> list[dict[str, Any]]:
        return self.state().get("releases", {}).get(f"{namespace}/{name}", [])

    def seed(
        self, revisions: list[tuple[str, str]], name: str = "wrktalk", namespace: str = "wrktalk"
    ) -> None:
        """A release history from (status, description) pairs, revision 1 first."""
        history = [
            {"revision": n, "updated": "2024-05-01T10:00:00Z", "status": status,
             "chart": "wrktalk-2.3.0", "app_version": "1.0.0", "description": description,
             "config": {}, "notes": ""}
            for n, (status, description) in enumerate(revisions, start=1)
        ]  # fmt: skip
        state = self.state()
        state.setdefault("releases", {})[f"{namespace}/{name}"] = history
        state["namespaces"] = sorted({*state.get("namespaces", ["default"]), namespace})
        self.state_path.write_text(json.dumps(state))

    def calls(self) -> list[list[str]]:
        """argv of every invocation so far, without the program name."""
        if not self.log_path.exists():
            return []
        return [json.loads(line)["argv"] for line in self.log_path.read_text().splitlines()]

    def pids(self) -> list[int]:
        if not self.log_path.exists():
            return []
        return [json.loads(line)["pid"] for line in self.log_path.read_text().splitlines()]

    def clear_log(self) -> None:
        self.log_path.unlink(missing_ok=True)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from the environment: keep the developer's own out of the tests."""
    for name in list(os.environ):
        if name.startswith("WRKTALK_AGENT_HELM_") or name == "WRKTALK_AGENT_KUBE_NAMESPACE":
            monkeypatch.delenv(name)


@pytest.fixture(params=list(HELM_VERSIONS))
def helm_version(request: pytest.FixtureRequest) -> str:
    return HELM_VERSIONS[request.param]


@pytest.fixture
def fake_helm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, helm_version: str) -> FakeHelm:
    """The fake helm as ``helm``, first on PATH, acting as Helm 3.16 and as Helm 4.2."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable = bin_dir / "helm"
    # A real executable (shebang to this interpreter), found through PATH like Helm.
    executable.write_text(f"#!{sys.executable}\n" + FAKE_HELM.read_text())
    executable.chmod(0o755)
    fake = FakeHelm(
        bin_dir, tmp_path / "helm-state.json", tmp_path / "helm-calls.jsonl", helm_version
    )
    fake.configure(version=helm_version)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_HELM_STATE", str(fake.state_path))
    monkeypatch.setenv("FAKE_HELM_LOG", str(fake.log_path))
    return fake


class _NoDirectory:
    """The deployer never reads the database; an empty directory keeps that visible."""

    async def active_admins(self) -> list[Recipient]:
        return []

    async def smtp_config(self) -> SmtpConfig:
        return SmtpConfig()


@pytest.fixture
def make_deployer(tmp_path: Path) -> Callable[..., HelmDeployer]:
    def make(**settings: Any) -> HelmDeployer:
        context = PluginContext(
            agent_id="test-agent",
            installation="Test",
            work_dir=tmp_path / "work",
            directory=_NoDirectory(),
        )
        return HelmDeployer(HelmSettings(**settings), context)

    return make


@dataclass
class RequestFactory:
    root: Path
    reports: list[str] = field(default_factory=list)

    async def _report(self, line: str) -> None:
        self.reports.append(line)

    def __call__(
        self,
        version: str,
        *,
        purpose: Literal["deploy", "rollback", "auto-rollback"] = "deploy",
        layout: Literal["root", "subdir", "tgz", "none"] = "subdir",
        values: str | None = VALUES_YAML,
        template: str = CONFIGMAP,
        schema: str | None = SCHEMA,
        workdir_name: str | None = None,
    ) -> DeployRequest:
        workdir = self.root / (workdir_name or f"release-{uuid.uuid4().hex[:8]}")
        workdir.mkdir(parents=True)
        chart_yaml = CHART_YAML.format(version=version)
        if layout in ("root", "subdir"):
            chart_dir = workdir if layout == "root" else workdir / "wrktalk"
            (chart_dir / "templates").mkdir(parents=True)
            (chart_dir / "Chart.yaml").write_text(chart_yaml)
            (chart_dir / "values.yaml").write_text(CHART_VALUES)
            (chart_dir / "templates" / "configmap.yaml").write_text(template)
            if schema is not None:
                (chart_dir / "values.schema.json").write_text(schema)
        elif layout == "tgz":
            _package_chart(workdir / "wrktalk-2.3.0.tgz", chart_yaml)
        values_file = None
        if values is not None:
            values_file = workdir / ("release-values.yaml" if layout == "root" else "values.yaml")
            values_file.write_text(values)
        return DeployRequest(
            task_id=uuid.uuid4(),
            purpose=purpose,
            release=Release(id=uuid.uuid4(), version=version, chart_type="helm", sha256="0" * 64),
            workdir=workdir,
            env_file=None,
            values_file=values_file,
            current=None,
            report=self._report,
        )


def _package_chart(path: Path, chart_yaml: str) -> None:
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        data = chart_yaml.encode()
        info = tarfile.TarInfo("wrktalk/Chart.yaml")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def make_request(tmp_path: Path) -> Iterator[RequestFactory]:
    yield RequestFactory(tmp_path / "releases")
