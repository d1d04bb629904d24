"""What an agent checks and clears around its loop: that its id is its own, and the work
dirs (with the secrets in them) that dead tasks left on this host."""

from __future__ import annotations

import asyncio
import math
import os
import re
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wrktalk_agent.artifacts import secure_delete
from wrktalk_agent.bootstrap import StartupError
from wrktalk_agent.config import AgentSettings
from wrktalk_agent.db.repository import Repository

_WORKDIR = re.compile(r"task-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})-")


async def check_identity(
    repo: Repository,
    settings: AgentSettings,
    instance_id: uuid.UUID,
    stop: asyncio.Event,
    log: Any,
) -> None:
    """An agent id is one live process. A process seen with our id moments ago is
    watched for a sign of life before we go on: one means a duplicate (refused)."""
    row = await repo.instance(settings.agent_id)
    if row is None or row["stopped_at"] is not None or row["instance_id"] is None:
        return
    window = 2 * max(settings.poll_interval, settings.heartbeat_interval) + 1
    age = float(row["age"])
    if age > window:
        return
    if row["hostname"] == socket.gethostname() and (
        row["pid"] == os.getpid() or not _pid_alive(row["pid"])
    ):
        return  # an earlier run of this very process slot, gone
    who = f"host {row['hostname']}, pid {row['pid']}"
    log.warning("agent.identity_check", detail=f"agent id last seen {age:.1f}s ago ({who})")
    deadline = time.monotonic() + (window - age)
    while time.monotonic() < deadline and not stop.is_set():
        await asyncio.sleep(min(0.5, max(0.05, deadline - time.monotonic())))
        again = await repo.instance(settings.agent_id)
        if again is None or again["last_seen"] is None or row["last_seen"] is None:
            continue
        if again["last_seen"] > row["last_seen"] and again["instance_id"] != instance_id:
            raise StartupError(
                [
                    f"agent id {settings.agent_id!r} is in use by a live agent "
                    f"({again['hostname']}, pid {again['pid']}): give each agent its "
                    "own WRKTALK_AGENT_AGENT_ID"
                ],
                exit_code=2,
            )


class LeftoverDirs:
    """Work dirs of tasks that no live agent is running: left by a crash, deleted
    securely. ``running`` names the task this agent runs now (its dirs stay)."""

    def __init__(
        self,
        repo: Repository,
        settings: AgentSettings,
        log: Any,
        running: Callable[[], uuid.UUID | None],
    ) -> None:
        self.repo = repo
        self.settings = settings
        self.log = log
        self.running = running
        #: work dirs found at start-up that a live lease still covered: looked at again
        self.kept: dict[uuid.UUID, list[Path]] = {}
        self._checked = -math.inf

    async def clean(self) -> None:
        """Delete the dirs of tasks nobody runs. A task still leased to our own agent id
        is an earlier process of ours, dead (a live one would have been refused), whose
        commands the watchdog stopped: its dirs go too. Dirs of tasks another live agent
        holds are looked at again later (:meth:`recheck`), so that secrets do not stay
        behind when that task is recovered on another host."""
        base: Path = self.settings.work_dir
        if not base.is_dir():
            return
        found: dict[uuid.UUID, list[Path]] = {}
        for path in base.iterdir():
            match = _WORKDIR.match(path.name)
            if match and path.is_dir() and not path.is_symlink():
                found.setdefault(uuid.UUID(match.group(1)), []).append(path)
        self.kept = await self._delete_unleased(found)

    async def recheck(self) -> None:
        """At most every 10 s while some are left: delete dirs whose task has ended."""
        if not self.kept or time.monotonic() - self._checked < 10.0:
            return
        self._checked = time.monotonic()
        left = {t: [p for p in ps if p.exists()] for t, ps in self.kept.items()}
        self.kept = await self._delete_unleased({t: p for t, p in left.items() if p})

    async def _delete_unleased(
        self, found: dict[uuid.UUID, list[Path]]
    ) -> dict[uuid.UUID, list[Path]]:
        """Delete the dirs of tasks nobody else runs; returns those still in use."""
        if not found:
            return {}
        leases = await self.repo.task_leases(list(found), self.settings.takeover_after_seconds)
        running = self.running()
        kept: dict[uuid.UUID, list[Path]] = {}
        for task_id, paths in found.items():
            leased, holder = leases.get(task_id, (False, None))
            if task_id == running or (leased and holder != self.settings.agent_id):
                kept[task_id] = paths
                continue
            for path in paths:
                for problem in secure_delete(path):
                    self.log.warning("workdir.delete_failed", problem=problem)
            self.log.info("workdir.deleted", task_id=str(task_id), reason="left by a dead task")
        return kept


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
