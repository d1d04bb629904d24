"""What every run under a task's lease shares, and how work is raced against the lease.

A task run (:mod:`wrktalk_agent.pipeline.run`) and a recovery
(:mod:`wrktalk_agent.recovery`) are both built on a :class:`LeasedTask`: the services,
the task, its timeline, the secrets to mask and the lease. Both run their work beside a
watch of the lease (:func:`until_done_or_lost`) and stop it the same way when the lease
is lost (:func:`stop_fenced`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import structlog

from wrktalk_agent import process
from wrktalk_agent.config import AgentSettings
from wrktalk_agent.db.models import Task
from wrktalk_agent.db.repository import Repository
from wrktalk_agent.lease import Lease
from wrktalk_agent.log import get_logger
from wrktalk_agent.pipeline.redaction import Secrets, known_passwords
from wrktalk_agent.pipeline.timeline import Timeline
from wrktalk_agent.services import Services


@dataclass(eq=False)
class LeasedTask:
    """One task under this agent's claim: the services, the task, its timeline, the
    secrets to mask, and (once taken) the lease. Build with :meth:`open`."""

    services: Services
    task: Task
    instance_id: UUID
    #: monotonic time the claim (or takeover) was sent: the lease counts from there
    claimed_at: float
    log: Any
    secrets: Secrets
    timeline: Timeline
    lease: Lease | None = None

    @classmethod
    def open(
        cls, services: Services, task: Task, *, claimed_at: float, instance_id: UUID
    ) -> LeasedTask:
        log = get_logger()
        secrets = Secrets(extra=known_passwords(services.settings))
        timeline = Timeline(
            services.repo, task.id, services.settings.agent_id, log, secrets, task.claim_token
        )
        return cls(services, task, instance_id, claimed_at, log, secrets, timeline)

    @property
    def settings(self) -> AgentSettings:
        return self.services.settings

    @property
    def repo(self) -> Repository:
        return self.services.repo

    @property
    def agent_id(self) -> str:
        return self.services.settings.agent_id

    def bind_log_context(self) -> None:
        """Every log line of the run, plugins' own included, names the task."""
        structlog.contextvars.bind_contextvars(
            task_id=str(self.task.id), type=self.task.type, plugin=self.services.deployer.name
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


async def until_done_or_lost(work: asyncio.Task[Any], lease: Lease) -> None:
    """Wait until ``work`` is done or ``lease`` is lost, whichever comes first."""
    lost = asyncio.create_task(lease.lost.wait(), name=f"lease-watch-{lease.task_id}")
    try:
        await asyncio.wait({work, lost}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        lost.cancel()


async def stop_fenced(work: asyncio.Task[Any], settings: AgentSettings) -> None:
    """The lease is lost: the watchdog stops every command the run started (escaped
    descendants included) and ``work`` is cancelled, given a moment to end."""
    process.lease_deadline(time.monotonic())
    work.cancel()
    await asyncio.wait({work}, timeout=settings.stale_margin / 2)
