"""The daemon: wake up (NOTIFY or timer), poll, run a task, repeat; stop cleanly.

One agent runs one task at a time; the database makes it one task at a time per
installation (see ``agent_task_one_in_progress``). A task is run under a lease
(:mod:`wrktalk_agent.lease`); a task whose agent stopped renewing its lease is taken over
by the next poll and recovered (:mod:`wrktalk_agent.recovery`). Notifications go out from
the outbox beside the loop (:mod:`wrktalk_agent.outbox`), never in its way.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import signal
import time
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg

from wrktalk_agent import __version__, maintenance, metrics, process
from wrktalk_agent.db.models import PollResult, Task
from wrktalk_agent.db.repository import Repository, listen_dsn, pooler_hint, pooler_mode
from wrktalk_agent.guard import describe
from wrktalk_agent.housekeeping import LeftoverDirs, check_identity
from wrktalk_agent.listener import listen, wakes
from wrktalk_agent.log import get_logger
from wrktalk_agent.outbox import Deliverer, notifier_names
from wrktalk_agent.pipeline.outcome import TaskOutcome
from wrktalk_agent.pipeline.run import TaskRun
from wrktalk_agent.recovery import RecoveryRun
from wrktalk_agent.services import Services
from wrktalk_agent.task_slot import POLL_ERRORS, TaskSlot, wait_any

#: Exit codes of ``run``.
EXIT_OK, EXIT_TASK_FAILED = 0, 1


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
        #: called on every loop iteration; the HTTP /healthz endpoint watches it
        self.on_tick: Callable[[], None] | None = None
        self.listener_connected = asyncio.Event()
        self.deliverer = Deliverer(services, self.log)
        process.set_janitor_grace(self.settings.fence_grace_seconds)
        metrics.AGENT_INFO.info({"version": __version__, "agent_id": self.settings.agent_id})
        #: monotonic time of the last refresh of the pending/live-release metrics
        self._metrics_refreshed = -math.inf
        self._metrics_refresh: asyncio.Task[None] | None = None
        self.slot = TaskSlot(
            services,
            instance_id=self.instance_id,
            stop=self.stop_event,
            abort=self.abort_event,
            tick=self._tick,
            ended=self._task_ended,
            log=self.log,
        )
        #: the server generation whose WAL timeline was last recorded (failover check)
        self._timeline_epoch: int | None = None
        #: work dirs of dead tasks: deleted at start-up, or later when their task ends
        self.leftovers = LeftoverDirs(self.repo, self.settings, self.log, self._running_task)

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
            with contextlib.suppress(*POLL_ERRORS):
                await self.leftovers.recheck()
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
        await wait_any([self.wake, self.stop_event], timeout=timeout, tick=self._tick)

    def _tick(self) -> None:
        if self.on_tick is not None:
            self.on_tick()

    async def _execute(self, task: Task, claimed_at: float, *, recovery: bool = False) -> str:
        """Run one claimed (or taken-over) task (see :class:`~wrktalk_agent.task_slot.TaskSlot`)."""
        return await self.slot.execute(task, claimed_at, recovery=recovery)

    @property
    def running(self) -> TaskRun | RecoveryRun | None:
        """The task run in progress, if any."""
        return self.slot.running

    def _task_ended(self) -> None:
        self._metrics_refreshed = -math.inf  # the live release may have changed
        self.deliverer.wake.set()

    # -- start-up --------------------------------------------------------------------------
    async def startup(self) -> None:
        """Refuse a second live process with our id, delete work dirs of dead tasks, and
        clear maintenance whose owning task has ended."""
        await self.check_identity()
        process.start_janitor()
        await self.clean_work_dirs()
        await maintenance.reconcile_at_startup(self.services, self.log)

    async def check_identity(self) -> None:
        """Refuse to run beside a live process with our agent id (see
        :func:`wrktalk_agent.housekeeping.check_identity`)."""
        await check_identity(self.repo, self.settings, self.instance_id, self.stop_event, self.log)

    async def clean_work_dirs(self) -> None:
        """Securely delete work dirs of tasks that no live agent is running (see
        :class:`wrktalk_agent.housekeeping.LeftoverDirs`)."""
        await self.leftovers.clean()

    def _running_task(self) -> uuid.UUID | None:
        return self.running.task.id if self.running is not None else None

    # -- LISTEN ----------------------------------------------------------------------------
    async def _listen(self) -> None:
        """Keep a LISTEN connection; after (re)connecting, poll at once."""
        await listen(
            self.settings,
            wake=self.wake,
            stop=self.stop_event,
            connected=self.listener_connected,
            on_notify=self._on_notify,
            log=self.log,
        )

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        if wakes(payload, self.slot.ran):
            self.wake.set()

    def _side_task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.log.error(
                "side_task.crashed", task=task.get_name(), error=describe(task.exception())
            )
