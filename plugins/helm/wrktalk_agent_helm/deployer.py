"""The helm deployer: applies a WrkTalk release with ``helm upgrade --install``.

Every Helm revision the agent creates carries the description
``wrktalk-agent release <version>``; that is how a later rollback finds the revision of
a release version in ``helm history``, and how :meth:`HelmDeployer.live_release` tells
which release runs (see :mod:`wrktalk_agent_helm.history`).

The parts: :mod:`~wrktalk_agent_helm.client` runs helm, :mod:`~wrktalk_agent_helm.output`
turns what it prints into messages, :mod:`~wrktalk_agent_helm.recovery` unblocks a
release an interrupted helm left pending, :mod:`~wrktalk_agent_helm.validation` checks a
release before maintenance; this module holds the deployer's own flows.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from pydantic_settings import BaseSettings

from wrktalk_agent.interfaces import (
    CheckResult,
    DeployError,
    DeployOutcome,
    DeployRequest,
    LiveState,
    PluginContext,
    ValidationError,
    validate_version,
)
from wrktalk_agent.process import TIMED_OUT
from wrktalk_agent_helm.changes import summarize_manifests
from wrktalk_agent_helm.chart import find_chart, values_arg, values_flags
from wrktalk_agent_helm.client import QUERY_TIMEOUT, HelmClient
from wrktalk_agent_helm.history import find_revision, live_state, release_description
from wrktalk_agent_helm.output import bounded, helm_error
from wrktalk_agent_helm.recovery import recover_pending
from wrktalk_agent_helm.settings import HelmSettings
from wrktalk_agent_helm.validation import validate_release

__all__ = ["HelmDeployer", "find_chart", "find_revision", "helm_error", "release_description"]


class HelmDeployer:
    """Deploys and rolls back the WrkTalk Helm release (Helm 3 or 4)."""

    name: ClassVar[str] = "helm"
    chart_types: ClassVar[tuple[str, ...]] = ("helm",)
    settings_model: ClassVar[type[BaseSettings]] = HelmSettings

    def __init__(self, settings: HelmSettings | None, context: PluginContext) -> None:
        self.settings = settings if settings is not None else HelmSettings()
        self.context = context
        #: seconds past helm's own --timeout after which the agent stops helm itself
        self.hard_timeout_margin = 60.0
        self.helm = HelmClient(self.settings)

    # -- the Deployer protocol ---------------------------------------------------------
    async def check(self) -> list[CheckResult]:
        path = shutil.which(self.settings.binary)
        if path is None:
            return [
                CheckResult(
                    "helm binary",
                    False,
                    f"{self.settings.binary!r} not found; install Helm 3 or 4 or set "
                    "WRKTALK_AGENT_HELM_BINARY",
                )
            ]
        try:
            await self.helm.major()
        except DeployError as exc:
            return [CheckResult("helm binary", False, f"{path}: {exc}")]
        results = [CheckResult("helm binary", True, f"{path}, Helm {self.helm.version}")]
        namespace = self.settings.namespace
        listed = await self.helm.run(
            ["list", "--namespace", namespace, "--output", "json"],
            timeout=QUERY_TIMEOUT,
            capture_stdout=True,
        )
        if listed.returncode == TIMED_OUT:
            error = f"helm list got no answer within {QUERY_TIMEOUT:g}s"
            return [*results, CheckResult("kubernetes cluster", False, error)]
        if listed.ok:
            try:
                count = len(json.loads(listed.stdout or "[]"))
            except json.JSONDecodeError:
                return [*results, CheckResult("kubernetes cluster", False, "helm list: bad JSON")]
            return [
                *results,
                CheckResult("kubernetes cluster", True, "reachable"),
                CheckResult(
                    "namespace access",
                    True,
                    f"can list Helm releases in namespace {namespace!r} ({count} found)",
                ),
            ]
        error = helm_error(listed.output, listed.returncode)
        if "forbidden" in error:  # the API server answered: RBAC, not connectivity
            return [
                *results,
                CheckResult("kubernetes cluster", True, "reachable"),
                CheckResult("namespace access", False, error),
            ]
        return [
            *results,
            CheckResult("kubernetes cluster", False, error),
            CheckResult("namespace access", False, "not checked: the cluster is not reachable"),
        ]

    async def deploy(self, request: DeployRequest) -> DeployOutcome:
        version = self._checked_version(request)
        chart = find_chart(request.workdir)
        await self.helm.major()
        transcript: list[str] = []
        recovered = await self._recover_pending(request, transcript)
        outcome = await self._upgrade(request, chart, version, transcript)
        if recovered:
            outcome.details["recovered"] = recovered
        return outcome

    async def rollback(self, request: DeployRequest) -> DeployOutcome:
        version = self._checked_version(request)
        await self.helm.major()
        transcript: list[str] = []
        recovered = await self._recover_pending(request, transcript)
        revision = find_revision(await self.helm.history() or [], version)
        if revision is None:
            # Pruned by --history-max, uninstalled, or never installed through Helm: the core
            # extracted the release's artifact into the workdir, so install it again.
            await request.report(
                f"Helm keeps no revision of release {version}; redeploying it from its artifact"
            )
            outcome = await self._upgrade(request, find_chart(request.workdir), version, transcript)
        else:
            release = self.settings.release_name
            await request.report(
                f"rolling back Helm release {release} to revision {revision} (release {version})"
            )
            await self.helm.action(
                ["rollback", release, str(revision), *await self.helm.wait_flags()],
                what=f"helm rollback to revision {revision}",
                hard_timeout=self.settings.timeout_seconds + self.hard_timeout_margin,
                transcript=transcript,
            )
            outcome = await self._outcome("rollback", transcript, rolled_back_to=revision)
        if recovered:
            outcome.details["recovered"] = recovered
        return outcome

    async def validate(self, request: DeployRequest) -> Sequence[str]:
        """Check the release before anything changes: ``helm lint --strict`` and
        ``helm template`` with the release's values (every template rendered, the chart's
        ``values.schema.json`` applied; no cluster needed), then ``helm upgrade --install
        --dry-run=server``. That dry run renders with the cluster at hand (``lookup``
        works), maps every object of the new manifest and of the release's current one
        to a kind the API server serves (so a stored kind the cluster dropped is found
        here) and looks for existing resources another owner holds. It never sends the
        objects to the API server: the server's own validation, admission webhooks and
        quotas are first met by the deploy itself.

        Raises :class:`ValidationError` with Helm's own message when the release is bad.
        Validation that cannot run (helm missing, the cluster unreachable) fails the task
        or, with ``on_validation_unavailable=warn``, is returned as a warning.
        """
        try:
            version = self._checked_version(request)
            chart = find_chart(request.workdir)
        except DeployError as exc:
            raise ValidationError(str(exc)) from None
        return await validate_release(self.helm, request, chart, version)

    async def describe_changes(
        self, current_workdir: Path | None, target_workdir: Path
    ) -> list[str]:
        """Resources added, removed and changed, and container images changed, from the
        two releases' charts rendered with their own values (``helm template``; no
        cluster). Nothing of the rendered data is kept."""
        new = await self._render(target_workdir)
        old = await self._render(current_workdir) if current_workdir is not None else ""
        return await asyncio.to_thread(summarize_manifests, old, new)

    async def live_release(self) -> LiveState:
        """What the cluster runs, from Helm's storage only (read-only): the newest
        revision's status, and the release version recorded in its description."""
        try:
            history = await self.helm.history()
        except DeployError as exc:
            return LiveState(None, "unknown", str(exc))
        return live_state(history, self.settings.release_name, self.settings.namespace)

    # -- steps -------------------------------------------------------------------------
    async def _recover_pending(self, request: DeployRequest, transcript: list[str]) -> str | None:
        return await recover_pending(
            self.helm,
            request,
            transcript,
            hard_timeout=self.settings.timeout_seconds + self.hard_timeout_margin,
        )

    async def _upgrade(
        self, request: DeployRequest, chart: Path, version: str, transcript: list[str]
    ) -> DeployOutcome:
        release = self.settings.release_name
        create = ["--create-namespace"] if self.settings.create_namespace else []
        args = [
            "upgrade", "--install", release, str(chart),
            "--namespace", self.settings.namespace, *create,
            *values_flags(request.values_file),
            await self.helm.wait_flag(), "--timeout", self.settings.timeout,
            "--history-max", str(self.settings.history_max),
            await self.helm.atomic_flag(),
            "--description", release_description(version),
        ]  # fmt: skip
        await request.report(
            f"helm upgrade --install {release} with chart {chart.name} ({version})"
        )
        await self.helm.action(
            args,
            what=f"helm upgrade to release {version}",
            # A failed upgrade is rolled back by Helm itself (atomic), and that rollback
            # waits up to --timeout again: allow twice the timeout before stopping helm.
            hard_timeout=2 * self.settings.timeout_seconds + self.hard_timeout_margin,
            transcript=transcript,
            extra=self.settings.extra_args,
        )
        return await self._outcome("upgrade --install", transcript, chart=chart.name)

    async def _outcome(self, action: str, transcript: list[str], **facts: Any) -> DeployOutcome:
        details: dict[str, Any] = {
            "action": action,
            "helm_version": self.helm.version,
            "release_name": self.settings.release_name,
            "namespace": self.settings.namespace,
            **facts,
        }
        try:  # the change is done; failing to read the new revision must not fail the task
            history = await self.helm.history() or []
            details["revision"] = max((int(e["revision"]) for e in history), default=None)
        except DeployError:
            details["revision"] = None
        return DeployOutcome(output=bounded("\n".join(transcript)), details=details)

    async def _render(self, workdir: Path) -> str:
        chart = find_chart(workdir)
        values_file = workdir / "values.yaml"
        values = ["-f", values_arg(values_file)] if values_file.exists() else []
        result = await self.helm.run(
            ["template", self.settings.release_name, str(chart),
             "--namespace", self.settings.namespace, *values],
            timeout=QUERY_TIMEOUT, capture_stdout=True, connection=False,
        )  # fmt: skip
        if not result.ok:
            raise DeployError(
                f"helm template failed: {helm_error(result.output, result.returncode)}",
                system_changed=False,
            )
        return result.stdout

    def _checked_version(self, request: DeployRequest) -> str:
        if request.release.chart_type not in self.chart_types:
            raise DeployError(
                f"release {request.release.version!r} is a {request.release.chart_type!r} "
                "release; the helm deployer applies only 'helm' releases",
                system_changed=False,
            )
        try:
            return validate_version(request.release.version)
        except ValueError as exc:
            raise DeployError(str(exc), system_changed=False) from None
