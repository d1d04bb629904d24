"""One task, start to finish: a short loop over the steps between a claim and the outcome.

claimed → resolve → artifact (fetch, verify, extract) → changes → validate → prepare
→ maintenance on → deploy/rollback → health → [auto-rollback]
→ maintenance off → outcome + release flags + maintenance record + notifications promised
  (one transaction, only if this claim still owns the task) → secure delete.

Each step is a unit of :mod:`wrktalk_agent.pipeline.steps` working on the task's
:class:`~wrktalk_agent.pipeline.state.TaskState`. All of it runs under the task's lease
(:mod:`wrktalk_agent.lease`). When the lease is lost the run stops its deploy — cancelled,
then every process group its commands started is killed — and writes nothing: the agent
that takes the task over finds out what is live (:mod:`wrktalk_agent.recovery`). Nothing a
backend does ends the run in any state but a written outcome or that fenced stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from uuid import UUID

import asyncpg
import structlog

from wrktalk_agent import metrics, process
from wrktalk_agent.artifacts import secure_delete
from wrktalk_agent.db.models import Task
from wrktalk_agent.guard import cancel_requested, describe
from wrktalk_agent.lease import Lease, held
from wrktalk_agent.live_output import LiveOutput
from wrktalk_agent.log import redacting
from wrktalk_agent.pipeline.lease_run import LeasedTask, stop_fenced, until_done_or_lost
from wrktalk_agent.pipeline.outcome import TaskOutcome, Verdict
from wrktalk_agent.pipeline.state import StepFailed, TaskState
from wrktalk_agent.pipeline.steps.artifact import fetch_target
from wrktalk_agent.pipeline.steps.changes import summarize_changes
from wrktalk_agent.pipeline.steps.checks import prepare, validate
from wrktalk_agent.pipeline.steps.deploy import deploy
from wrktalk_agent.pipeline.steps.finish import finish
from wrktalk_agent.pipeline.steps.health import health_check
from wrktalk_agent.pipeline.steps.live import after_interruption
from wrktalk_agent.pipeline.steps.maintenance import maintenance_off, maintenance_on
from wrktalk_agent.pipeline.steps.resolve import resolve
from wrktalk_agent.pipeline.steps.rollback import after_failure
from wrktalk_agent.pipeline.timeline import DB_ERRORS
from wrktalk_agent.results import TaskResult
from wrktalk_agent.services import Services

Step = Callable[[TaskState], Awaitable[None]]

#: The steps of a task, in order. A step that fails raises
#: :class:`~wrktalk_agent.pipeline.state.StepFailed`; after a deploy that changed the site,
#: the automatic rollback follows (:func:`~wrktalk_agent.pipeline.steps.rollback.after_failure`).
STEPS: tuple[Step, ...] = (
    resolve,
    fetch_target,
    summarize_changes,
    validate,
    prepare,
    maintenance_on,
    deploy,
    health_check,
)


class TaskRun:
    """Executes one claimed task. Create one per task; call :meth:`execute`."""

    def __init__(
        self, services: Services, task: Task, *, claimed_at: float, instance_id: UUID
    ) -> None:
        self.task = task
        self.leased = LeasedTask.open(
            services, task, claimed_at=claimed_at, instance_id=instance_id
        )
        self.state = TaskState(self.leased, TaskResult(agent_id=services.settings.agent_id))
        self.log = self.leased.log
        self.output = LiveOutput(
            self.leased.timeline, self.leased.secrets, self.log, lambda: self.state.running_step
        )

    async def execute(self) -> TaskOutcome:
        leased, state = self.leased, self.state
        leased.bind_log_context()
        self.log.info("task.claimed")
        await state.event("claimed", "info", f"claimed by {leased.agent_id}")
        lease = leased.new_lease()
        try:
            with (
                redacting(leased.secrets),
                process.track_groups(leased.settings.fence_grace_seconds) as groups,
            ):
                with contextlib.suppress(*DB_ERRORS, asyncpg.PostgresError, TimeoutError):
                    smtp = await asyncio.wait_for(leased.repo.smtp_config(), 5)
                    if smtp.password is not None:
                        leased.secrets.add(smtp.password.get_secret_value())
                async with held(lease):
                    outcome = await self._under_lease(lease, groups)
        finally:
            process.task_ended()
            for workdir in state.workdirs:
                for problem in secure_delete(workdir):
                    self.log.warning("workdir.delete_failed", problem=problem)
        elapsed = time.monotonic() - state.started
        metrics.TASKS.labels(type=self.task.type, outcome=outcome.value).inc()
        metrics.TASK_SECONDS.labels(type=self.task.type).observe(elapsed)
        return outcome

    async def _under_lease(self, lease: Lease, groups: set[int]) -> TaskOutcome:
        state = self.state
        work = asyncio.create_task(self._work(), name=f"steps-{self.task.id}")
        try:
            await until_done_or_lost(work, lease)
        except asyncio.CancelledError:
            # The agent is stopping and the grace period is over (or a second signal
            # came): the steps stop, and the task is still cleaned up and reported.
            work.cancel()
            await until_done_or_lost(work, lease)
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
        if not work.done():
            return await self._fence(work, lease, groups)
        verdict = work.result()
        if state.target is not None:  # the steps ran in a context of their own
            structlog.contextvars.bind_contextvars(version=state.target.release_version)
        if state.interrupted and state.deploy_started:
            await after_interruption(state)
        await maintenance_off(state, lease)
        written = await finish(state, verdict)
        elapsed = time.monotonic() - state.started
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
        self.state.fencing = True
        await stop_fenced(work, self.leased.settings)
        killed = process.kill_groups(groups)
        if killed:
            self.log.error("task.fence_killed", process_groups=killed)
        await self.state.event("fenced", "failed", f"stopped: {lease.reason}")
        await self.leased.timeline.flush(timeout=1.0)  # best effort: the database may be away
        return TaskOutcome.FENCED

    async def _work(self) -> Verdict:
        """The steps and, after a failed deploy, the automatic rollback, with what their
        commands print streaming into the timeline."""
        async with self.output.streaming():
            return await self._steps_verdict()

    async def _steps_verdict(self) -> Verdict:
        try:
            try:
                for step in STEPS:
                    await step(self.state)
                return Verdict("completed")
            except StepFailed as exc:
                return await after_failure(self.state, exc)
        except asyncio.CancelledError:
            if not cancel_requested():  # raised by a backend on its own: a failure
                self.log.error("task.crashed", error="CancelledError raised by a backend")
                return Verdict("failed", error="unexpected error: cancelled from within")
            self.state.interrupted = True
            return Verdict("failed", error="interrupted by shutdown")
        except Exception as exc:  # a bug in the core or a plugin: never a stuck task
            self.log.exception("task.crashed")
            return Verdict("failed", error=f"unexpected error: {describe(exc)}")
