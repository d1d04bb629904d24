"""One task, start to finish: the named steps between a claim and the outcome.

claimed → resolve → artifact (fetch, verify, extract) → validate → prepare
→ maintenance on → deploy/rollback → health → [auto-rollback]
→ maintenance off → outcome + release flags + maintenance record + notifications promised
  (one transaction, only if this claim still owns the task) → secure delete.

All of it runs under the task's lease (:mod:`wrktalk_agent.lease`). When the lease is lost
the run stops its deploy — cancelled, then every process group its commands started is
killed — and writes nothing: the agent that takes the task over finds out what is live
(:mod:`wrktalk_agent.recovery`). Nothing a backend does ends the run in any state but a
written outcome or that fenced stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit
from uuid import UUID

import asyncpg
import structlog
from tenacity import AsyncRetrying, retry_if_exception, wait_exponential_jitter

from wrktalk_agent import maintenance as maint
from wrktalk_agent import metrics, outbox, process
from wrktalk_agent.artifacts import (
    ENV_FILE,
    VALUES_FILE,
    ArtifactError,
    make_private_dir,
    materialize,
    secure_delete,
)
from wrktalk_agent.config import AgentSettings
from wrktalk_agent.contract import DEPLOYER
from wrktalk_agent.db.models import ArtifactInfo, Task
from wrktalk_agent.db.repository import CONNECTION_ERRORS, EventStatus, FlagChange, Repository
from wrktalk_agent.guard import bounded, cancel_requested, describe
from wrktalk_agent.interfaces import (
    BackendError,
    DeployError,
    DeployOutcome,
    DeployRequest,
    LiveState,
    NotificationEvent,
    NotificationKind,
    StepTiming,
    ValidationError,
    validate_version,
)
from wrktalk_agent.lease import Lease, held
from wrktalk_agent.live_output import LiveOutput
from wrktalk_agent.log import get_logger, redacting
from wrktalk_agent.process import tail
from wrktalk_agent.redact import Redactor
from wrktalk_agent.results import (
    ArtifactRecord,
    AutoRollbackRecord,
    HealthRecord,
    ReleaseRecord,
    StepRecord,
    TaskResult,
    ToolOutput,
)
from wrktalk_agent.safe_text import storable, storable_value
from wrktalk_agent.services import Services

__all__ = [
    "DB_ERRORS",
    "LeasedRun",
    "Services",
    "StepFailed",
    "TaskOutcome",
    "TaskRun",
    "Timeline",
]

#: Errors worth retrying a write for: the database went away, not a bad statement.
DB_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    asyncpg.PostgresConnectionError,
)
_FLUSH_ERRORS: tuple[type[BaseException], ...] = (*DB_ERRORS, TimeoutError)
#: Lines of a change summary kept in the result, the timeline and the email.
MAX_CHANGE_LINES = 50


@dataclass(frozen=True)
class PendingEvent:
    at: datetime
    step: str
    status: EventStatus
    message: str


class StepFailed(Exception):
    """A step failed; ``message`` is what the task's error_message will say."""

    def __init__(self, message: str, *, system_changed: bool = False, output: str = "") -> None:
        super().__init__(message)
        self.system_changed = system_changed
        self.output = output


def db_retrying(log: Any, what: str, repo: Repository) -> AsyncRetrying:
    """Retry a database write with exponential backoff and jitter until it succeeds (an
    outage ends some day); not once the agent has closed its own pool."""

    def before_sleep(state: Any) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(f"{what}.retrying", attempt=state.attempt_number, error=describe(exc))

    def outage(exc: BaseException) -> bool:
        return isinstance(exc, DB_ERRORS) and not repo.closed

    return AsyncRetrying(
        retry=retry_if_exception(outage),
        wait=wait_exponential_jitter(multiplier=0.2, max=15.0, jitter=0.5),
        before_sleep=before_sleep,
        reraise=True,
    )


class TaskOutcome(StrEnum):
    """How a task run ended, as far as this agent is concerned."""

    COMPLETED = "completed"
    FAILED = "failed"
    #: the outcome write found the task no longer ours (taken over): nothing written
    TAKEN_AWAY = "taken away"
    #: the lease was lost: the deploy was stopped and nothing written
    FENCED = "fenced"


@dataclass
class Verdict:
    """What the steps concluded, before it is written."""

    status: Literal["completed", "failed"]
    error: str | None = None
    kind: NotificationKind | None = None
    rollback_error: str | None = None
    #: the deploy's own cause when ``error`` names the rollback's too
    deploy_error: str | None = None


#: Joins the two causes of a failed deploy whose automatic rollback failed as well.
ROLLBACK_FAILED_TOO = "; automatic rollback to {version} failed too: "


def both_causes(deploy_error: str, version: str, rollback_error: str) -> str:
    """One line naming why the deploy failed and why the rollback to ``version`` did."""
    deploy = " ".join(deploy_error.split())
    rollback = " ".join(rollback_error.split())
    return deploy + ROLLBACK_FAILED_TOO.format(version=version) + rollback


