"""One task, start to finish: the named steps between a claim and the outcome.

claimed → artifact (fetch, verify, extract) → maintenance on → deploy/rollback → health
→ [auto-rollback] → outcome + release flags (one transaction, only if still ours)
→ maintenance off (always) → notify (never fails the task) → secure delete.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import asyncpg
import structlog
from tenacity import AsyncRetrying, retry_if_exception, wait_exponential_jitter

from wrktalk_agent import metrics
from wrktalk_agent.artifacts import (
    ENV_FILE,
    RELEASE_DIR,
    VALUES_FILE,
    ArtifactError,
    check_signature,
    extract_release,
    fetch_artifact,
    make_private_dir,
    secure_delete,
    write_secret_file,
)
from wrktalk_agent.config import AgentSettings
from wrktalk_agent.db.models import ArtifactInfo, Task
from wrktalk_agent.db.repository import CONNECTION_ERRORS, EventStatus, Repository
from wrktalk_agent.interfaces import (
    BackendError,
    Delivery,
    Deployer,
    DeployError,
    DeployOutcome,
    DeployRequest,
    MaintenanceHandler,
    NotificationEvent,
    NotificationKind,
    Notifier,
    StepTiming,
    validate_version,
)
from wrktalk_agent.log import get_logger
from wrktalk_agent.process import tail

#: Errors worth retrying a write for: the database went away, not a bad statement.
DB_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    asyncpg.PostgresConnectionError,
)


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


@dataclass
class Services:
    """The selected backends and what the pipeline needs around them."""

    settings: AgentSettings
    repo: Repository
    deployer: Deployer
    maintenance: MaintenanceHandler | None
    notifiers: Sequence[Notifier]
    trusted_keys: list[Any] = field(default_factory=list)


def db_retrying(log: Any, what: str, repo: Repository) -> AsyncRetrying:
    """Retry a database write with exponential backoff and jitter until it succeeds (an
    outage ends some day); not once the agent has closed its own pool."""

    def before_sleep(state: Any) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(f"{what}.retrying", attempt=state.attempt_number, error=_describe(exc))

    def outage(exc: BaseException) -> bool:
        return isinstance(exc, DB_ERRORS) and not repo.closed

    return AsyncRetrying(
        retry=retry_if_exception(outage),
        wait=wait_exponential_jitter(multiplier=0.2, max=15.0, jitter=0.5),
        before_sleep=before_sleep,
        reraise=True,
    )


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class TaskRun:
    """Executes one claimed task. Create one per task; call :meth:`execute`."""

    def __init__(self, services: Services, task: Task) -> None:
        self.s = services
        self.settings = services.settings
        self.repo = services.repo
        self.task = task
        self.agent_id = services.settings.agent_id
        self.log = get_logger()
        self.steps: list[StepTiming] = []
        self.result: dict[str, Any] = {"agent_id": self.agent_id, "steps": []}
        #: timeline entries not yet in the database (written in batches: see ``event``)
        self.unsaved_events: list[PendingEvent] = []
        self.workdirs: list[Path] = []
        self.target: ArtifactInfo | None = None
        self.current: ArtifactInfo | None = None
        self.started = time.monotonic()
        self.started_at = datetime.now(UTC)
        self.maintenance_on = False
        self.enable_failed = False
        self.taken_away = asyncio.Event()

    # -- events and steps --------------------------------------------------------------
    async def event(
        self, step: str, status: EventStatus, message: str = "", *, flush: bool = False
    ) -> None:
        """Append to the timeline. Entries are buffered with their own time and written in
        one statement before anything slow (``flush``) and with the outcome, so a fast
        task costs a few round trips, not one per entry; an outage only delays them."""
        self.unsaved_events.append(PendingEvent(datetime.now(UTC), step, status, message))
        if flush:
            await self.flush_events()

    async def flush_events(self) -> None:
        if not self.unsaved_events:
            return
        batch = list(self.unsaved_events)
        try:
            await self.repo.add_events(self.task.id, batch, self.agent_id)
        except DB_ERRORS as exc:
            self.log.warning("event.deferred", count=len(batch), error=_describe(exc))
            return
        del self.unsaved_events[: len(batch)]

    @asynccontextmanager
    async def step(
        self, name: str, start_message: str = "", *, slow: bool = False
    ) -> AsyncIterator[None]:
        """A named step: started/failed events, timing, metrics. ``slow`` steps make their
        "started" entry visible at once (operators watch those)."""
        await self.event(name, "started", start_message, flush=slow)
        began = time.monotonic()
        ok = False
        try:
            yield
            ok = True
        except StepFailed as exc:
            await self.event(name, "failed", str(exc))
            raise
        except asyncio.CancelledError:
            await self.event(name, "failed", "interrupted by shutdown")
            raise
        finally:
            seconds = time.monotonic() - began
            self.steps.append(StepTiming(step=name, seconds=round(seconds, 3), ok=ok))
            self.result["steps"].append({"step": name, "ok": ok, "seconds": round(seconds, 3)})
            metrics.STEP_SECONDS.labels(step=name).observe(seconds)

    # -- the whole task ----------------------------------------------------------------
    async def execute(self) -> Literal["completed", "failed", "taken away"]:
        status: Literal["completed", "failed"] = "failed"
        error: str | None = None
        kind: NotificationKind | None = None
        rollback_error: str | None = None
        written = False
        structlog.contextvars.bind_contextvars(
            task_id=str(self.task.id), type=self.task.type, plugin=self.s.deployer.name
        )
        self.log.info("task.claimed")
        await self.event("claimed", "info", f"claimed by {self.agent_id}")
        try:
            async with self._heartbeat():
                try:
                    await self._run_steps()
                    status = "completed"
                except StepFailed as exc:
                    error = str(exc)
                    if self.task.type == "deploy" and exc.system_changed:
                        rollback_error = await self._auto_rollback(exc)
                        if rollback_error == "skipped":
                            rollback_error = None
                        else:
                            kind = NotificationKind.AUTO_ROLLBACK
                except asyncio.CancelledError:
                    # The agent is stopping and the grace period is over (or a second
                    # signal came): the task fails, and is still cleaned up and reported.
                    error = "interrupted by shutdown"
                except Exception as exc:  # a bug in a plugin must not leave the task stuck
                    self.log.exception("task.crashed")
                    error = f"unexpected error: {_describe(exc)}"
                written = await self._finish(status, error)
        finally:
            await self._maintenance_off()
            for workdir in self.workdirs:
                for problem in secure_delete(workdir):
                    self.log.warning("workdir.delete_failed", problem=problem)
        if not written:
            return "taken away"
        if kind is None:
            kind = _kind_for(self.task.type, status)
        await self._notify(kind, status, error, rollback_error)
        elapsed = time.monotonic() - self.started
        metrics.TASKS.labels(type=self.task.type, outcome=status).inc()
        metrics.TASK_SECONDS.labels(type=self.task.type).observe(elapsed)
        self.log.info("task.finished", outcome=status, seconds=round(elapsed, 3), error=error)
        return status

    async def _run_steps(self) -> None:
        async with self.step("resolve"):
            await self._resolve()
        assert self.target is not None
        version = self.target.release_version
        # plugins' own log lines carry the task too (this runs in the task's own context)
        structlog.contextvars.bind_contextvars(version=version)
        workdir = await self._materialize(self.target, "artifact")
        await self._maintenance_on(version)
        purpose: Literal["deploy", "rollback"] = self.task.type
        async with self.step(
            purpose, f"{purpose} {version} with {self.s.deployer.name}", slow=True
        ):
            outcome = await self._call_deployer(purpose, self.target, workdir)
            self.result["deployer"] = {"output": tail(outcome.output), "details": outcome.details}
            await self.event(purpose, "succeeded", f"{purpose} of {version} done")
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
                raise StepFailed("deploy task names no release artifact")
            self.target = await self.repo.release_by_id(self.task.release_artifact_id)
            if self.target is None:
                raise StepFailed(f"release artifact {self.task.release_artifact_id} not found")
        try:  # the backend may have written anything: it must not reach a command line
            validate_version(self.target.release_version)
        except ValueError as exc:
            raise StepFailed(str(exc)) from None
        accepted = tuple(getattr(self.s.deployer, "chart_types", ()))
        if accepted and self.target.chart_type not in accepted:
            raise StepFailed(
                f"release {self.target.release_version} has chart_type "
                f"{self.target.chart_type!r}, but deployer {self.s.deployer.name!r} "
                f"accepts {', '.join(accepted)}"
            )
        self.result["release"] = {
            "version": self.target.release_version,
            "from": self.current.release_version if self.current else None,
        }
        await self.event(
            "resolve",
            "succeeded",
            f"{self.task.type} to {self.target.release_version}"
            + (
                f" (current {self.current.release_version})" if self.current else " (first release)"
            ),
        )

    async def _materialize(self, artifact: ArtifactInfo, step_name: str) -> Path:
        """Fetch, verify and extract ``artifact`` into a private work dir."""
        async with self.step(step_name, f"fetching {artifact.release_version}", slow=True):
            workdir = make_private_dir(self.settings.work_dir, f"task-{self.task.id}-")
            self.workdirs.append(workdir)
            try:
                async with self.repo.connection() as conn:
                    fetched = await fetch_artifact(
                        conn, artifact, workdir, max_bytes=self.settings.max_artifact_bytes
                    )
                await self.event(
                    step_name,
                    "info",
                    f"fetched {fetched.size} bytes in {fetched.seconds:.3f}s",
                )
                signature = check_signature(artifact, fetched.sha256, self.s.trusted_keys)
                await self.event(
                    step_name, "info", f"verified sha256 {fetched.sha256[:12]}…; {signature}"
                )
                root = workdir / RELEASE_DIR
                files, size = await asyncio.to_thread(
                    extract_release,
                    fetched.path,
                    root,
                    max_members=self.settings.max_members,
                    max_bytes=self.settings.max_extracted_bytes,
                )
                fetched.path.unlink()
                env_data, values_data = await self.repo.release_secrets(artifact.id)
                if env_data is not None:
                    write_secret_file(root / ENV_FILE, env_data)
                if values_data is not None:
                    write_secret_file(root / VALUES_FILE, values_data)
            except ArtifactError as exc:
                raise StepFailed(str(exc)) from None
            self.result.setdefault("artifacts", {})[artifact.release_version] = {
                "bytes": fetched.size,
                "sha256": fetched.sha256,
                "files": files,
            }
            await self.event(step_name, "succeeded", f"extracted {files} files ({size} bytes)")
        return root

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
        except DeployError as exc:
            self.result.setdefault("deployer", {})["output"] = tail(exc.output)
            raise StepFailed(
                str(exc), system_changed=exc.system_changed, output=exc.output
            ) from None
        except BackendError as exc:
            raise StepFailed(str(exc), system_changed=True) from None

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
                    self.result["health"] = {"status": status, "attempts": attempt}
                    await self.event("health", "succeeded", f"{url} answered {status}")
                    return
                if attempt < self.settings.healthcheck_retries:
                    await asyncio.sleep(self.settings.healthcheck_interval)
            self.result["health"] = {"error": last, "attempts": self.settings.healthcheck_retries}
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
            self.result["auto_rollback"] = {
                "to": version,
                "ok": True,
                "output": tail(outcome.output),
            }
            return None
        except StepFailed as exc:
            self.result["auto_rollback"] = {"to": version, "ok": False, "error": str(exc)}
            return str(exc)

    # -- maintenance -------------------------------------------------------------------
    async def _maintenance_on(self, version: str) -> None:
        handler = self.s.maintenance
        if handler is None:
            return
        async with self.step("maintenance-on", f"{handler.name}"):
            # From here on, always turn it off again: an enable that failed half-way (a
            # flag written, then a failed reload) must not leave the site in maintenance.
            self.maintenance_on = True
            try:
                await handler.enable(f"{self.task.type} {version} (task {self.task.id})")
            except BackendError as exc:
                self.enable_failed = True
                raise StepFailed(f"maintenance mode could not be enabled: {exc}") from None
            metrics.MAINTENANCE.set(1)
            await self._set_flag(True)
            await self.event("maintenance-on", "succeeded", "site answers 503")

    async def _maintenance_off(self) -> None:
        handler = self.s.maintenance
        if handler is None or not self.maintenance_on:
            return
        try:
            await handler.disable()
        except Exception as exc:  # must never mask the task's outcome
            if self.enable_failed:  # the same misconfiguration again: not a second failure
                self.log.warning("maintenance.cleanup_failed", error=_describe(exc))
                await self.event(
                    "maintenance-off", "info", "maintenance was not switched on", flush=True
                )
                return
            self.log.error("maintenance.disable_failed", error=_describe(exc))
            await self.event(
                "maintenance-off", "failed", f"could not disable: {_describe(exc)}", flush=True
            )
            return
        self.maintenance_on = False
        metrics.MAINTENANCE.set(0)
        await self._set_flag(False)
        await self.event("maintenance-off", "succeeded", "site back to normal", flush=True)

    async def _set_flag(self, enabled: bool) -> None:
        try:
            async for attempt in db_retrying(self.log, "maintenance_flag", self.repo):
                with attempt:
                    await asyncio.wait_for(self.repo.set_maintenance_flag(enabled), 30)
        except asyncpg.PostgresError as exc:  # not an outage: retrying would not help
            self.log.warning("maintenance_flag.failed", error=_describe(exc))

    # -- heartbeat and outcome -----------------------------------------------------------
    @asynccontextmanager
    async def _heartbeat(self) -> AsyncIterator[None]:
        async def beat() -> None:
            while True:
                await asyncio.sleep(self.settings.heartbeat_interval)
                async for attempt in db_retrying(self.log, "heartbeat", self.repo):
                    with attempt:
                        try:
                            owned = await self.repo.heartbeat(self.task.id, self.agent_id)
                        except DB_ERRORS:
                            metrics.HEARTBEAT_FAILURES.inc()
                            raise
                if not owned:
                    self.log.warning("task.taken_away", during="heartbeat")
                    self.taken_away.set()
                    return

        beater = asyncio.create_task(beat(), name=f"heartbeat-{self.task.id}")
        beater.add_done_callback(self._heartbeat_done)
        try:
            yield
        finally:
            beater.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beater

    def _heartbeat_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.log.error("heartbeat.crashed", error=_describe(task.exception()))

    async def _finish(self, status: Literal["completed", "failed"], error: str | None) -> bool:
        """Write the outcome (retrying through outages). False: the task was taken away."""
        promote = self.target.id if status == "completed" and self.target else None
        self.result["outcome"] = status
        if error:
            self.result["error"] = error
        events = list(self.unsaved_events)
        try:
            async for attempt in db_retrying(self.log, "outcome", self.repo):
                with attempt:
                    row = await self.repo.finish_task(
                        self.task.id,
                        self.agent_id,
                        status=status,
                        result=self.result,
                        error=error,
                        promote=promote,
                        events=events,
                    )
        except asyncio.CancelledError:
            # A second signal while the outcome is being written: it stays unwritten and
            # the task will be found abandoned (never re-run), by us at restart or another.
            self.log.error("outcome.unwritten", outcome=status)
            raise
        if row is None:
            self.log.warning("task.taken_away", during="finish", outcome=status)
            return False
        self.unsaved_events.clear()
        return True

    # -- notifications -----------------------------------------------------------------------
    async def _notify(
        self,
        kind: NotificationKind,
        status: Literal["completed", "failed"],
        error: str | None,
        rollback_error: str | None,
    ) -> None:
        if not self.s.notifiers:
            return
        event = NotificationEvent(
            kind=kind,
            installation=self.settings.installation_name,
            task_id=self.task.id,
            task_type=self.task.type,
            outcome=status,
            version=self.target.release_version if self.target else None,
            from_version=self.current.release_version if self.current else None,
            to_version=self.target.release_version if self.target else None,
            error=error,
            agent_id=self.agent_id,
            started_at=self.started_at,
            finished_at=datetime.now(UTC),
            steps=tuple(self.steps),
            rollback_error=rollback_error,
        )
        outcomes = await notify_all(self.s.notifiers, event, self.log)
        await self.event("notify", "info", summarize_deliveries(outcomes), flush=True)
        try:
            await self.repo.add_notification_result(self.task.id, outcomes)
        except DB_ERRORS as exc:
            self.log.warning("notify.result_unsaved", error=_describe(exc))


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


async def notify_all(
    notifiers: Sequence[Notifier], event: NotificationEvent, log: Any
) -> dict[str, list[dict[str, Any]]]:
    """Run every notifier; failures are recorded, never raised."""
    outcomes: dict[str, list[dict[str, Any]]] = {}
    for notifier in notifiers:
        try:
            deliveries: Sequence[Delivery] = await notifier.notify(event)
            outcomes[notifier.name] = [
                {"recipient": d.recipient, "ok": d.ok, "detail": d.detail, "attempts": d.attempts}
                for d in deliveries
            ]
        except Exception as exc:
            log.error("notify.failed", notifier=notifier.name, error=_describe(exc))
            outcomes[notifier.name] = [{"recipient": "*", "ok": False, "detail": _describe(exc)}]
    return outcomes


def summarize_deliveries(outcomes: dict[str, list[dict[str, Any]]]) -> str:
    parts = []
    for name, deliveries in outcomes.items():
        if not deliveries:
            parts.append(f"warning: {name} had no recipients (no active admins?)")
            continue
        ok = sum(1 for d in deliveries if d["ok"])
        failed = [f"{d['recipient']} ({d['detail']})" for d in deliveries if not d["ok"]]
        parts.append(
            f"{name}: {ok}/{len(deliveries)} delivered"
            + (f"; failed: {', '.join(failed)}" if failed else "")
        )
    return "; ".join(parts)


def _http_status(url: str, timeout: float) -> tuple[int | None, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (operator's URL)
            return response.status, f"answered {response.status}"
    except urllib.error.HTTPError as exc:
        return exc.code, f"answered {exc.code}"
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, f"unreachable ({reason})"
