"""The daemon: wake up (NOTIFY or timer), poll, run a task, repeat; stop cleanly.

One agent runs one task at a time; the database makes it one task at a time per
installation (see ``agent_task_one_in_progress``). A task is run under a lease
(:mod:`wrktalk_agent.lease`); a task whose agent stopped renewing its lease is taken over
by the next poll and recovered (:mod:`wrktalk_agent.recovery`). Notifications go out from
the outbox beside the loop (:mod:`wrktalk_agent.outbox`), never in its way.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import os
import random
import re
import signal
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from wrktalk_agent import __version__, maintenance, metrics, process
from wrktalk_agent.artifacts import secure_delete
from wrktalk_agent.bootstrap import StartupError
from wrktalk_agent.db.models import PollResult, Task
from wrktalk_agent.db.repository import (
    Repository,
    connect_listener,
    keepalive,
    listen_dsn,
    pooler_hint,
    pooler_mode,
)
from wrktalk_agent.db.schema import NOTIFY_CHANNEL
from wrktalk_agent.guard import describe
from wrktalk_agent.log import get_logger
from wrktalk_agent.outbox import Deliverer, notifier_names
from wrktalk_agent.pipeline.outcome import TaskOutcome
from wrktalk_agent.pipeline.run import TaskRun
from wrktalk_agent.pipeline.timeline import DB_ERRORS
from wrktalk_agent.recovery import RecoveryRun
from wrktalk_agent.services import Services

#: A poll that fails with one of these is retried after a backoff; the agent never dies.
POLL_ERRORS: tuple[type[BaseException], ...] = (*DB_ERRORS, asyncpg.PostgresError)
#: Exit codes of ``run``.
EXIT_OK, EXIT_TASK_FAILED = 0, 1
_WORKDIR = re.compile(r"task-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})-")


class Agent:
    """Polls for tasks and runs them until stopped. Build with :meth:`from_services`."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self.repo: Repository = services.repo
        #: this process; an agent id is one live process at a time
        self.instance_id = uuid.uuid4()
        self.log = get_logger(agent_id=self.settings.agent_id)
        self.stop_event = asyncio.Event()
        self.abort_event = asyncio.Event()
        self.wake = asyncio.Event()
        self.running: TaskRun | RecoveryRun | None = None
        #: called on every loop iteration; the HTTP /healthz endpoint watches it
        self.on_tick: Callable[[], None] | None = None
        self.listener_connected = asyncio.Event()
        self.deliverer = Deliverer(services, self.log)
        process.set_janitor_grace(self.settings.fence_grace_seconds)
        metrics.AGENT_INFO.info({"version": __version__, "agent_id": self.settings.agent_id})
        #: monotonic time of the last refresh of the pending/live-release metrics
        self._metrics_refreshed = -math.inf
        self._metrics_refresh: asyncio.Task[None] | None = None
        #: tasks this agent ran lately: their outcome's NOTIFY wakes nothing (the loop
        #: polls right after a task anyway), so it cannot delay the next task's pickup
        self._ran: collections.deque[str] = collections.deque(maxlen=8)
        #: the server generation whose WAL timeline was last recorded (failover check)
        self._timeline_epoch: int | None = None
        #: work dirs found at start-up that a live lease still covered: looked at again
        self._leftover_dirs: dict[uuid.UUID, list[Path]] = {}
        self._leftovers_checked = -math.inf

    # -- signals -----------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)

    def request_stop(self, reason: str = "stop requested") -> None:
        """First call: stop claiming and drain. Second call: abort the running task."""
        if self.stop_event.is_set():
            self.log.warning("agent.abort", reason=reason)
            self.abort_event.set()
        else:
            grace = self.settings.shutdown_grace if self.running else 0
            self.log.info("agent.stopping", reason=reason, grace_seconds=grace)
            self.stop_event.set()
        self.wake.set()

    # -- main loop ---------------------------------------------------------------------
    async def run(self, *, once: bool = False) -> int:
        """Run until stopped (or, with ``once``, for at most one due task)."""
        await self.startup()
        side: list[asyncio.Task[None]] = []
        if self.settings.listen and not once:
            if listen_dsn(self.settings) is None:
                self.log.info("listener.off", reason=pooler_mode(self.settings))
            else:
                side.append(asyncio.create_task(self._listen(), name="listener"))
        if not once:
            side.append(asyncio.create_task(self.deliverer.run(self.stop_event), name="outbox"))
            if self.services.maintenance is not None:
                # failed switch-offs are retried here, with backoff, until maintenance is off
                side.append(
                    asyncio.create_task(
                        maintenance.loop(self.services, self.stop_event, self.log),
                        name="maintenance",
                    )
                )
        for task in side:
            task.add_done_callback(self._side_task_done)
        try:
            exit_code = await self._loop(once=once)
            if once:  # what this run promised goes out before it exits (bounded)
                with contextlib.suppress(*POLL_ERRORS):
                    await self.deliverer.deliver_due()
        finally:
            if self._metrics_refresh is not None:
                side.append(self._metrics_refresh)
            for task in side:
                task.cancel()
            for task in side:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            with contextlib.suppress(*POLL_ERRORS):
                await asyncio.wait_for(
                    self.repo.instance_stopped(self.settings.agent_id, self.instance_id), 5
                )
        self.log.info("agent.stopped")
        return exit_code

    async def _loop(self, *, once: bool) -> int:
        failures = 0
        while not self.stop_event.is_set():
            self._tick()
            # Cleared before the poll, not before the sleep: a NOTIFY that arrives
            # while the poll runs must still cut the following sleep short.
            self.wake.clear()
            sent = time.monotonic()
            try:
                await self._check_failover()
                polled = await self.repo.poll(
                    self.settings.agent_id,
                    self.settings.takeover_after_seconds,
                    claim_token=uuid.uuid4(),
                    instance_id=self.instance_id,
                    notifiers=notifier_names(self.services.notifiers),
                    installation=self.settings.installation_name,
                    release_types=self.services.release_types,
                    # every timer poll renews liveness; a burst of NOTIFY wake-ups does not
                    seen_every=min(self.settings.poll_interval, self.settings.heartbeat_interval)
                    / 2,
                )
                failures = 0
            except asyncpg.UniqueViolationError:
                # another agent claimed the one in-progress slot a moment before us
                polled = PollResult()
            except POLL_ERRORS as exc:
                failures += 1
                delay = min(self.settings.poll_interval, 0.5 * 2 ** min(failures, 6))
                delay *= random.uniform(0.8, 1.2)
                hint = pooler_hint(exc)
                self.log.warning(
                    "poll.failed", error=describe(exc), retry_in=round(delay, 2),
                    **({"fix": hint} if hint else {}),
                )  # fmt: skip
                if once and failures >= 5:
                    return EXIT_TASK_FAILED
                await self._sleep(delay)
                continue
            metrics.LAST_POLL.set(time.time())
            await self._refresh_metrics()
            for task_id, error in polled.rejected:
                self.log.error("task.rejected", task_id=str(task_id), error=error)
            if polled.rejected:
                self.deliverer.wake.set()
            if polled.taken_over is not None:
                await self._execute(polled.taken_over, sent, recovery=True)
                continue  # the slot is free now: poll again at once
            if polled.claimed is not None:
                outcome = await self._execute(polled.claimed, sent)
                if once:
                    return EXIT_OK if outcome == TaskOutcome.COMPLETED else EXIT_TASK_FAILED
                continue
            if polled.rejected:
                if once:  # the task this run took on was a row no agent can run
                    return EXIT_TASK_FAILED
                continue
            if once:
                break
            await self._recheck_leftover_dirs()
            timeout = self.settings.poll_interval
            for due_in in (polled.next_due_in, polled.lease_ends_in):
                # a task due, or a lease (or failover quiet period) over: poll right then
                if due_in is not None:
                    timeout = max(0.0, min(timeout, due_in + 0.005))
            await self._sleep(timeout)
        return EXIT_OK

    async def _check_failover(self) -> None:
        """Once per server the agent's connections reach: record the primary's WAL
        timeline. A new one means a standby was promoted, which may have lost claims made
        on the old primary: for a lease and its margin, no agent claims or takes over a
        task (the owner of a lost claim stops its deploy within that time)."""
        epoch = self.repo.server.epoch
        if self._timeline_epoch == epoch:
            return
        quiet = await self.repo.failover_check(self.settings.takeover_after_seconds)
        self._timeline_epoch = epoch
        if quiet > 0:
            self.log.warning(
                "failover.quiet",
                detail="the primary's timeline changed (a standby was promoted): no claims "
                "until any owner of a lost claim has stopped",
                seconds=round(quiet, 1),
            )

    async def _refresh_metrics(self) -> None:
        """Pending tasks and the live release for /metrics, at most every 10 s, beside the
        loop: a NOTIFY that arrives meanwhile is answered at once, not after the query."""
        if time.monotonic() - self._metrics_refreshed < 10.0:
            return
        if self._metrics_refresh is not None and not self._metrics_refresh.done():
            return
        self._metrics_refreshed = time.monotonic()
        self._metrics_refresh = asyncio.create_task(
            self._refresh_metrics_now(), name="metrics-refresh"
        )

    async def _refresh_metrics_now(self) -> None:
        with contextlib.suppress(*POLL_ERRORS):
            await asyncio.wait_for(metrics.refresh_from_database(self.repo), 5)

    async def _sleep(self, timeout: float) -> None:
        """Wait for a NOTIFY, a stop request or the timeout."""
        await self._wait_any([self.wake, self.stop_event], timeout=timeout)

    async def _wait_any(
        self,
        events: Sequence[asyncio.Event],
        tasks: Sequence[asyncio.Task[Any]] = (),
        *,
        timeout: float = math.inf,
    ) -> None:
        """Wait until one of ``events`` is set or one of ``tasks`` is done, or ``timeout``
        passes, ticking for /healthz at least every 5 s. The tasks are the caller's."""
        helpers = [asyncio.ensure_future(event.wait()) for event in events]
        watched: set[asyncio.Future[Any]] = {*helpers, *tasks}
        deadline = time.monotonic() + timeout
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                self._tick()
                done, _ = await asyncio.wait(
                    watched, timeout=min(remaining, 5.0), return_when=asyncio.FIRST_COMPLETED
                )
                if done:
                    return
        finally:
            for helper in helpers:
                helper.cancel()

    def _tick(self) -> None:
        if self.on_tick is not None:
            self.on_tick()

    async def _execute(self, task: Task, claimed_at: float, *, recovery: bool = False) -> str:
        """Run one claimed (or taken-over) task, honouring the shutdown grace period."""
        kind = RecoveryRun if recovery else TaskRun
        run = kind(self.services, task, claimed_at=claimed_at, instance_id=self.instance_id)
        self.running = run
        metrics.task_started()
        job = asyncio.create_task(run.execute(), name=f"task-{task.id}")
        try:
            await self._wait_any([self.stop_event], [job])
            if not job.done():
                await self._drain(job)
            try:
                outcome = job.result()
            except Exception as exc:  # e.g. the outcome write hit a constraint: keep running;
                # the task's lease runs out and the next poll recovers it
                self.log.error("task.crashed", task_id=str(task.id), error=describe(exc))
                return TaskOutcome.FAILED
        finally:
            self._ran.append(str(task.id))
            self.running = None
            metrics.task_ended()
            process.reap_adopted()
            self._metrics_refreshed = -math.inf  # the live release may have changed
            self.deliverer.wake.set()
        if outcome == TaskOutcome.FENCED and not recovery and not self.stop_event.is_set():
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
        while time.monotonic() < deadline and not self.stop_event.is_set():
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
            return await self._execute(again, sent, recovery=True)
        return TaskOutcome.FENCED

    async def _drain(self, job: asyncio.Task[TaskOutcome]) -> None:
        grace = self.settings.shutdown_grace
        self.log.info("task.draining", grace_seconds=grace)
        await self._wait_any([self.abort_event], [job], timeout=grace)
        if not job.done():
            self.log.warning("task.interrupting", reason="grace period over or second signal")
            job.cancel()
            # the task catches the cancellation, records "interrupted by shutdown" and
            # cleans up; wait for that (a third signal cannot make it skip the cleanup)
            await asyncio.wait({job})

    # -- start-up --------------------------------------------------------------------------
    async def startup(self) -> None:
        """Refuse a second live process with our id, delete work dirs of dead tasks, and
        clear maintenance whose owning task has ended."""
        await self.check_identity()
        process.start_janitor()
        await self.clean_work_dirs()
        await maintenance.reconcile_at_startup(self.services, self.log)

    async def check_identity(self) -> None:
        """An agent id is one live process. A process seen with our id moments ago is
        watched for a sign of life before we go on: one means a duplicate (refused)."""
        row = await self.repo.instance(self.settings.agent_id)
        if row is None or row["stopped_at"] is not None or row["instance_id"] is None:
            return
        window = 2 * max(self.settings.poll_interval, self.settings.heartbeat_interval) + 1
        age = float(row["age"])
        if age > window:
            return
        if row["hostname"] == socket.gethostname() and (
            row["pid"] == os.getpid() or not _pid_alive(row["pid"])
        ):
            return  # an earlier run of this very process slot, gone
        who = f"host {row['hostname']}, pid {row['pid']}"
        self.log.warning(
            "agent.identity_check", detail=f"agent id last seen {age:.1f}s ago ({who})"
        )
        deadline = time.monotonic() + (window - age)
        while time.monotonic() < deadline and not self.stop_event.is_set():
            await asyncio.sleep(min(0.5, max(0.05, deadline - time.monotonic())))
            again = await self.repo.instance(self.settings.agent_id)
            if again is None or again["last_seen"] is None or row["last_seen"] is None:
                continue
            if again["last_seen"] > row["last_seen"] and again["instance_id"] != self.instance_id:
                raise StartupError(
                    [
                        f"agent id {self.settings.agent_id!r} is in use by a live agent "
                        f"({again['hostname']}, pid {again['pid']}): give each agent its "
                        "own WRKTALK_AGENT_AGENT_ID"
                    ],
                    exit_code=2,
                )

    async def clean_work_dirs(self) -> None:
        """Securely delete work dirs (and the secrets in them) of tasks that no live
        agent is running: left by a crash. A task still leased to our own agent id is an
        earlier process of ours, dead (a live one would have been refused), whose commands
        the watchdog stopped: its dirs go too. Dirs of tasks another live agent holds are
        looked at again later (:meth:`_recheck_leftover_dirs`), so that secrets do not
        stay behind when that task is recovered on another host."""
        base: Path = self.settings.work_dir
        if not base.is_dir():
            return
        found: dict[uuid.UUID, list[Path]] = {}
        for path in base.iterdir():
            match = _WORKDIR.match(path.name)
            if match and path.is_dir() and not path.is_symlink():
                found.setdefault(uuid.UUID(match.group(1)), []).append(path)
        self._leftover_dirs = await self._delete_unleased(found)

    async def _delete_unleased(
        self, found: dict[uuid.UUID, list[Path]]
    ) -> dict[uuid.UUID, list[Path]]:
        """Delete the dirs of tasks nobody else runs; returns those still in use."""
        if not found:
            return {}
        leases = await self.repo.task_leases(list(found), self.settings.takeover_after_seconds)
        running = self.running.task.id if self.running is not None else None
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

    async def _recheck_leftover_dirs(self) -> None:
        """At most every 10 s while some are left: delete dirs whose task has ended."""
        if not self._leftover_dirs or time.monotonic() - self._leftovers_checked < 10.0:
            return
        self._leftovers_checked = time.monotonic()
        with contextlib.suppress(*POLL_ERRORS):
            left = {t: [p for p in ps if p.exists()] for t, ps in self._leftover_dirs.items()}
            self._leftover_dirs = await self._delete_unleased({t: p for t, p in left.items() if p})

    # -- LISTEN ----------------------------------------------------------------------------
    async def _listen(self) -> None:
        """Keep a LISTEN connection; after (re)connecting, poll at once."""
        attempt = 0
        while not self.stop_event.is_set():
            conn: asyncpg.Connection | None = None
            try:
                conn = await connect_listener(self.settings, timeout=10)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
                attempt = 0
                self.listener_connected.set()
                self.log.info("listener.connected")
                self.wake.set()  # anything inserted while we were away
                # a half-open TCP connection sends no FIN: ask the server now and then
                every = max(self.settings.poll_interval, 30.0)
                while not lost.is_set() and not conn.is_closed():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), timeout=every)
                    if not lost.is_set():
                        await keepalive(conn, 10)
                self.log.warning("listener.lost")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: log one line, back off, reconnect
                self.log.warning("listener.failed", error=describe(exc))
            finally:
                self.listener_connected.clear()
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), timeout=2)
            attempt += 1
            delay = min(30.0, 0.25 * 2 ** min(attempt, 7)) * random.uniform(0.8, 1.2)
            self.wake.set()  # poll at once: NOTIFYs may have been missed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop_event.wait(), timeout=delay)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        try:
            change = json.loads(str(payload))
            status, task_id = change.get("status"), str(change.get("id"))
        except (ValueError, AttributeError):
            status = task_id = None
        if status == "inProgress":  # a claim frees nothing
            return
        if status in ("completed", "failed") and task_id in self._ran:
            return  # our own outcome: the loop polled after it already
        self.wake.set()

    def _side_task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.log.error(
                "side_task.crashed", task=task.get_name(), error=describe(task.exception())
            )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
