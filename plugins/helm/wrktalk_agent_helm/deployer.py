"""The helm deployer: applies a WrkTalk release with ``helm upgrade --install``.

Every Helm revision the agent creates carries the description
``wrktalk-agent release <version>``; that is how a later rollback finds the revision of
a release version in ``helm history``, and how :meth:`HelmDeployer.live_release` tells
which release runs.

The release's state is always read with ``helm history --max 1``: it reads only Helm's
storage, where ``helm status`` (in Helm 4) also asks the API server for every resource
of the stored manifest and fails when a kind is no longer served.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
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
from wrktalk_agent.process import NOT_FOUND, TIMED_OUT, CommandResult, run, tail
from wrktalk_agent_helm.changes import summarize_manifests
from wrktalk_agent_helm.settings import HelmSettings

__all__ = ["HelmDeployer", "find_chart", "find_revision", "helm_error", "release_description"]

SUPPORTED_MAJORS = (3, 4)
#: statuses of a revision a helm left unfinished; Helm refuses to upgrade over them
#: ("another operation (install/upgrade/rollback) is in progress")
PENDING_STATUSES = frozenset({"pending-install", "pending-upgrade", "pending-rollback"})
#: statuses of a revision that once ran fine and can be returned to
ROLLBACK_TARGET_STATUSES = frozenset({"deployed", "superseded"})
#: hard limit of status/history/list/version calls (an unreachable API server makes
#: client-go retry for ~30s before it gives up)
QUERY_TIMEOUT = 120.0
#: the output kept for the task result: the core's byte bound, and at most this many lines
MAX_OUTPUT_LINES = 100
#: Helm's version: ``v3.16.4``, also ``v3.16`` and ``v3.16+unreleased`` from source builds
_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?([-+]\S*)?$")
_NOT_FOUND = "release: not found"
#: Helm 3 writes "Kubernetes cluster unreachable", Helm 4 "kubernetes cluster unreachable"
_UNREACHABLE = re.compile(r"kubernetes cluster unreachable", re.IGNORECASE)
#: in helm's environment, HELM_DEBUG=true works like --debug: helm would print the
#: release's values and rendered manifests into the task's output
_DROPPED_ENVIRONMENT = frozenset({"HELM_DEBUG"})
#: all Helm says when its uninstall could not delete a resource: the cause goes to its
#: debug log only
_DELETE_FAILED = "failed to delete release:"
#: how Helm's upgrade and rollback say that they could not build the objects of a stored
#: revision (Helm 3 and 4 alike): the current one, or for a rollback also its target
_STORED_MANIFEST = re.compile(r"unable to build kubernetes objects from (current|new) release")
#: the length a Helm error is cut to in a task's error message (its end is kept)
MAX_ERROR_CHARS = 1000
#: ``helm history`` shows the newest 256 revisions unless told otherwise; with
#: ``--history-max 0`` a release can have more, and rollback must see them all
HISTORY_ALL = 1_000_000
_ROLLBACK_TO = re.compile(r"^Rollback to (\d+)$")


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


def values_arg(path: Path) -> str:
    """A path as one item of Helm's ``-f`` string slice, which pflag reads as a CSV record:
    quoted when it holds a comma or a quote, so Helm does not split it."""
    text = str(path)
    if any(ch in text for ch in ',"') or text.startswith(" "):
        return '"' + text.replace('"', '""') + '"'
    return text


def release_version(entry: dict[str, Any], history: list[dict[str, Any]]) -> str | None:
    """The release version a revision runs: from the agent's description, following
    Helm's "Rollback to N" back to the revision it copied."""
    by_revision = {int(e["revision"]): e for e in history}
    seen: set[int] = set()
    while True:
        description = str(entry.get("description") or "")
        prefix = release_description("")
        if description.startswith(prefix):
            return description[len(prefix) :] or None
        match = _ROLLBACK_TO.match(description)
        if match is None or int(match.group(1)) in seen:
            return None
        seen.add(int(match.group(1)))
        target = by_revision.get(int(match.group(1)))
        if target is None:
            return None
        entry = target


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
    """Helm's own ``Error: ...`` (with the lines that continue it), or the last line it
    printed.

    Cobra prints the error last, and an error can span lines: Helm 3's wrapped lists are
    indented, Helm 4 joins several errors (each resource its wait gave up on, then
    ``context deadline exceeded``) one per line; a blank line ends it (usage follows)."""
    lines = output.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("Error:"):
            text = line.strip()
            for following in lines[index + 1 :]:
                if not following.strip():
                    break
                indented = following.startswith((" ", "\t", "*"))
                text += (" " if indented else "; ") + following.strip()
            return shorten(text, MAX_ERROR_CHARS)
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    return f"exit status {returncode}" + (f": {last[:300]}" if last else "")


