"""Container readiness: the explicit wait after v1's `up`, and diagnostics for both
variants when a deploy fails (which container, in what state, and its last log lines)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from wrktalk_agent.interfaces import DeployError
from wrktalk_agent.process import run, tail

from .commands import PROJECT_LABEL, QUERY_TIMEOUT_SECONDS, project_containers

#: the wait re-reads states this often even when no event arrives (events can be lost)
FALLBACK_POLL_SECONDS = 1.0
#: without an event stream (it failed to start or ended), the wait polls this often
POLL_WITHOUT_EVENTS_SECONDS = 0.1
#: events that can change a container's readiness
#: events closer together than this are handled with one re-read
BURST_SECONDS = 0.02
EVENTS = ("start", "die", "health_status", "oom", "destroy")
LOG_LINES = 100


class Readiness(Enum):
    READY = "ready"
    PENDING = "pending"
    FAILED = "failed"


@dataclass(frozen=True)
class ContainerState:
    id: str
    name: str
    service: str
    status: str  # created, running, restarting, paused, exited, dead
    health: str | None  # starting, healthy, unhealthy; None without a healthcheck
    exit_code: int

    @classmethod
    def from_inspect(cls, data: dict[str, Any]) -> ContainerState:
        state = data.get("State") or {}
        labels = (data.get("Config") or {}).get("Labels") or {}
        health = state.get("Health") or {}
        return cls(
            id=str(data.get("Id", ""))[:12],
            name=str(data.get("Name", "")).lstrip("/"),
            service=str(labels.get("com.docker.compose.service", "")),
            status=str(state.get("Status", "unknown")),
            health=health.get("Status") or None,
            exit_code=int(state.get("ExitCode") or 0),
        )

    def describe(self) -> str:
        if self.status in ("exited", "dead"):
            return f"{self.status} (code {self.exit_code})"
        return f"{self.status}, {self.health}" if self.health else self.status


def readiness(state: ContainerState, one_shot_services: frozenset[str]) -> Readiness:
    """Running and (when it has a healthcheck) healthy is ready; a one-shot service that
    others wait for with ``service_completed_successfully`` is ready once it exited 0
    (the rule of v2's ``up --wait``, applied to v1)."""
    one_shot = state.service in one_shot_services
    if state.status in ("exited", "dead"):
        completed = state.status == "exited" and state.exit_code == 0
        return Readiness.READY if completed and one_shot else Readiness.FAILED
    if state.health == "unhealthy":
        return Readiness.FAILED
    if state.status == "running" and state.health in (None, "healthy") and not one_shot:
        return Readiness.READY
    return Readiness.PENDING


class ProjectContainers:
    """The containers of one compose project, as Docker sees them."""

    def __init__(self, docker: str, project: str, one_shot_services: frozenset[str]) -> None:
        self.docker = docker
        self.project = project
        self.one_shot_services = one_shot_services

    async def states(self) -> list[ContainerState]:
        return await self._inspect(await self._container_ids())

    async def _container_ids(self) -> list[str]:
        listed = await run(
            project_containers(self.docker, self.project, "--quiet"),
            timeout=QUERY_TIMEOUT_SECONDS,
            capture_stdout=True,
        )
        if not listed.ok:
            raise DeployError(f"listing the project's containers failed: {listed.summary()}")
        return listed.stdout.split()

    async def _inspect(self, ids: list[str]) -> list[ContainerState]:
        if not ids:
            return []
        inspected = await run(
            [self.docker, "inspect", *ids],
            timeout=QUERY_TIMEOUT_SECONDS,
            capture_stdout=True,
        )
        try:
            # inspect fails as a whole when one container vanished, but still prints the rest
            data = json.loads(inspected.stdout or "[]")
        except ValueError as exc:
            raise DeployError(f"docker inspect gave no JSON: {inspected.summary()}") from exc
        return [ContainerState.from_inspect(item) for item in data]

    async def wait_until_ready(self, timeout: float) -> list[ContainerState]:
        """Wait until every container is ready; raise :class:`DeployError` (with the bad
        containers' logs) as soon as one fails, or when ``timeout`` seconds pass.

        The states are read again whenever Docker reports a start, a death or a health
        change of one of the project's containers (``docker events``), so the wait ends
        within about 100 ms of the last container turning healthy; a slow poll backs the
        event stream up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with ContainerEvents(self.docker, self.project) as events:
            # `up` has returned, so the set of containers is fixed; only their states change.
            ids = await self._container_ids()
            while True:
                states = await self._inspect(ids)
                verdicts = {s.id: readiness(s, self.one_shot_services) for s in states}
                failed = [s for s in states if verdicts[s.id] is Readiness.FAILED]
                if failed:
                    raise await self.failure("containers failed", failed)
                pending = [s for s in states if verdicts[s.id] is Readiness.PENDING]
                if not pending:
                    return states
                left = deadline - loop.time()
                if left <= 0:
                    raise await self.failure(f"containers not ready after {timeout:g}s", pending)
                await events.next(min(left, FALLBACK_POLL_SECONDS))

    async def current(self) -> list[ContainerState]:
        """Best effort: the states now, or none when Docker cannot tell (for reports)."""
        try:
            return await self.states()
        except DeployError:
            return []

    async def unready(self) -> list[ContainerState]:
        """Containers that are not ready now (for diagnosing a failed v2 `up --wait`)."""
        states = await self.current()
        return [s for s in states if readiness(s, self.one_shot_services) is not Readiness.READY]

    async def failure(
        self, message: str, bad: Sequence[ContainerState], output: str = ""
    ) -> DeployError:
        """``message: name (state), ...`` with the tail of each bad container's logs."""
        names = ", ".join(f"{s.name} ({s.describe()})" for s in bad)
        sections = [output.rstrip()] if output.strip() else []
        for state in bad:
            logs = await run(
                [self.docker, "logs", "--tail", str(LOG_LINES), state.id],
                timeout=QUERY_TIMEOUT_SECONDS,
            )
            sections.append(f"--- docker logs {state.name} (last {LOG_LINES} lines) ---")
            sections.append(logs.output.rstrip())
        return DeployError(f"{message}: {names}", output=tail("\n".join(sections)))


class ContainerEvents:
    """A ``docker events`` stream for one project's containers, to wake up a wait.

    It is a long-running reader, so it is started here rather than through
    :func:`wrktalk_agent.process.run` (which waits for the end of a command); still an
    argument list, in its own session, terminated on exit. ``--since`` replays events
    from just before it started, so none is lost while it subscribes.
    """

    def __init__(self, docker: str, project: str) -> None:
        self.args = [
            docker, "events", "--since", f"{time.time() - 0.5:.6f}",
            "--filter", "type=container", "--filter", f"label={PROJECT_LABEL}={project}",
            *(arg for event in EVENTS for arg in ("--filter", f"event={event}")),
            "--format", "{{.Status}}",
        ]  # fmt: skip
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> ContainerEvents:
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError:
            self.process = None  # the wait falls back to polling
        return self

    async def next(self, timeout: float) -> None:
        """Return at the next event (and any that came with it), or after ``timeout``."""
        stream = self.process.stdout if self.process is not None else None
        if stream is None or stream.at_eof():
            await asyncio.sleep(min(timeout, POLL_WITHOUT_EVENTS_SECONDS))
            return
        try:
            line = await asyncio.wait_for(stream.readline(), timeout)
        except TimeoutError:
            return
        if not line:  # the stream ended: poll from now on
            await asyncio.sleep(min(timeout, POLL_WITHOUT_EVENTS_SECONDS))
            return
        # events come in bursts (die, destroy, start, ...): one re-read for the burst
        with contextlib.suppress(TimeoutError):
            while await asyncio.wait_for(stream.readline(), BURST_SECONDS):
                pass

    async def __aexit__(self, *exc: object) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