class Secrets:
    """What a task must never let out: its releases' ``.env`` values and secret-looking
    ``values.yaml`` scalars (see :mod:`wrktalk_agent.redact` for the rule) and the
    database and SMTP passwords. Every timeline entry, error, task result, notification
    and log line of the task passes through :meth:`redact` before it leaves."""

    def __init__(self, extra: Sequence[str | None] = ()) -> None:
        self._redactors = [Redactor(extra=extra)]

    def add_release(self, env_data: str | None, values_data: str | None) -> None:
        if env_data or values_data:
            self._redactors.append(Redactor(env_data, values_data))

    def add(self, secret: str) -> None:
        self._redactors.append(Redactor(extra=[secret]))

    def redact(self, text: str) -> str:
        for redactor in self._redactors:
            text = redactor.redact(text)
        return text

    def redact_value(self, value: Any) -> Any:
        for redactor in self._redactors:
            value = redactor.redact_value(value)
        return value

    @property
    def longest(self) -> int:
        """Characters of the longest secret (see :class:`wrktalk_agent.redact.Masker`)."""
        return max(r.longest for r in self._redactors)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where the secrets occur in ``text`` (see :class:`wrktalk_agent.redact.Masker`)."""
        return [span for r in self._redactors for span in r.spans(text)]


class Timeline:
    """A task's timeline entries, buffered with their own times and written in one
    statement before anything slow and with the outcome: a fast task costs a few round
    trips, not one per entry, and an outage only delays them."""

    def __init__(
        self,
        repo: Repository,
        task_id: UUID,
        agent_id: str,
        log: Any,
        secrets: Secrets | None = None,
        claim_token: UUID | None = None,
    ) -> None:
        self.repo = repo
        self.task_id = task_id
        self.agent_id = agent_id
        #: entries are written only while this claim owns the task
        self.claim_token = claim_token
        self.log = log
        self.secrets = secrets or Secrets()
        self.unsaved: list[PendingEvent] = []
        self._last_at: datetime | None = None
        # the live output writes from a task of its own: one write at a time, or two
        # could send the same entries
        self._writing = asyncio.Lock()

    async def add(
        self, step: str, status: EventStatus, message: str = "", *, flush: bool = False
    ) -> None:
        self.append(step, status, message)
        if flush:
            await self.flush()

    def append(
        self, step: str, status: EventStatus, message: str = "", *, at: datetime | None = None
    ) -> None:
        # masked before it is made storable: storable() may cut a long message
        message = storable(self.secrets.redact(storable(message, limit=1 << 24)))
        # one order: entries are kept as they come, and their times never go backwards
        # (a wall clock may step back; the timeline's order stays the order of events)
        at = at or datetime.now(UTC)
        if self._last_at is not None and at < self._last_at:
            at = self._last_at
        self._last_at = at
        self.unsaved.append(PendingEvent(at, storable(step), status, message))

    async def flush(self, timeout: float | None = None) -> None:
        async with self._writing:
            if not self.unsaved:
                return
            batch = list(self.unsaved)
            try:
                written = await asyncio.wait_for(
                    self.repo.add_events(self.task_id, batch, self.agent_id, self.claim_token),
                    timeout,
                )
            except _FLUSH_ERRORS as exc:
                self.log.warning("event.deferred", count=len(batch), error=describe(exc))
                return
            except asyncpg.PostgresError as exc:  # refused (e.g. no INSERT privilege):
                # the outcome write tries again and, refused again, ends the task without
                self.log.error("event.refused", count=len(batch), error=describe(exc))
                return
            del self.unsaved[: len(batch)]
            if not written:  # the task is no longer ours: what we saw is not its story
                self.log.warning("event.fenced", count=len(batch))


class LeasedRun:
    """What every run under a task's lease shares: the services, the task, its timeline,
    the secrets to mask, and the lease itself."""

    def __init__(
        self, services: Services, task: Task, *, claimed_at: float, instance_id: UUID
    ) -> None:
        self.s = services
        self.settings = services.settings
        self.repo = services.repo
        self.task = task
        self.agent_id = services.settings.agent_id
        self.instance_id = instance_id
        #: monotonic time the claim (or takeover) was sent: the lease counts from there
        self.claimed_at = claimed_at
        self.log = get_logger()
        self.secrets = Secrets(extra=_known_passwords(self.settings))
        self.timeline = Timeline(
            self.repo, task.id, self.agent_id, self.log, self.secrets, task.claim_token
        )
        self.lease: Lease | None = None

    def bind_log_context(self) -> None:
        """Every log line of the run, plugins' own included, names the task."""
        structlog.contextvars.bind_contextvars(
            task_id=str(self.task.id), type=self.task.type, plugin=self.s.deployer.name
        )

    def new_lease(self) -> Lease:
        assert self.task.claim_token is not None
        self.lease = Lease(
            self.repo,
            self.settings,
            task_id=self.task.id,
            claim_token=self.task.claim_token,
            instance_id=self.instance_id,
            claimed_at=self.claimed_at,
            log=self.log,
        )
        return self.lease