def explained(error: str) -> str:
    """Helm's error, with what to do when the release's stored manifest names a kind the
    API server no longer serves: Helm then refuses upgrade, rollback and uninstall alike,
    and no retry helps."""
    if _STORED_MANIFEST.search(error) and "no matches for kind" in error:
        return (
            f"{error} (the release's stored manifest names a kind the cluster no longer "
            "serves: reinstall its CRD, or rewrite the stored release with the "
            "helm-mapkubeapis plugin; until then Helm cannot upgrade, roll back or "
            "uninstall the release)"
        )
    return error


def shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters in the middle: Helm's cause comes last."""
    if len(text) <= limit:
        return text
    keep = (limit - 5) // 2
    return f"{text[:keep]} ... {text[-keep:]}"


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
                ["rollback", release, str(revision), *await self._wait_flags()],
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
        warnings: list[str] = []
        try:
            await self._helm_major()
        except DeployError as exc:
            return self._unavailable(f"the release could not be validated: {exc}", warnings)
        namespace = ["--namespace", self.settings.namespace]
        values = self._values_flags(request)[:-1]  # lint/template know no --reset-values
        lint = await self._run(
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
        template = await self._run(
            ["template", self.settings.release_name, str(chart), *namespace, *values],
            timeout=QUERY_TIMEOUT, capture_stdout=True, connection=False,
        )  # fmt: skip
        if not template.ok:
            raise ValidationError(
                f"helm template failed: {helm_error(template.output, template.returncode)}",
                output=bounded(template.output),
            )
        try:
            latest = await self._latest()
        except DeployError as exc:
            return self._unavailable(f"server-side dry run not run: {exc}", warnings)
        if latest is not None and latest.get("status") in PENDING_STATUSES | {"uninstalling"}:
            warnings.append(
                f"server-side dry run skipped: Helm release {self.settings.release_name} is "
                f"{latest.get('status')}; the deploy recovers it first"
            )
            return warnings
        dry_run = await self._run(
            ["upgrade", "--install", self.settings.release_name, str(chart), *namespace,
             *self._values_flags(request), "--dry-run=server",
             "--description", release_description(version)],
            timeout=QUERY_TIMEOUT, capture_stdout=True, extra=self.settings.extra_args,
        )  # fmt: skip
        if dry_run.returncode == TIMED_OUT:
            error = f"helm upgrade --dry-run=server got no answer within {QUERY_TIMEOUT:g}s"
            return self._unavailable(f"server-side dry run not run: {error}", warnings)
        if not dry_run.ok:
            error = helm_error(dry_run.output, dry_run.returncode)
            if _UNREACHABLE.search(error):
                return self._unavailable(f"server-side dry run not run: {error}", warnings)
            raise ValidationError(
                f"helm upgrade --dry-run=server failed: {explained(error)}",
                output=bounded(dry_run.output),
            )
        return warnings

    def _unavailable(self, message: str, warnings: list[str]) -> list[str]:
        if self.settings.on_validation_unavailable == "fail":
            raise ValidationError(
                f"{message} (WRKTALK_AGENT_HELM_ON_VALIDATION_UNAVAILABLE=warn deploys anyway)"
            )
        return [*warnings, message]

    async def describe_changes(
        self, current_workdir: Path | None, target_workdir: Path
    ) -> list[str]:
        """Resources added, removed and changed, and container images changed, from the
        two releases' charts rendered with their own values (``helm template``; no
        cluster). Nothing of the rendered data is kept."""
        new = await self._render(target_workdir)
        old = await self._render(current_workdir) if current_workdir is not None else ""
        return await asyncio.to_thread(summarize_manifests, old, new)

    async def _render(self, workdir: Path) -> str:
        chart = find_chart(workdir)
        values_file = workdir / "values.yaml"
        values = ["-f", values_arg(values_file)] if values_file.exists() else []
        result = await self._run(
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

    async def live_release(self) -> LiveState:
        """What the cluster runs, from Helm's storage only (read-only): the newest
        revision's status, and the release version recorded in its description."""
        release = self.settings.release_name
        try:
            history = await self._history()
        except DeployError as exc:
            return LiveState(None, "unknown", str(exc))
        if not history:
            return LiveState(
                None, "absent", f"Helm has no release {release} in {self.settings.namespace}"
            )
        latest = history[-1]
        status, revision = str(latest.get("status")), latest.get("revision")
        if status == "deployed":
            version = release_version(latest, history)
            detail = f"Helm release {release} revision {revision} is deployed"
            if version is None:
                detail += " (not by wrktalk-agent: its description names no release)"
            return LiveState(version, "deployed", detail)
        if status == "uninstalled":
            return LiveState(None, "absent", f"Helm release {release} was uninstalled")
        # half-applied: the best guess is what the newest revision that ran fine runs
        good = [e for e in history if e.get("status") in ROLLBACK_TARGET_STATUSES]
        version = release_version(good[-1], history) if good else None
        chart = f"{latest.get('chart')}, app version {latest.get('app_version') or '-'}"
        return LiveState(
            version,
            "half-applied",
            f"Helm release {release} revision {revision} is {status} ({chart}): "
            f"{latest.get('description')}",
        )

    # -- steps -------------------------------------------------------------------------
    async def _upgrade(
        self, request: DeployRequest, chart: Path, version: str, transcript: list[str]
    ) -> DeployOutcome:
        release = self.settings.release_name
        create = ["--create-namespace"] if self.settings.create_namespace else []
        atomic = "--atomic" if await self._helm_major() == 3 else "--rollback-on-failure"
        args = [
            "upgrade", "--install", release, str(chart),
            "--namespace", self.settings.namespace, *create,
            *self._values_flags(request),
            await self._wait_flag(), "--timeout", self.settings.timeout,
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
        """Unblock a release an interrupted helm left unfinished.

        The core runs one deployment per installation at a time, so such a release is not
        another helm still at work but the remains of one that was stopped — by the agent
        (its runner gives helm 5 s after SIGTERM, less than Helm's own cancellation
        rollback or uninstall may take) or by a crash:

        * ``pending-install``/``pending-upgrade``/``pending-rollback`` (killed mid-run, or
          during the rollback Helm started itself after a cancelled upgrade, which leaves
          ``failed`` + ``pending-rollback``): rolled back to the last deployed revision
          (else the newest superseded one), or uninstalled when nothing ever ran;
        * ``uninstalling`` (Helm's own uninstall after a cancelled first install, which in
          Helm 4 waits for the deletion, or an interrupted or failed uninstall of ours):
          Helm refuses an upgrade only when no revision is ``deployed`` any more — the
          usual case, since an uninstall marks the newest revision — but either way the
          release's resources may be half deleted, so the uninstall is run again (Helm
          accepts it) and the release is then installed afresh;
        * ``failed``: Helm upgrades and rolls back from it as it is; nothing to do.
        """
        latest = await self._latest()
        if latest is None:
            return None  # first install
        state, stuck = latest.get("status"), latest.get("revision")
        if state not in PENDING_STATUSES and state != "uninstalling":
            return None
        release, namespace = self.settings.release_name, self.settings.namespace
        await request.report(
            f"Helm release {release} is stuck in {state} (revision {stuck}) after an "
            "interrupted run; recovering it"
        )
        history = await self._history() or []
        deployed = [int(e["revision"]) for e in history if e.get("status") == "deployed"]
        superseded = [int(e["revision"]) for e in history if e.get("status") == "superseded"]
        if state == "uninstalling" or (state == "pending-install" and not deployed):
            if state == "uninstalling":
                note = f"finished the interrupted uninstall of revision {stuck}"
            else:
                note = f"uninstalled revision {stuck} ({state}); the release was never deployed"
            note += await self._uninstall(request, state, transcript)
        elif deployed or superseded:
            target = max(deployed) if deployed else max(superseded)
            which = "the last deployed one" if deployed else "the newest that once ran"
            await self._action(
                ["rollback", release, str(target), *await self._wait_flags()],
                what=f"helm rollback of the stuck release to revision {target}",
                hard_timeout=self.settings.timeout_seconds + self.hard_timeout_margin,
                transcript=transcript,
            )
            note = f"rolled back revision {stuck} ({state}) to revision {target}, {which}"
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

    async def _uninstall(self, request: DeployRequest, state: str, transcript: list[str]) -> str:
        """``helm uninstall --wait``; when it fails, Helm's storage tells what happened.

        Helm can fail after it purged the release ("uninstallation completed with N
        error(s)": the wait for the deletion or a post-delete hook failed), which is done
        as far as the next install is concerned; or before, with only "failed to delete
        release: NAME" (the cause goes to Helm's debug log), which leaves the release
        ``uninstalling``. Returns a remark for the recovery note (empty when it went fine).
        """
        release, namespace = self.settings.release_name, self.settings.namespace
        try:
            await self._action(
                ["uninstall", release, "--namespace", namespace, await self._wait_flag(),
                 "--timeout", self.settings.timeout],
                what=f"helm uninstall of the {state} release",
                hard_timeout=self.settings.timeout_seconds + self.hard_timeout_margin,
                transcript=transcript,
            )  # fmt: skip
            return ""
        except DeployError as failed:
            try:
                left = await self._latest()
            except DeployError as unreadable:
                raise DeployError(
                    f"{failed}; the release's history could not be read afterwards: {unreadable}",
                    output=failed.output,
                ) from None
            if left is None or left.get("status") == "uninstalled":
                remark = f" (Helm removed the release but reported: {failed})"
                await request.report(
                    f"helm uninstall removed Helm release {release} but reported errors; "
                    f"installing it afresh: {failed}"
                )
                return remark
            hint = ""
            if _DELETE_FAILED in str(failed):
                hint = (
                    f"; Helm logs the cause only with --debug: run `helm uninstall {release} "
                    f"-n {namespace} --debug` to see it (a resource kind the cluster no "
                    "longer serves is a common one)"
                )
            raise DeployError(
                f"{failed}; Helm release {release} is still {left.get('status')} (revision "
                f"{left.get('revision')}), and the next deploy or rollback tries the "
                f"uninstall again{hint}",
                output=failed.output,
            ) from None

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
        match = _VERSION.fullmatch(text)
        if match is None or int(match.group(1)) not in SUPPORTED_MAJORS:
            raise DeployError(
                f"Helm {text[:40] or '(no version)'} is not supported: "
                "wrktalk-agent needs Helm 3 or 4",
                system_changed=False,
            )
        self._helm_version, self._major = text, int(match.group(1))
        return self._major

    async def _latest(self) -> dict[str, Any] | None:
        """The release's newest revision from Helm's storage (``None``: no release)."""
        history = await self._history(limit=1)
        return history[-1] if history else None

    async def _history(self, limit: int = HISTORY_ALL) -> list[dict[str, Any]] | None:
        history = await self._query(["history", self.settings.release_name, "--max", str(limit)])
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
                f"{what} failed: {explained(helm_error(result.output, result.returncode))}",
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
        environment = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENVIRONMENT}
        result = await run(argv, timeout=timeout, capture_stdout=capture_stdout, env=environment)
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

    async def _wait_flag(self) -> str:
        """Helm 3: ``--wait``. Helm 4: ``--wait=STRATEGY`` — always with ``=``, since its
        optional value would otherwise be read as a bare ``--wait`` and a positional."""
        if await self._helm_major() == 3:
            return "--wait"
        return f"--wait={self.settings.wait_strategy}"

    def _values_flags(self, request: DeployRequest) -> list[str]:
        """The release's values, and nothing else: ``--reset-values`` keeps Helm from
        reusing the previous release's values when this release ships none."""
        values = ["-f", values_arg(request.values_file)] if request.values_file else []
        return [*values, "--reset-values"]

    async def _wait_flags(self) -> list[str]:
        return [
            "--namespace", self.settings.namespace,
            await self._wait_flag(), "--timeout", self.settings.timeout,
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
