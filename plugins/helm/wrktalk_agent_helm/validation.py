"""Checks of a Helm release before anything changes: ``helm lint --strict`` and
``helm template`` offline, then ``helm upgrade --install --dry-run=server`` against the
cluster (see :meth:`~wrktalk_agent_helm.deployer.HelmDeployer.validate`)."""

from __future__ import annotations

from pathlib import Path

from wrktalk_agent.interfaces import DeployError, DeployRequest, ValidationError
from wrktalk_agent.process import TIMED_OUT
from wrktalk_agent_helm.chart import values_flags
from wrktalk_agent_helm.client import QUERY_TIMEOUT, HelmClient
from wrktalk_agent_helm.history import release_description
from wrktalk_agent_helm.output import UNREACHABLE, bounded, explained, helm_error
from wrktalk_agent_helm.recovery import STUCK_STATUSES


async def validate_release(
    helm: HelmClient, request: DeployRequest, chart: Path, version: str
) -> list[str]:
    """Validate ``chart`` with the request's values; returns the warnings. Raises
    :class:`ValidationError` when the release is bad, or when validation cannot run
    and the settings say so."""
    try:
        await helm.major()
    except DeployError as exc:
        return unavailable(helm, f"the release could not be validated: {exc}")
    await _lint_and_render(helm, request, chart)
    return await _dry_run(helm, request, chart, version)


def unavailable(helm: HelmClient, message: str) -> list[str]:
    """Validation that cannot run: a failure, or (on_validation_unavailable=warn) a
    warning the core writes into the timeline before deploying anyway."""
    if helm.settings.on_validation_unavailable == "fail":
        raise ValidationError(
            f"{message} (WRKTALK_AGENT_HELM_ON_VALIDATION_UNAVAILABLE=warn deploys anyway)"
        )
    return [message]


async def _lint_and_render(helm: HelmClient, request: DeployRequest, chart: Path) -> None:
    """``helm lint --strict`` and ``helm template``: no cluster needed."""
    namespace = ["--namespace", helm.settings.namespace]
    values = values_flags(request.values_file)[:-1]  # lint/template know no --reset-values
    lint = await helm.run(
        ["lint", "--strict", str(chart), *namespace, *values],
        timeout=QUERY_TIMEOUT, capture_stdout=True, connection=False,
    )  # fmt: skip
    if not lint.ok:
        findings = [
            line.strip()
            for line in lint.stdout.splitlines()
            if line.startswith(("[ERROR]", "[WARNING]"))
        ]
        summary = "; ".join(findings) or helm_error(lint.output, lint.returncode)
        raise ValidationError(
            f"helm lint --strict refused the chart: {summary}"[:1000],
            output=bounded("\n".join([*findings, lint.output])),
        )
    # The rendered manifests hold the values (secrets): captured and dropped.
    template = await helm.run(
        ["template", helm.settings.release_name, str(chart), *namespace, *values],
        timeout=QUERY_TIMEOUT, capture_stdout=True, connection=False,
    )  # fmt: skip
    if not template.ok:
        raise ValidationError(
            f"helm template failed: {helm_error(template.output, template.returncode)}",
            output=bounded(template.output),
        )


async def _dry_run(
    helm: HelmClient, request: DeployRequest, chart: Path, version: str
) -> list[str]:
    """``helm upgrade --install --dry-run=server``, unless the release is stuck (the
    deploy recovers it first, and Helm would refuse the dry run)."""
    release = helm.settings.release_name
    try:
        latest = await helm.latest()
    except DeployError as exc:
        return unavailable(helm, f"server-side dry run not run: {exc}")
    if latest is not None and latest.get("status") in STUCK_STATUSES:
        return [
            f"server-side dry run skipped: Helm release {release} is "
            f"{latest.get('status')}; the deploy recovers it first"
        ]
    dry_run = await helm.run(
        ["upgrade", "--install", release, str(chart), "--namespace", helm.settings.namespace,
         *values_flags(request.values_file), "--dry-run=server",
         "--description", release_description(version)],
        timeout=QUERY_TIMEOUT, capture_stdout=True, extra=helm.settings.extra_args,
    )  # fmt: skip
    if dry_run.returncode == TIMED_OUT:
        error = f"helm upgrade --dry-run=server got no answer within {QUERY_TIMEOUT:g}s"
        return unavailable(helm, f"server-side dry run not run: {error}")
    if not dry_run.ok:
        error = helm_error(dry_run.output, dry_run.returncode)
        if UNREACHABLE.search(error):
            return unavailable(helm, f"server-side dry run not run: {error}")
        raise ValidationError(
            f"helm upgrade --dry-run=server failed: {explained(error)}",
            output=bounded(dry_run.output),
        )
    return []
