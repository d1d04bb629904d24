"""What the steps of one task share: the state they read and write, and the step frame.

Each step (:mod:`wrktalk_agent.pipeline.steps`) is a function of a :class:`TaskState`;
it runs inside :meth:`TaskState.step`, which writes its started/failed entries, times it
and records it in the task result. A step that cannot go on raises :class:`StepFailed`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from wrktalk_agent import metrics
from wrktalk_agent.config import AgentSettings
from wrktalk_agent.db.models import ArtifactInfo, Task
from wrktalk_agent.db.repository import EventStatus, Repository
from wrktalk_agent.guard import describe
from wrktalk_agent.interfaces import Deployer, StepTiming
from wrktalk_agent.pipeline.lease_run import LeasedTask
from wrktalk_agent.pipeline.redaction import Secrets
from wrktalk_agent.pipeline.timeline import Timeline
from wrktalk_agent.process import tail
from wrktalk_agent.results import StepRecord, TaskResult
from wrktalk_agent.services import Services


class StepFailed(Exception):
    """A step failed; ``message`` is what the task's error_message will say."""

    def __init__(self, message: str, *, system_changed: bool = False, output: str = "") -> None:
        super().__init__(message)
        self.system_changed = system_changed
        self.output = output


@dataclass
class MaintenanceState:
    """What the task did to maintenance mode, for the switch-off and the outcome."""

    #: the proxy was (or may have been) switched on: always try to switch it off
    switched: bool = False
    enable_failed: bool = False
    #: maintenance stayed on after this task (a failed switch-off): for the outcome
    note: str | None = None
    still_on: bool = False


@dataclass(eq=False)
class TaskState:
    """One task's state, read and written by its steps."""

    leased: LeasedTask
    result: TaskResult
    #: the step output lines belong to (see :mod:`wrktalk_agent.live_output`)
    running_step: str = "claimed"
    timings: list[StepTiming] = field(default_factory=list)
    workdirs: list[Path] = field(default_factory=list)
    #: extracted releases of this task, by release id
    roots: dict[UUID, Path] = field(default_factory=dict)
    target: ArtifactInfo | None = None
    current: ArtifactInfo | None = None
    #: the target release, extracted
    workdir: Path | None = None
    #: what the task changes (the deployer's summary), for the result and the email
    changes: list[str] = field(default_factory=list)
    maintenance: MaintenanceState = field(default_factory=MaintenanceState)
    #: the deployer was called (the target may have changed)
    deploy_started: bool = False
    #: the steps were interrupted by a shutdown (what the deployer found live, then)
    interrupted: bool = False
    interrupted_live: str | None = None
    #: the lease is lost and the steps are being stopped
    fencing: bool = False
    started: float = field(default_factory=time.monotonic)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def services(self) -> Services:
        return self.leased.services

    @property
    def settings(self) -> AgentSettings:
        return self.leased.settings

    @property
    def repo(self) -> Repository:
        return self.leased.repo

    @property
    def deployer(self) -> Deployer:
        return self.leased.services.deployer

    @property
    def task(self) -> Task:
        return self.leased.task

    @property
    def log(self) -> Any:
        return self.leased.log

    @property
    def secrets(self) -> Secrets:
        return self.leased.secrets

    @property
    def timeline(self) -> Timeline:
        return self.leased.timeline

    def tail(self, output: str) -> str:
        """The end of a tool's output, secrets masked before it is cut (a cut could
        leave half a secret that no longer matches)."""
        return tail(self.secrets.redact(output))

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
            self.timings.append(StepTiming(step=name, seconds=round(seconds, 3), ok=ok))
            self.result.steps.append(StepRecord(name, ok, round(seconds, 3)))
            metrics.STEP_SECONDS.labels(step=name).observe(seconds)