class TaskRun(LeasedRun):
    """Executes one claimed task. Create one per task; call :meth:`execute`."""

    def __init__(
        self, services: Services, task: Task, *, claimed_at: float, instance_id: UUID
    ) -> None:
        super().__init__(services, task, claimed_at=claimed_at, instance_id=instance_id)
        #: the step output lines belong to (see :mod:`wrktalk_agent.live_output`)
        self.running_step = "claimed"
        self.output = LiveOutput(self.timeline, self.secrets, self.log, lambda: self.running_step)
        self.steps: list[StepTiming] = []
        self.result = TaskResult(agent_id=self.agent_id)
        self.workdirs: list[Path] = []
        #: what the task changes (the deployer's summary), for the result and the email
        self.changes: list[str] = []
        #: extracted releases of this task, by release id
        self.roots: dict[UUID, Path] = {}
        self.target: ArtifactInfo | None = None
        self.current: ArtifactInfo | None = None
        self.started = time.monotonic()
        self.started_at = datetime.now(UTC)
        #: the proxy was (or may have been) switched on: always try to switch it off
        self.maintenance_switched = False
        self.enable_failed = False
        #: maintenance stayed on after this task (a failed switch-off): for the outcome
        self.maintenance_note: str | None = None
        self.maintenance_still_on = False
        #: the steps were interrupted by a shutdown (what the deployer found live, then)
        self.interrupted = False
        self.interrupted_live: str | None = None
        #: the deployer was called (the target may have changed)
        self.deploy_started = False
        #: the lease is lost and the steps are being stopped
        self.fencing = False

    def _tail(self, output: str) -> str:
        """The end of a tool's output, secrets masked before it is cut (a cut could
        leave half a secret that no longer matches)."""
        return tail(self.secrets.redact(output))

    # -- events and steps --------------------------------------------------------------
    async def event(
        self, step: str, status: EventStatus, message: str = "", *, flush: bool = False
    ) -> None:
        await self.timeline.add(step, status, message, flush=flush)

    @asynccontextmanager
    async def step(
        self, name: str, start_message: str = "", *, slow: bool = False
    ) -> AsyncIterator[None]:
        """A named step: started/failed events, timing, metrics. ``slow`` steps make their
        "started" entry visible at once (operators watch those). Every started step is
        closed in the timeline, whatever ends it."""
        await self.event(name, "started", start_message, flush=slow)
        began = time.monotonic()
        ok = False
        outer, self.running_step = self.running_step, name
        try:
            yield
            ok = True
        except StepFailed as exc:
            await self.event(name, "failed", str(exc))
            raise
        except asyncio.CancelledError:
            why = "stopped: the lease was lost" if self.fencing else "interrupted by shutdown"
            await self.event(name, "failed", why)
            raise
        except Exception as exc:
            await self.event(name, "failed", f"unexpected error: {describe(exc)}")
            raise
        finally:
            self.running_step = outer
            seconds = time.monotonic() - began
            self.steps.append(StepTiming(step=name, seconds=round(seconds, 3), ok=ok))
            self.result.steps.append(StepRecord(name, ok, round(seconds, 3)))
            metrics.STEP_SECONDS.labels(step=name).observe(seconds)

    # -- the whole task ----------------------------------------------------------------
    async def execute(self) -> TaskOutcome:
        self.bind_log_context()
        self.log.info("task.claimed")
        await self.event("claimed", "info", f"claimed by {self.agent_id}")
        lease = self.new_lease()
        try:
            with (
                redacting(self.secrets),
                process.track_groups(self.settings.fence_grace_seconds) as groups,
            ):
                with contextlib.suppress(*DB_ERRORS, asyncpg.PostgresError, TimeoutError):
                    smtp = await asyncio.wait_for(self.repo.smtp_config(), 5)
                    if smtp.password is not None:
                        self.secrets.add(smtp.password.get_secret_value())
                async with held(lease):
                    outcome = await self._under_lease(lease, groups)
        finally:
            process.task_ended()
            for workdir in self.workdirs:
                for problem in secure_delete(workdir):
                    self.log.warning("workdir.delete_failed", problem=problem)
        elapsed = time.monotonic() - self.started
        metrics.TASKS.labels(type=self.task.type, outcome=outcome.value).inc()
        metrics.TASK_SECONDS.labels(type=self.task.type).observe(elapsed)
        return outcome

    async def _under_lease(self, lease: Lease, groups: set[int]) -> TaskOutcome:
        work = asyncio.create_task(self._work(), name=f"steps-{self.task.id}")
        lost = asyncio.create_task(lease.lost.wait(), name=f"lease-watch-{self.task.id}")
        try:
            await asyncio.wait({work, lost}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            # The agent is stopping and the grace period is over (or a second signal
            # came): the steps stop, and the task is still cleaned up and reported.
            work.cancel()
            await asyncio.wait({work, lost}, return_when=asyncio.FIRST_COMPLETED)
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
        finally:
            lost.cancel()
        if not work.done():
            return await self._fence(work, lease, groups)
        verdict = work.result()
        if self.target is not None:  # the steps ran in a context of their own
            structlog.contextvars.bind_contextvars(version=self.target.release_version)
        if self.interrupted and self.deploy_started:
            await self._site_after_interruption()
        await self._maintenance_off(lease)
        written = await self._finish(verdict)
        elapsed = time.monotonic() - self.started
        if written is None:
            self.log.warning("task.taken_away", during="finish", outcome=verdict.status)
            return TaskOutcome.TAKEN_AWAY
        log = self.log.error if written == "failed" else self.log.info
        log("task.finished", outcome=written, seconds=round(elapsed, 3), error=verdict.error)
        return TaskOutcome(written)

    async def _fence(
        self, work: asyncio.Task[Verdict], lease: Lease, groups: set[int]
    ) -> TaskOutcome:
        """The lease is gone: stop everything this task started, write nothing."""
        self.log.error("task.fenced", reason=lease.reason)
        self.fencing = True
        # the watchdog stops everything the task started, escaped descendants included
        process.lease_deadline(time.monotonic())
        work.cancel()
        await asyncio.wait({work}, timeout=self.settings.stale_margin / 2)
        killed = process.kill_groups(groups)
        if killed:
            self.log.error("task.fence_killed", process_groups=killed)
        await self.event("fenced", "failed", f"stopped: {lease.reason}")
        await self.timeline.flush(timeout=1.0)  # best effort: the database may be away
        return TaskOutcome.FENCED

    async def _work(self) -> Verdict:
        """The steps and, after a failed deploy, the automatic rollback, with what their
        commands print streaming into the timeline."""
        async with self.output.streaming():
            return await self._steps_verdict()

    async def _steps_verdict(self) -> Verdict:
        try:
            try:
                await self._run_steps()
                return Verdict("completed")
            except StepFailed as exc:
                verdict = Verdict("failed", error=str(exc))
                if self.task.type == "deploy" and exc.system_changed:
                    rollback_error = await self._auto_rollback(exc)
                    if rollback_error != "skipped":
                        verdict.kind = NotificationKind.AUTO_ROLLBACK
                        verdict.rollback_error = rollback_error
                    if rollback_error not in (None, "skipped") and self.current is not None:
                        # the site is in an unknown state: both causes, on the first line
                        verdict.deploy_error = verdict.error
                        verdict.error = both_causes(
                            str(exc), self.current.release_version, str(rollback_error)
                        )
                return verdict
        except asyncio.CancelledError:
            if not cancel_requested():  # raised by a backend on its own: a failure
                self.log.error("task.crashed", error="CancelledError raised by a backend")
                return Verdict("failed", error="unexpected error: cancelled from within")
            self.interrupted = True
            return Verdict("failed", error="interrupted by shutdown")
        except Exception as exc:  # a bug in the core or a plugin: never a stuck task
            self.log.exception("task.crashed")
            return Verdict("failed", error=f"unexpected error: {describe(exc)}")

    async def _run_steps(self) -> None:
        async with self.step("resolve"):
            await self._resolve()
        assert self.target is not None
        version = self.target.release_version
        # plugins' own log lines carry the task too (this runs in the task's own context)
        structlog.contextvars.bind_contextvars(version=version)
        workdir = await self._materialize(self.target, "artifact")
        await self._before_maintenance(workdir)
        await self._maintenance_on(version)
        purpose: Literal["deploy", "rollback"] = self.task.type
        async with self.step(
            purpose, f"{purpose} {version} with {self.s.deployer.name}", slow=True
        ):
            self.deploy_started = True
            outcome = await self._call_deployer(purpose, self.target, workdir)
            self.result.deployer = ToolOutput(
                self._tail(outcome.output), self.secrets.redact_value(outcome.details)
            )
            await self.event(purpose, "succeeded", f"{version} applied")
        await self._health_check()

    async def _resolve(self) -> None:
        self.current = await self.repo.current_release()
        if self.task.type == "rollback":
            self.target = await self.repo.previous_release()
            if self.target is None:
                raise StepFailed("no previous release to roll back to")
            wanted = self.task.release_artifact_id
            if wanted is not None and wanted != self.target.id:
                # the operator confirmed a target that is no longer the previous release
                asked = await self.repo.release_by_id(wanted)
                raise StepFailed(
                    f"rollback to {asked.release_version if asked else wanted} requested, "
                    f"but the previous release is now {self.target.release_version}"
                )
        else:
            if self.task.release_artifact_id is None:
                raise StepFailed("release_artifact_id is NULL: a deploy task must name a release")
            self.target = await self.repo.release_by_id(self.task.release_artifact_id)
            if self.target is None:
                raise StepFailed(f"release artifact {self.task.release_artifact_id} not found")
        try:  # the backend may have written anything: it must not reach a command line
            validate_version(self.target.release_version)
        except ValueError as exc:
            raise StepFailed(f"{exc} (column release_version)") from None
        if self.target.size == 0:
            raise StepFailed(
                f"artifact_data of release {self.target.release_version} is empty (0 bytes)"
            )
        accepted = tuple(getattr(self.s.deployer, "chart_types", ()))
        if accepted and self.target.chart_type not in accepted:
            raise StepFailed(
                f"release {self.target.release_version} has chart_type "
                f"{self.target.chart_type!r}, but deployer {self.s.deployer.name!r} "
                f"accepts {', '.join(accepted)}"
            )
        self.result.release = ReleaseRecord(
            self.target.release_version, self.current.release_version if self.current else None
        )
        await self.event(
            "resolve",
            "succeeded",
            f"{self.task.type} to {self.target.release_version}"
            + (
                f" (current {self.current.release_version})" if self.current else " (first release)"
            ),
        )

    async def _materialize(self, artifact: ArtifactInfo, step_name: str) -> Path:
        """Fetch, verify and extract ``artifact`` into a private work dir (once per task:
        a release extracted for the change summary serves the automatic rollback too)."""
        if artifact.id in self.roots:
            return self.roots[artifact.id]
        root = await self._fetch_and_extract(artifact, step_name)
        self.roots[artifact.id] = root
        return root

    async def _fetch_and_extract(self, artifact: ArtifactInfo, step_name: str) -> Path:
        async with self.step(step_name, f"fetching {artifact.release_version}", slow=True):
            workdir = make_private_dir(self.settings.work_dir, f"task-{self.task.id}-")
            self.workdirs.append(workdir)
            try:
                done = await materialize(
                    self.repo,
                    artifact,
                    workdir,
                    trusted_keys=self.s.trusted_keys,
                    max_artifact_bytes=self.settings.max_artifact_bytes,
                    max_members=self.settings.max_members,
                    max_extracted_bytes=self.settings.max_extracted_bytes,
                )
            except ArtifactError as exc:
                raise StepFailed(str(exc)) from None
            self.secrets.add_release(done.env_data, done.values_data)
            fetched = done.fetched
            await self.event(
                step_name, "info", f"fetched {fetched.size} bytes in {fetched.seconds:.3f}s"
            )
            await self.event(
                step_name, "info", f"verified sha256 {fetched.sha256[:12]}…; {done.signature}"
            )
            self.result.artifacts[artifact.release_version] = ArtifactRecord(
                fetched.size, fetched.sha256, done.files
            )
            await self.event(
                step_name, "succeeded", f"extracted {done.files} files ({done.size} bytes)"
            )
        return done.root

    def _request(
        self,
        purpose: Literal["deploy", "rollback", "auto-rollback"],
        release: ArtifactInfo,
        workdir: Path,
        current: ArtifactInfo | None,
    ) -> DeployRequest:
        env_file = workdir / ENV_FILE
        values_file = workdir / VALUES_FILE
        step = "auto-rollback" if purpose == "auto-rollback" else purpose

        async def report(message: str) -> None:
            await self.event(step, "info", message, flush=True)

        return DeployRequest(
            task_id=self.task.id,
            purpose=purpose,
            release=release.as_release(),
            workdir=workdir,
            env_file=env_file if env_file.exists() else None,
            values_file=values_file if values_file.exists() else None,
            current=current.as_release() if current else None,
            report=report,
        )

    async def _call_deployer(
        self,
        purpose: Literal["deploy", "rollback", "auto-rollback"],
        release: ArtifactInfo,
        workdir: Path,
        current: ArtifactInfo | None = None,
    ) -> DeployOutcome:
        request = self._request(purpose, release, workdir, current or self.current)
        method = self.s.deployer.deploy if purpose == "deploy" else self.s.deployer.rollback
        limit = self.settings.deploy_timeout
        try:
            # A hung deployer would hold the one-deployment slot for ever while its
            # heartbeat says all is well: stop it (plugins kill their child processes).
            async with asyncio.timeout(limit):
                return await method(request)
        except TimeoutError:
            raise StepFailed(
                f"{purpose} did not finish within {limit:g}s (WRKTALK_AGENT_DEPLOY_TIMEOUT)",
                system_changed=True,
            ) from None
        except asyncio.CancelledError:
            if cancel_requested():
                raise
            raise StepFailed(
                f"deployer {self.s.deployer.name!r} {purpose} was cancelled from within",
                system_changed=True,
            ) from None
        except DeployError as exc:
            self.result.deployer = ToolOutput(self._tail(exc.output))
            raise StepFailed(
                str(exc), system_changed=exc.system_changed, output=exc.output
            ) from None
        except BackendError as exc:
            raise StepFailed(str(exc), system_changed=True) from None
        except Exception as exc:  # a plugin bug: the target may have changed all the same
            self.log.exception("deployer.crashed", method=purpose)
            raise StepFailed(
                f"deployer {self.s.deployer.name!r} failed: {describe(exc)}", system_changed=True
            ) from None

    async def _summarize_changes(self, workdir: Path) -> None:
        """What the task will change, from the deployer's comparison of the live release
        with the target, before anything changes (optional ``describe_changes``). A
        summary that cannot be made is a note, never a failure."""
        describe_changes = DEPLOYER.optional_method(self.s.deployer, "describe_changes")
        if describe_changes is None or self.target is None:
            return
        if self.current is not None and self.current.id == self.target.id:
            return
        async with self.step("changes", "comparing with the live release"):
            try:
                current_root = None
                if self.current is not None:
                    current_root = await self._materialize(self.current, "changes-artifact")
                lines = await bounded(
                    describe_changes(current_root, workdir),
                    self.settings.backend_timeout,
                    f"{self.s.deployer.name} describe_changes",
                )
            except (BackendError, StepFailed) as exc:
                await self.event("changes", "skipped", f"no summary: {exc}")
                return
            self.changes = [str(line) for line in lines or ()][:MAX_CHANGE_LINES]
            self.result.changes = self.changes
            for line in self.changes:
                await self.event("changes", "info", line)
            count = len(self.changes)
            said = "no change" if not count else f"{count} change{'s' if count != 1 else ''}"
            await self.event("changes", "succeeded", said)

    async def _before_maintenance(self, workdir: Path) -> None:
        """The deployer's optional ``validate`` and ``prepare``: a release they refuse
        fails here, before maintenance goes on, with nothing changed."""
        assert self.target is not None
        deployer = self.s.deployer
        await self._summarize_changes(workdir)
        validate = DEPLOYER.optional_method(deployer, "validate")
        prepare = DEPLOYER.optional_method(deployer, "prepare")
        if validate is None and prepare is None:
            return
        request = self._request(self.task.type, self.target, workdir, self.current)
        limit = self.settings.backend_timeout
        if validate is not None:
            async with self.step(
                "validate", f"{deployer.name} checks {self.target.release_version}"
            ):
                try:
                    warnings = await bounded(validate(request), limit, f"{deployer.name} validate")
                except ValidationError as exc:
                    self.result.rejected_before_deploy = True
                    if exc.output:
                        self.result.validation = ToolOutput(self._tail(exc.output))
                    raise StepFailed(f"rejected before deploy: {exc}") from None
                except BackendError as exc:
                    self.result.rejected_before_deploy = True
                    raise StepFailed(f"rejected before deploy: {exc}") from None
                for warning in warnings or ():
                    await self.event("validate", "info", f"warning: {warning}")
                await self.event("validate", "succeeded", "release accepted")
        if prepare is not None:
            async with self.step("prepare", "staging the release (site still up)", slow=True):
                try:
                    await bounded(prepare(request), limit, f"{deployer.name} prepare")
                except BackendError as exc:
                    raise StepFailed(f"could not prepare the release: {exc}") from None
                await self.event("prepare", "succeeded", "staged")

    async def _health_check(self) -> None:
        url = self.settings.healthcheck_url
        if not url:
            return
        expecting = f"GET {url} expecting {self.settings.healthcheck_status}"
        async with self.step("health", expecting, slow=True):
            last = ""
            for attempt in range(1, self.settings.healthcheck_retries + 1):
                status, last = await asyncio.to_thread(
                    _http_status, url, self.settings.healthcheck_timeout
                )
                if status == self.settings.healthcheck_status:
                    self.result.health = HealthRecord(attempt, status=status)
                    await self.event("health", "succeeded", f"{url} answered {status}")
                    return
                if attempt < self.settings.healthcheck_retries:
                    await asyncio.sleep(self.settings.healthcheck_interval)
            self.result.health = HealthRecord(
                self.settings.healthcheck_retries, error=self.secrets.redact(last)
            )
            raise StepFailed(
                f"health check failed: {url} {last} after "
                f"{self.settings.healthcheck_retries} attempts",
                system_changed=True,
            )

    async def _auto_rollback(self, failure: StepFailed) -> str | None:
        """Undo a failed deploy. Returns None on success, the error text on failure, or
        ``"skipped"`` when no rollback applies."""
        if not self.settings.auto_rollback:
            await self.event("auto-rollback", "skipped", "WRKTALK_AGENT_AUTO_ROLLBACK is off")
            return "skipped"
        if self.current is None or self.target is None:
            await self.event("auto-rollback", "skipped", "no earlier release to return to")
            return "skipped"
        version = self.current.release_version
        try:
            workdir = await self._materialize(self.current, "auto-rollback-artifact")
            async with self.step(
                "auto-rollback", f"returning to {version} after: {failure}", slow=True
            ):
                outcome = await self._call_deployer(
                    "auto-rollback", self.current, workdir, current=self.target
                )
                await self._health_check()
                await self.event("auto-rollback", "succeeded", f"{version} restored")
            self.result.auto_rollback = AutoRollbackRecord(
                version, True, output=self._tail(outcome.output)
            )
            return None
        except StepFailed as exc:
            error = self.secrets.redact(str(exc))
            self.result.auto_rollback = AutoRollbackRecord(version, False, error=error)
            return error
        except Exception as exc:  # a bug must not leave the task without an outcome
            self.log.exception("auto_rollback.crashed")
            error = self.secrets.redact(f"unexpected error: {describe(exc)}")
            self.result.auto_rollback = AutoRollbackRecord(version, False, error=error)
            return error

    # -- maintenance -------------------------------------------------------------------
    async def _maintenance_on(self, version: str) -> None:
        handler = self.s.maintenance
        if handler is None:
            return
        assert self.task.claim_token is not None
        async with self.step("maintenance-on", f"{handler.name}"):
            own = maint.task_owner(self.task.id)
            reason = f"{self.task.type} {version} (task {self.task.id})"
            try:
                state = await maint.hold_for_task(
                    self.s, self.task.id, self.task.claim_token, reason
                )
            except DB_ERRORS as exc:
                raise StepFailed(
                    f"maintenance mode could not be recorded: {describe(exc)}"
                ) from None
            if state is None:
                raise StepFailed("maintenance mode not held: this claim no longer owns the task")
            # From here on, always release the hold: an enable that failed half-way (a
            # flag written, then a failed reload) must not leave the site in maintenance.
            self.maintenance_switched = True
            try:
                await maint.switch_on(self.s, reason)
            except BackendError as exc:
                self.enable_failed = True
                raise StepFailed(f"maintenance mode could not be enabled: {exc}") from None
            others = [h for h in state.holds if h.holder != own]
            if others:
                held = ", ".join(maint.describe_hold(h) for h in others)
                await self.event("maintenance-on", "succeeded", f"on; also held by {held}")
            else:
                await self.event("maintenance-on", "succeeded", f"{handler.name} switched on")

    async def _maintenance_off(self, lease: Lease) -> None:
        """Release this task's hold while the lease is held; the proxy goes off when it
        was the last hold. A failed switch-off is retried with backoff for a while here
        (the agent's maintenance loop goes on after that); what it cost is recorded."""
        if not self.maintenance_switched:
            return
        if not lease.valid:
            self.log.warning("maintenance.left_for_recovery", reason=lease.reason)
            return
        assert self.task.claim_token is not None
        try:
            done = await maint.release_for_task(self.s, self.task.id, self.task.claim_token)
        except (*_FLUSH_ERRORS, asyncpg.PostgresError) as exc:
            self.log.error("maintenance.release_failed", error=describe(exc))
            await self.event(
                "maintenance-off",
                "failed",
                f"could not release this task's hold: {describe(exc)} (released by the "
                "agents once the task has ended)",
            )
            self.maintenance_note = f"still on: this task's hold could not be released ({exc})"
            return
        if not done.released:
            return  # the claim is lost: the recovering agent releases it
        if done.others:
            held = ", ".join(maint.describe_hold(h) for h in done.others)
            await self.event("maintenance-off", "info", f"stays on: held by {held}")
            return
        if done.error is None:
            await self.event("maintenance-off", "succeeded", "switched off")
            return
        if self.enable_failed:  # the same misconfiguration again: not a second failure
            self.log.warning("maintenance.cleanup_failed", error=done.error)
            await maint.forget_failed_switch(self.s)
            await self.event("maintenance-off", "info", "maintenance was not switched on")
            return
        await self._retry_switch_off(done.error)

    async def _retry_switch_off(self, error: str) -> None:
        began = time.monotonic()
        self.log.error("maintenance.disable_failed", error=error, retrying=True)
        await self.event(
            "maintenance-off", "failed", f"could not switch off: {error}; retrying", flush=True
        )
        try:
            done, failures = await maint.retry_until_off(
                self.s, time.monotonic() + maint.TASK_RETRY_SECONDS
            )
        except (*_FLUSH_ERRORS, asyncpg.PostgresError) as exc:
            done, failures = maint.Released(error=describe(exc)), 1
        seconds = maint.seconds_text(time.monotonic() - began)
        attempts = f"{failures} failed attempt{'s' if failures != 1 else ''}"
        if done.error is None:
            self.maintenance_note = (
                f"stayed on {seconds} longer than needed: switching it off failed "
                f"({attempts}; first: {error})"
            )
            self.log.warning("maintenance.off_after_retries", failures=failures, seconds=seconds)
            await self.event(
                "maintenance-off", "succeeded", f"switched off after {attempts} ({seconds})"
            )
        else:
            self.maintenance_still_on = True
            self.maintenance_note = (
                f"still on {seconds} after the task ended: switching it off keeps failing "
                f"({attempts}; last: {done.error}); the agent keeps retrying"
            )
            await self.event(
                "maintenance-off",
                "failed",
                f"still on after {attempts} over {seconds}: {done.error}; the agent keeps retrying",
            )

    async def _site_after_interruption(self) -> None:
        """The deploy was interrupted (a second SIGTERM): ask the deployer what is live
        before maintenance goes off, and say so."""
        live = await ask_live(self.s)
        text = live_text(live)
        self.result.live = {"version": live.version, "state": live.state, "detail": live.detail}
        target = self.target.release_version if self.target else None
        current = self.current.release_version if self.current else None
        if live.state == "deployed" and live.version in (target, current):
            self.interrupted_live = f"found {text}"
            await self.event("interrupted", "info", f"live: {text}")
            return
        nxt = (
            f"check the site, then deploy {target} again or roll back"
            if target
            else "check what the target runs, then deploy the release you want"
        )
        self.result.next_step = nxt
        self.interrupted_live = f"found {text}; next: {nxt}"
        self.log.warning("task.interrupted_live", live=text, next_step=nxt)
        await self.event("interrupted", "info", f"live: {text}: maintenance goes off anyway; {nxt}")

    # -- outcome -------------------------------------------------------------------------
    async def _finish(self, verdict: Verdict) -> Literal["completed", "failed"] | None:
        """Write the outcome, flags, maintenance record and the notifications promised in
        one transaction (retrying through outages). None: the task was taken away."""
        status = verdict.status
        error = self.secrets.redact(verdict.error) if verdict.error else None
        rollback_error = (
            self.secrets.redact(verdict.rollback_error) if verdict.rollback_error else None
        )
        # free text a tool or a backend wrote (outputs, errors, details) was masked where
        # it entered the result; the agent's own fields (versions, timings) are as they are
        flags = None
        if status == "completed" and self.target is not None:
            flags = FlagChange(promote=self.target.id)
        if self.interrupted_live and error:
            error = f"{error}; {self.interrupted_live}"
        if self.maintenance_note:
            self.result.maintenance = self.maintenance_note
            if self.maintenance_still_on:  # the release is live, the site is not back
                status = "failed"
                error = f"{error + '; ' if error else ''}maintenance mode {self.maintenance_note}"
        self.result.outcome = status
        self.result.error = error
        event = outbox.build_event(
            kind=verdict.kind or _kind_for(self.task.type, status),
            settings_installation=self.settings.installation_name,
            agent_id=self.agent_id,
            task=self.task,
            outcome=status,
            target=self.target,
            current=self.current,
            error=self.secrets.redact(verdict.deploy_error) if verdict.deploy_error else error,
            started_at=self.started_at,
            steps=self.steps,
            rollback_error=rollback_error,
            changes=self.changes,
            maintenance=self.maintenance_note,
        )
        try:
            return await write_outcome(
                self.s,
                self.task,
                self.timeline,
                status=status,
                result=self.result.to_json(),
                error=error,
                flags=flags,
                event=event,
            )
        except asyncio.CancelledError:
            # A second signal while the outcome is being written: it stays unwritten and
            # the task is recovered by whichever agent takes it over (never re-run).
            self.log.error("outcome.unwritten", outcome=status)
            raise


async def write_outcome(
    services: Services,
    task: Task,
    timeline: Timeline,
    *,
    status: Literal["completed", "failed"],
    result: dict[str, Any],
    error: str | None,
    flags: FlagChange | None,
    event: NotificationEvent,
) -> Literal["completed", "failed"] | None:
    """The one transaction that ends a task, retried through outages; only while
    ``task``'s claim still owns it. Returns the status written (None: taken away,
    nothing written).

    Everything written is made storable first (:func:`wrktalk_agent.safe_text.storable`),
    so no output, error or detail can make the database refuse it. When it refuses all
    the same (a constraint, a trigger, a missing privilege: retrying cannot help) the task
    still ends, in ever smaller writes that keep the verdict and record what was dropped
    (``result.dropped``): without the timeline entries (their table may be what is
    refused); then with only the verdict in the result and a plain-ASCII error; then
    failed, saying what was refused, without the flag change; then also without the
    notification. Only a refusal of the task row itself leaves it to the lease."""
    log = timeline.log
    assert task.claim_token is not None
    names = outbox.notifier_names(services.notifiers)
    result_now = storable_value(result)
    error_now = storable(error) if error is not None else None
    event_now = storable_value(outbox.event_json(event))
    flags_now, status_now, notify = flags, status, True
    dropped: list[str] = []
    for degraded in range(5):
        try:
            async for attempt in db_retrying(log, "outcome", services.repo):
                with attempt:
                    row = await services.repo.finish_task(
                        task.id,
                        task.claim_token,
                        status=status_now,
                        result=result_now,
                        error=error_now,
                        flags=flags_now,
                        events=list(timeline.unsaved),
                        agent_id=services.settings.agent_id,
                        notifications=(names, event_now) if notify else None,
                    )
        except _REFUSED as exc:
            if degraded == 4:
                raise
            refused = storable(describe(exc), limit=1000)
            log.error("outcome.refused", error=refused, outcome=status_now, degraded=degraded)
            if degraded == 0:
                dropped.append(f"{len(timeline.unsaved)} timeline entries")
                timeline.unsaved.clear()
            elif degraded == 1:
                dropped.append("the task result (outputs, steps, details)")
                error_now = _plain(error_now)
                event_now = storable_value(
                    outbox.event_json(dataclasses.replace(event, error=error_now, steps=()))
                )
                result_now = {"agent_id": services.settings.agent_id, "outcome": status_now}
                if error_now:
                    result_now["error"] = error_now
            elif degraded == 2:
                dropped.append("the release flag change")
                flags_now, status_now = None, "failed"
                error_now = _plain(f"the database refused the outcome ({status}): {refused}")
                event_now = storable_value(
                    outbox.event_json(
                        dataclasses.replace(event, outcome="failed", error=error_now, steps=())
                    )
                )
                result_now = {**result_now, "outcome": "failed", "error": error_now}
            else:
                dropped.append("the notification")
                notify = False
            result_now = {**result_now, "dropped": list(dropped), "refused": refused}
            continue
        if row is None:
            return None
        timeline.unsaved.clear()
        if dropped:
            log.warning("outcome.degraded", outcome=status_now, dropped=dropped)
        return status_now
    return None


#: What makes a write fail for its content or a constraint (not an outage): asyncpg
#: reports arguments it cannot encode as DataError, a PostgresError like the server's.
_REFUSED: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    ValueError,
    TypeError,
    RecursionError,
)


