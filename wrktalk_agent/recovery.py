"""A task whose agent died: find out what is live, record it, clear what was left.

The poll that takes a task over keeps it ``inProgress`` under a new lease, so the
one-deployment slot stays taken until this run has:

1. asked the deployer what the target runs now (its optional ``live_release()``);
2. switched off the maintenance the dead task owned (under the lease, so no new deploy
   can have switched it on meanwhile);
3. written, in one transaction: the task's outcome with what was found, the release flags
   set to what is live, the maintenance record cleared, and the admins' notification;
4. securely deleted the dead task's work dirs if they are on this host.

A half-done deploy is never re-run. If this agent dies too, the next one takes over again.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

from wrktalk_agent import metrics, process
from wrktalk_agent.artifacts import secure_delete
from wrktalk_agent.db.models import ArtifactInfo, Task, tolerant_rows
from wrktalk_agent.db.repository import FlagChange
from wrktalk_agent.guard import describe
from wrktalk_agent.interfaces import LiveState, NotificationKind
from wrktalk_agent.lease import Lease, held
from wrktalk_agent.pipeline.lease_run import LeasedTask, stop_fenced, until_done_or_lost
from wrktalk_agent.pipeline.outcome import TaskOutcome, write_outcome
from wrktalk_agent.pipeline.steps.live import ask_live, live_text
from wrktalk_agent.pipeline.steps.maintenance import release_abandoned
from wrktalk_agent.pipeline.steps.notify import notification
from wrktalk_agent.pipeline.timeline import DB_ERRORS
from wrktalk_agent.services import Services


class RecoveryRun:
    """Recovers one taken-over task; call :meth:`execute`. Built from the pipeline's
    units: the leased task (lease, timeline, secrets), the live-release question, the
    maintenance release, the notification and the outcome's one transaction."""

    def __init__(
        self, services: Services, task: Task, *, claimed_at: float, instance_id: UUID
    ) -> None:
        self.task = task
        self.leased = LeasedTask.open(
            services, task, claimed_at=claimed_at, instance_id=instance_id
        )
        self.services = services
        self.settings = services.settings
        self.repo = services.repo
        self.agent_id = services.settings.agent_id
        self.log = self.leased.log
        self.timeline = self.leased.timeline
        self.abandoned = task.error_message or "abandoned: its agent stopped heartbeating"

    async def execute(self) -> TaskOutcome:
        self.leased.bind_log_context()
        self.log.warning("task.abandoned", error=self.abandoned)
        metrics.ABANDONED.inc()
        lease = self.leased.new_lease()
        await self.timeline.add(
            "recovery", "started", f"{self.abandoned}; {self.agent_id} finds out what is live"
        )
        try:
            async with held(lease):
                work = asyncio.create_task(self._recover(lease), name=f"recover-{self.task.id}")
                await until_done_or_lost(work, lease)
                if not work.done():
                    await stop_fenced(work, self.settings)  # its commands stop now
                    self.log.error("recovery.fenced", reason=lease.reason)
                    return TaskOutcome.FENCED
                return work.result()
        finally:
            process.task_ended()

    async def _recover(self, lease: Lease) -> TaskOutcome:
        with tolerant_rows():  # only versions and ids are read: any release row will do
            target, current = await self._releases()
        live = await ask_live(self.services)
        await self.timeline.add("recovery", "info", f"live: {live_text(live)}")
        await release_abandoned(self.leased, lease)
        try:
            status, error, flags, next_step = await self._decide(live, target, current)
        except DB_ERRORS:
            raise  # an outage: the next owner recovers it
        except Exception as exc:  # a row nobody foresaw must not make every takeover crash
            self.log.exception("recovery.crashed")
            status, flags, next_step = "failed", None, "check what the target runs"
            error = f"{self.abandoned}; recovery failed: {describe(exc)}"
        self._delete_workdirs()
        result: dict[str, Any] = {
            "agent_id": self.agent_id,
            "outcome": status,
            "abandoned": self.abandoned,
            "live": {"version": live.version, "state": live.state, "detail": live.detail},
        }
        if error:
            result["error"] = error
        if next_step:
            result["next_step"] = next_step
        await self.timeline.add(
            "recovery",
            "succeeded" if status == "completed" else "failed",
            error or f"{live_text(live)}: the {self.task.type} had finished",
        )
        event = notification(
            self.leased,
            kind=NotificationKind.TASK_ABANDONED,
            outcome=status,
            target=target,
            current=current,
            error=error or self.abandoned,
            started_at=self.task.picked_up_at,
            live=live_text(live) + (f". Next: {next_step}" if next_step else ""),
        )
        written = await write_outcome(
            self.services,
            self.task,
            self.timeline,
            status=status,
            result=result,
            error=error,
            flags=flags,
            event=event,
        )
        if written is None:
            self.log.warning("task.taken_away", during="recovery")
            return TaskOutcome.TAKEN_AWAY
        # the outcome this agent wrote counts here: the agent that ran the task is gone
        metrics.TASKS.labels(type=self.task.type, outcome=written).inc()
        self.log.warning("task.recovered", outcome=written, live=live_text(live), error=error)
        return TaskOutcome(written)

    async def _releases(self) -> tuple[ArtifactInfo | None, ArtifactInfo | None]:
        """What the task aimed at, and what the database calls current."""
        current = await self.repo.current_release()
        target = None
        if self.task.release_artifact_id is not None:
            target = await self.repo.release_by_id(self.task.release_artifact_id)
        elif self.task.type == "rollback":
            target = await self.repo.previous_release()
        return target, current

    async def _decide(
        self, live: LiveState, target: ArtifactInfo | None, current: ArtifactInfo | None
    ) -> tuple[Literal["completed", "failed"], str | None, FlagChange | None, str | None]:
        """The task's status, its error, how the flags move, and the operator's next step."""
        found = f"{self.abandoned}; found {live_text(live)}"
        cur = current.release_version if current else None
        tgt = target.release_version if target else None
        retry = f"deploy {tgt} again" if self.task.type == "deploy" and tgt else "retry the task"
        if live.state == "deployed" and live.version:
            if tgt is not None and live.version == tgt:
                flags = FlagChange(promote=target.id) if target and cur != tgt else None
                return "completed", None, flags, None
            if cur is not None and live.version == cur:
                return "failed", f"{found}: nothing changed", None, retry
            other = await self.repo.release_by_version(live.version)
            if other is not None:
                return "failed", found, FlagChange(promote=other.id), retry
            return (
                "failed",
                f"{found}, a version the database does not know",
                FlagChange(demote_current=True) if current else None,
                "deploy a known release",
            )
        if live.state == "absent":
            flags = FlagChange(demote_current=True) if current else None
            step = f"roll back to {cur}" if cur else retry
            return "failed", f"{found}: nothing runs", flags, step
        if live.state == "half-applied":
            back = f" or roll back to {cur}" if cur else ""
            return "failed", f"{found}", None, f"{retry}{back}"
        return "failed", found, None, "check what the target runs, then deploy the release you want"

    def _delete_workdirs(self) -> None:
        base = self.settings.work_dir
        if not base.is_dir():
            return
        for path in base.glob(f"task-{self.task.id}-*"):
            for problem in secure_delete(Path(path)):
                self.log.warning("workdir.delete_failed", problem=problem)
