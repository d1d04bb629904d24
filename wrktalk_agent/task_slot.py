"""The agent's one task at a time: run a claimed (or taken-over) task to its end,
honouring the shutdown grace period, and take a claim lost in a failover back for
recovery rather than let the task run again."""

from __future__ import annotations

import asyncio
import collections
import math
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from wrktalk_agent import metrics, process
from wrktalk_agent.db.models import Task
from wrktalk_agent.guard import describe
from wrktalk_agent.pipeline.outcome import TaskOutcome
from wrktalk_agent.pipeline.run import TaskRun
from wrktalk_agent.pipeline.timeline import DB_ERRORS
from wrktalk_agent.recovery import RecoveryRun
from wrktalk_agent.services import Services

#: A poll that fails with one of these is retried after a backoff; the agent never dies.
POLL_ERRORS: tuple[type[BaseException], ...] = (*DB_ERRORS, asyncpg.PostgresError)


async def wait_any(
    events: Sequence[asyncio.Event],
    tasks: Sequence[asyncio.Task[Any]] = (),
    *,
    timeout: float = math.inf,
    tick: Callable[[], None],
) -> None:
    """Wait until one of ``events`` is set or one of ``tasks`` is done, or ``timeout``
    passes, calling ``tick`` (for /healthz) at least every 5 s. The tasks are the
    caller's."""
    helpers = [asyncio.ensure_future(event.wait()) for event in events]
    watched: set[asyncio.Future[Any]] = {*helpers, *tasks}
    deadline = time.monotonic() + timeout
    try:
        while (remaining := deadline - time.monotonic()) > 0:
            tick()
            done, _ = await asyncio.wait(
                watched, timeout=min(remaining, 5.0), return_when=asyncio.FIRST_COMPLETED
            )
            if done:
                return
    finally:
        for helper in helpers:
            helper.cancel()


class TaskSlot:
    """Runs the agent's tasks one at a time; :attr:`running` is the run in progress."""

    def __init__(
        self,
        services: Services,
        *,
        instance_id: uuid.UUID,
        stop: asyncio.Event,
        abort: asyncio.Event,
        tick: Callable[[], None],
        ended: Callable[[], None],
        log: Any,
    ) -> None:
        self.services = services
        self.settings = services.settings
        self.repo = services.repo
        self.instance_id = instance_id
        #: the first stop request: drain; the second (``abort``): interrupt the task
        self.stop = stop
        self.abort = abort
        self.tick = tick
        #: called when a task has ended (whatever its outcome)
        self.ended = ended
        self.log = log
        self.running: TaskRun | RecoveryRun | None = None
        #: tasks this agent ran lately: their outcome's NOTIFY wakes nothing (the loop
        #: polls right after a task anyway), so it cannot delay the next task's pickup
        self.ran: collections.deque[str] = collections.deque(maxlen=8)

    async def execute(self, task: Task, claimed_at: float, *, recovery: bool = False) -> str:
        """Run one claimed (or taken-over) task, honouring the shutdown grace period."""
        kind = RecoveryRun if recovery else TaskRun
        run = kind(self.services, task, claimed_at=claimed_at, instance_id=self.instance_id)
        self.running = run
        metrics.task_started()
        job = asyncio.create_task(run.execute(), name=f"task-{task.id}")
        try:
            await wait_any([self.stop], [job], tick=self.tick)
            if not job.done():
                await self._drain(job)
            try:
                outcome = job.result()
            except Exception as exc:  # e.g. the outcome write hit a constraint: keep running;
                # the task's lease runs out and the next poll recovers it
                self.log.error("task.crashed", task_id=str(task.id), error=describe(exc))
                return TaskOutcome.FAILED
        finally:
            self.ran.append(str(task.id))
            self.running = None
            metrics.task_ended()
            process.reap_adopted()
            self.ended()
        if outcome == TaskOutcome.FENCED and not recovery and not self.stop.is_set():
            return await self._recover_lost_claim(task)
        return outcome

    async def _recover_lost_claim(self, task: Task) -> str:
        """After a fence: if the task is pending again, a failover lost our claim (the
        promoted standby never received it) though our deploy ran until it was stopped.
        Take it back for recovery rather than let it run again from the start. Other
        agents claim nothing during the failover's quiet period (a lease and its margin),
        which is the time we have to get through to the new primary."""
        deadline = time.monotonic() + self.settings.takeover_after_seconds
        attempt = 0
        while time.monotonic() < deadline and not self.stop.is_set():
            try:
                if await self.repo.task_status(task.id) != "pending":
                    return TaskOutcome.FENCED
                sent = time.monotonic()
                again = await self.repo.claim_lost_in_failover(
                    task.id,
                    self.settings.agent_id,
                    self.settings.takeover_after_seconds,
                    claim_token=uuid.uuid4(),
                )
            except POLL_ERRORS as exc:
                attempt += 1
                self.log.warning("task.claim_check_failed", error=describe(exc))
                await asyncio.sleep(min(1.0, 0.1 * 2**attempt))
                continue
            if again is None:
                return TaskOutcome.FENCED
            self.log.warning("task.claim_lost", task_id=str(task.id), next="recovery")
            return await self.execute(again, sent, recovery=True)
        return TaskOutcome.FENCED

    async def _drain(self, job: asyncio.Task[TaskOutcome]) -> None:
        grace = self.settings.shutdown_grace
        self.log.info("task.draining", grace_seconds=grace)
        await wait_any([self.abort], [job], timeout=grace, tick=self.tick)
        if not job.done():
            self.log.warning("task.interrupting", reason="grace period over or second signal")
            job.cancel()
            # the task catches the cancellation, records "interrupted by shutdown" and
            # cleans up; wait for that (a third signal cannot make it skip the cleanup)
            await asyncio.wait({job})