def _plain(text: str | None) -> str | None:
    """``text`` in plain ASCII, bounded: what any database takes."""
    if text is None:
        return None
    return storable(text.encode("ascii", "backslashreplace").decode("ascii"), limit=2000)


def _known_passwords(settings: AgentSettings) -> list[str | None]:
    """The database password, from the settings or the DSN."""
    found: list[str | None] = []
    if settings.db_password is not None:
        found.append(settings.db_password.get_secret_value())
    with contextlib.suppress(ValueError):
        found.append(urlsplit(settings.dsn()).password)
    return found


def _kind_for(task_type: str, status: str) -> NotificationKind:
    if task_type == "rollback":
        return (
            NotificationKind.ROLLBACK_SUCCEEDED
            if status == "completed"
            else NotificationKind.ROLLBACK_FAILED
        )
    return (
        NotificationKind.DEPLOY_SUCCEEDED
        if status == "completed"
        else NotificationKind.DEPLOY_FAILED
    )


def _http_status(url: str, timeout: float) -> tuple[int | None, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (operator's URL)
            return response.status, f"answered {response.status}"
    except urllib.error.HTTPError as exc:
        return exc.code, f"answered {exc.code}"
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, f"unreachable ({reason})"


async def ask_live(services: Services) -> LiveState:
    """What the deployer says the target runs (its optional ``live_release()``)."""
    query = DEPLOYER.optional_method(services.deployer, "live_release")
    if query is None:
        return LiveState(
            None, "unknown", f"deployer {services.deployer.name!r} cannot tell what is live"
        )
    try:
        live = await bounded(
            query(), services.settings.backend_timeout, f"{services.deployer.name} live_release"
        )
    except BackendError as exc:
        return LiveState(None, "unknown", str(exc))
    if not isinstance(live, LiveState):
        return LiveState(None, "unknown", f"live_release returned {type(live).__name__}")
    return live


def live_text(live: LiveState) -> str:
    if live.state == "deployed":
        text = f"{live.version} live"
    elif live.state == "half-applied":
        text = f"{live.version or 'a release'} half-applied"
    elif live.state == "absent":
        text = "nothing deployed"
    else:
        text = "live release unknown"
    return f"{text} ({live.detail})" if live.detail else text
