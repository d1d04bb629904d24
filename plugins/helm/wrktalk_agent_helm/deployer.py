"""The helm deployer: applies a WrkTalk release with ``helm upgrade --install``.

Every Helm revision the agent creates carries the description
``wrktalk-agent release <version>``; that is how a later rollback finds the revision of
a release version in ``helm history``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, ClassVar

from pydantic_settings import BaseSettings

from wrktalk_agent.interfaces import (
    CheckResult,
    DeployError,
    DeployOutcome,
    DeployRequest,
    PluginContext,
    validate_version,
)
from wrktalk_agent.process import NOT_FOUND, TIMED_OUT, CommandResult, run, tail
from wrktalk_agent_helm.settings import HelmSettings

__all__ = ["HelmDeployer", "find_chart", "find_revision", "helm_error", "release_description"]

SUPPORTED_MAJORS = (3, 4)
PENDING_STATUSES = frozenset({"pending-install", "pending-upgrade", "pending-rollback"})
#: statuses of a revision that once ran fine and can be returned to
ROLLBACK_TARGET_STATUSES = frozenset({"deployed", "superseded"})
#: hard limit of status/history/list/version calls (an unreachable API server makes
#: client-go retry for ~30s before it gives up)
QUERY_TIMEOUT = 120.0
#: the output kept for the task result: the core's byte bound, and at most this many lines
MAX_OUTPUT_LINES = 100
_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)\S*$")
_NOT_FOUND = "release: not found"


def release_description(version: str) -> str:
    return f"wrktalk-agent release {version}"


def find_chart(workdir: Path) -> Path:
    """The chart of an extracted release: ``Chart.yaml`` at the top, or exactly one chart
    directory, or exactly one packaged chart (``*.tgz``)."""
    if (workdir / "Chart.yaml").is_file():
        return workdir
    directories = sorted(p for p in workdir.iterdir() if (p / "Chart.yaml").is_file())
    packages = sorted(p for p in workdir.glob("*.tgz") if p.is_file())
    found = directories + packages
    if len(found) == 1:
        return found[0]
    if found:
        listing = ", ".join(p.name + ("/" if p.is_dir() else "") for p in found)
        detail = f"more than one candidate ({listing}); ship exactly one chart"
    else:
        detail = "expected Chart.yaml at the top, one chart directory or one packaged chart (*.tgz)"
    raise DeployError(f"no Helm chart found in the release: {detail}", system_changed=False)


def find_revision(history: list[dict[str, Any]], version: str) -> int | None:
    """The newest revision the agent created for ``version`` that once ran fine."""
    wanted = release_description(version)
    revisions = [
        int(entry["revision"])
        for entry in history
        if entry.get("description") == wanted and entry.get("status") in ROLLBACK_TARGET_STATUSES
    ]
    return max(revisions, default=None)


def bounded(text: str) -> str:
    """The end of some helm output, as kept in task results and errors."""
    return tail("\n".join(text.splitlines()[-MAX_OUTPUT_LINES:]))


def helm_error(output: str, returncode: int) -> str:
    """Helm's own ``Error: ...`` line (with the indented lines that continue it), or the
    last line it printed."""
    lines = output.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("Error:"):
            parts = [line.strip()]
            for following in lines[index + 1 :]:
                if not following.startswith((" ", "\t", "*")):
                    break
                parts.append(following.strip())
            return " ".join(parts)[:500]
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    return f"exit status {returncode}" + (f": {last[:300]}" if last else "")


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
        self._helm_version: str | None = None
        self._major: int | None = None

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
            await self._helm_major()
        except DeployError as exc:
            return [CheckResult("helm binary", False, f"{path}: {exc}")]
        results = [CheckResult("helm binary", True, f"{path}, Helm {self._helm_version}")]
        namespace = self.settings.namespace
        listed = await self._run(
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
        await self._helm_major()
        transcript: list[str] = []
        recovered = await self._recover_pending(request, transcript)
        outcome = await self._upgrade(request, chart, version, transcript)
        if recovered:
            outcome.details["recovered"] = recovered
        return outcome

    async def rollback(self, request: DeployRequest) -> DeployOutcome:
        version = self._checked_version(request)
        await self._helm_major()
        transcript: list[str] = []
        recovered = await self._recover_pending(request, transcript)
        revision = find_revision(await self._history() or [], version)
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
            await self._action(
                ["rollback", release, str(revision), *self._wait_flags()],
                what=f"helm rollback to revision {revision}",
                hard_timeout=self.settings.timeout_seconds + self.hard_timeout_margin,
                transcript=transcript,
            )
            outcome = await self._outcome("rollback", transcript, rolled_back_to=revision)
        if recovered:
            outcome.details["recovered"] = recovered
        return outcome

    # -- steps -------------------------------------------------------------------------
    async def _upgrade(
        self, request: DeployRequest, chart: Path, version: str, transcript: list[str]
    ) -> DeployOutcome:
        release = self.settings.release_name
        values = ["-f", str(request.values_file)] if request.values_file is not None else []
        create = ["--create-namespace"] if self.settings.create_namespace else []
        atomic = "--atomic" if await self._helm_major() == 3 else "--rollback-on-failure"
        args = [
            "upgrade", "--install", release, str(chart),
            "--namespace", self.settings.namespace, *create,
            *values,
            "--wait", "--timeout", self.settings.timeout,
            "--history-max", str(self.settings.history_max),
            atomic,
            "--description", release_description(version),
        ]  # fmt: skip
        await request.report(
            f"helm upgrade --install {release} with chart {chart.name} ({version})"
        )
        await self._action(
            args,
            what=f"helm upgrade to release {version}",
            # A failed upgrade is rolled back by Helm itself (atomic), and that rollback
            # waits up to --timeout again: allow twice the timeout before stopping helm.
            hard_timeout=2 * self.settings.timeout_seconds + self.hard_timeout_margin,
            transcript=transcript,
            extra=self.settings.extra_args,
        )
        return await self._outcome("upgrade --install", transcript, chart=chart.name)

    async def _recover_pending(self, request: DeployRequest, transcript: list[str]) -> str | None:
        """Unblock a release left pending by an interrupted helm run.

        The core runs one deployment per installation at a time, so a pending release seen
        here is not another helm still at work but the remains of one that was killed;
        Helm itself would refuse any upgrade ("another operation ... is in progress").
        """
        status = await self._status()
        if status is None:
            return None  # first install
        info = status.get("info") or {}
        state, stuck = info.get("status"), status.get("version")
        if state not in PENDING_STATUSES:
            return None
        release, namespace = self.settings.release_name, self.settings.namespace
        await request.report(
            f"Helm release {release} is stuck in {state} (revision {stuck}) after an "
            "interrupted run; recovering it"
        )
        history = await self._history() or []
        deployed = [int(e["revision"]) for e in history if e.get("status") == "deployed"]
        if deployed:
            target = max(deployed)
            await self._action(
                ["rollback", release, str(target), *self._wait_flags()],
                what=f"helm rollback of the stuck release to revision {target}",
                hard_timeout=self.settings.timeout_seconds + self.hard_timeout_margin,
                transcript=transcript,
            )
            note = (
                f"rolled back revision {stuck} ({state}) to revision {target}, "
                "the last deployed one"
            )
        elif state == "pending-install":
            await self._action(
                ["uninstall", release, "--namespace", namespace, "--wait",
                 "--timeout", self.settings.timeout],
                what="helm uninstall of the never-deployed release",
                hard_timeout=self.settings.timeout_seconds + self.hard_timeout_margin,
                transcript=transcript,
            )  # fmt: skip
            note = f"uninstalled revision {stuck} ({state}); the release was never deployed"
        else:
            raise DeployError(
                f"Helm release {release} is stuck in {state} (revision {stuck}) and has no "
                "deployed revision to return to; inspect it with `helm history "
                f"{release} -n {namespace}`, then `helm rollback {release} REVISION -n "
                f"{namespace}` to a good revision or `helm uninstall {release} -n {namespace}`",
                system_changed=False,
            )
        await request.report(f"recovered Helm release {release}: {note}")
        return note

    async def _outcome(self, action: str, transcript: list[str], **facts: Any) -> DeployOutcome:
        details: dict[str, Any] = {
            "action": action,
            "helm_version": self._helm_version,
            "release_name": self.settings.release_name,
            "namespace": self.settings.namespace,
            **facts,
        }
        try:  # the change is done; failing to read the new revision must not fail the task
            history = await self._history() or []
            details["revision"] = max((int(e["revision"]) for e in history), default=None)
        except DeployError:
            details["revision"] = None
        return DeployOutcome(output=bounded("\n".join(transcript)), details=details)

    # -- helm commands -------------------------------------------------------------------
    async def _helm_major(self) -> int:
        """Helm's major version, asked once: Helm 4 renamed --atomic to --rollback-on-failure."""
        if self._major is not None:
            return self._major
        # No cluster flags: `helm version` never talks to the cluster.
        result = await self._run(
            ["version", "--template", "{{.Version}}"],
            timeout=QUERY_TIMEOUT,
            capture_stdout=True,
            connection=False,
        )
        text = result.stdout.strip()
        if not result.ok:
            raise DeployError(
                f"could not tell the Helm version with `{self.settings.binary} version`: "
                f"{helm_error(result.output, result.returncode)} (wrktalk-agent needs Helm 3 or 4)",
                system_changed=False,
            )
        match = _VERSION.match(text)
        if match is None or int(match.group(1)) not in SUPPORTED_MAJORS:
            raise DeployError(
                f"Helm {text[:40] or '(no version)'} is not supported: "
                "wrktalk-agent needs Helm 3 or 4",
                system_changed=False,
            )
        self._helm_version, self._major = text, int(match.group(1))
        return self._major

    async def _status(self) -> dict[str, Any] | None:
        # The JSON holds the release's values (secrets): parsed, never logged or reported.
        status = await self._query(["status", self.settings.release_name])
        if status is not None and not isinstance(status, dict):
            raise DeployError("helm status printed unexpected JSON", system_changed=False)
        return status

    async def _history(self) -> list[dict[str, Any]] | None:
        history = await self._query(["history", self.settings.release_name])
        if history is not None and not (
            isinstance(history, list)
            and all(isinstance(e, dict) and isinstance(e.get("revision"), int) for e in history)
        ):
            raise DeployError("helm history printed unexpected JSON", system_changed=False)
        return history

    async def _query(self, args: list[str]) -> object:
        """A read-only helm command with JSON output; ``None`` when the release does not exist."""
        argv = [*args, "--namespace", self.settings.namespace, "--output", "json"]
        result = await self._run(argv, timeout=QUERY_TIMEOUT, capture_stdout=True)
        if result.returncode == TIMED_OUT:
            raise DeployError(
                f"helm {args[0]} got no answer within {QUERY_TIMEOUT:g}s", system_changed=False
            )
        if not result.ok:
            error = helm_error(result.output, result.returncode)
            if _NOT_FOUND in error:
                return None
            raise DeployError(
                f"helm {args[0]} failed: {error}",
                output=bounded(result.output),
                system_changed=False,
            )
        try:
            return json.loads(result.stdout)
        except json.JSONDecodeError:
            raise DeployError(
                f"helm {args[0]} printed no valid JSON", system_changed=False
            ) from None

    async def _action(
        self,
        args: list[str],
        *,
        what: str,
        hard_timeout: float,
        transcript: list[str],
        extra: list[str] | None = None,
    ) -> CommandResult:
        """A helm command that changes the cluster; its output joins the task transcript."""
        result = await self._run(args, timeout=hard_timeout, extra=extra)
        transcript.append(result.output)
        if result.returncode == TIMED_OUT:
            raise DeployError(
                f"{what} did not finish within {hard_timeout:g}s and was stopped; a release "
                "left pending is recovered by the next deploy or rollback",
                output=bounded("\n".join(transcript)),
            )
        if not result.ok:
            raise DeployError(
                f"{what} failed: {helm_error(result.output, result.returncode)}",
                output=bounded("\n".join(transcript)),
            )
        return result

    async def _run(
        self,
        args: list[str],
        *,
        timeout: float,
        capture_stdout: bool = False,
        connection: bool = True,
        extra: list[str] | None = None,
    ) -> CommandResult:
        """Run helm (the core's runner: argument list, own process group, stopped on
        timeout or cancellation). ``capture_stdout`` keeps stdout whole, for JSON."""
        argv = [self.settings.binary, *args]
        if connection:
            argv += self._connection_flags()
        argv += extra or []
        result = await run(argv, timeout=timeout, capture_stdout=capture_stdout)
        if result.returncode == NOT_FOUND:
            raise DeployError(
                f"cannot run helm binary {result.output}; install Helm 3 or 4 or set "
                "WRKTALK_AGENT_HELM_BINARY",
                system_changed=False,
            )
        return result

    def _connection_flags(self) -> list[str]:
        flags: list[str] = []
        if self.settings.kube_context:
            flags += ["--kube-context", self.settings.kube_context]
        if self.settings.kubeconfig is not None:
            flags += ["--kubeconfig", str(self.settings.kubeconfig)]
        return flags

    def _wait_flags(self) -> list[str]:
        return [
            "--namespace", self.settings.namespace,
            "--wait", "--timeout", self.settings.timeout,
            # rollback prunes history too; keep it on the same limit as upgrade
            "--history-max", str(self.settings.history_max),
        ]  # fmt: skip

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
