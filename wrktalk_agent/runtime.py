"""The daemon: wake up (NOTIFY or timer), poll, run a task, repeat; stop cleanly.

One agent runs one task at a time; the database makes it one task at a time per
installation (see ``agent_task_one_in_progress``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg

from wrktalk_agent import __version__, metrics
from wrktalk_agent.db.models import PollResult, Task
from wrktalk_agent.db.repository import Repository, connect_once
from wrktalk_agent.db.schema import NOTIFY_CHANNEL
from wrktalk_agent.interfaces import MaintenanceHandler, NotificationEvent, NotificationKind
from wrktalk_agent.log import get_logger
from wrktalk_agent.pipeline import DB_ERRORS, Services, TaskRun, _describe, notify_all

#: A poll that fails with one of these is retried after a backoff; the agent never dies.
POLL_ERRORS: tuple[type[BaseException], ...] = (*DB_ERRORS, asyncpg.PostgresError)
#: Exit codes of ``run``.
EXIT_OK, EXIT_TASK_FAILED = 0, 1


class Agent:
    """Polls for tasks and runs them until stopped. Build with :meth:`from_services`."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self.repo: Repository = services.repo
        self.log = get_logger(agent_id=self.settings.agent_id)
        self.stop_event = asyncio.Event()
        self.abort_event = asyncio.Event()
        self.wake = asyncio.Event()
        self.running: TaskRun | None = None
        #: called on every loop iteration; the HTTP /healthz endpoint watches it
        self.on_tick: Callable[[], None] | None = None
        self.listener_connected = asyncio.Event()
        metrics.AGENT_INFO.info({"version": __version__, "agent_id": self.settings.agent_id})

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
        listener = None
        if self.settings.listen and not once:
            listener = asyncio.create_task(self._listen(), name="listener")
            listener.add_done_callback(self._side_task_done)
        exit_code = EXIT_OK
        failures = 0
        try:
            while not self.stop_event.is_set():
                self._tick()
                # Cleared before the poll, not before the sleep: a NOTIFY that arrives
                # while the poll runs must still cut the following sleep short.
                self.wake.clear()
                try:
                    polled = await self.repo.poll(
                        self.settings.agent_id, self.settings.stale_after_seconds
                    )
                    failures = 0
                except asyncpg.UniqueViolationError:
                    # another agent claimed the one in-progress slot a moment before us
                    polled = PollResult()
                except POLL_ERRORS as exc:
                    failures += 1
                    delay = min(self.settings.poll_interval, 0.5 * 2 ** min(failures, 6))
                    delay *= random.uniform(0.8, 1.2)
                    self.log.warning("poll.failed", error=_describe(exc), retry_in=round(delay, 2))
                    if once and failures >= 5:
                        return EXIT_TASK_FAILED
                    await self._sleep(delay)
                    continue
                metrics.LAST_POLL.set(time.time())
                for abandoned in polled.abandoned:
                    await self.handle_abandoned(abandoned)
                if polled.claimed is not None:
                    outcome = await self.execute(polled.claimed)
                    if once:
                        exit_code = EXIT_OK if outcome == "completed" else EXIT_TASK_FAILED
                        break
                    continue
                if polled.abandoned:
                    continue  # the slot may be free now: poll again at once
                if once:
                    break
                timeout = self.settings.poll_interval
                if polled.next_due_in is not None:
                    timeout = max(0.0, min(timeout, polled.next_due_in + 0.005))
                await self._sleep(timeout)
        finally:
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
        self.log.info("agent.stopped")
        return exit_code

    async def _sleep(self, timeout: float) -> None:
        """Wait for a NOTIFY, a stop request or the timeout, ticking for /healthz."""
        deadline = time.monotonic() + timeout
        while not self.wake.is_set() and not self.stop_event.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=min(remaining, 5.0))

    def _tick(self) -> None:
        if self.on_tick is not None:
            self.on_tick()

    async def execute(self, task: Task) -> str:
        """Run one claimed task, honouring the shutdown grace period."""
        run = TaskRun(self.services, task)
        self.running = run
        job = asyncio.create_task(run.execute(), name=f"task-{task.id}")
        try:
            stop_wait = asyncio.create_task(self.stop_event.wait(), name="stop-wait")
            while not job.done():
                self._tick()
                done, _ = await asyncio.wait(
                    {job, stop_wait}, timeout=5.0, return_when=asyncio.FIRST_COMPLETED
                )
                if stop_wait in done:
                    break
            stop_wait.cancel()
            if not job.done():
                await self._drain(job)
            try:
                return job.result()
            except Exception as exc:  # e.g. the outcome write hit a constraint: keep running;
                # the task's heartbeat stopped, so the stale check fails it for everyone
                self.log.error("task.crashed", task_id=str(task.id), error=_describe(exc))
                return "failed"
        finally:
            self.running = None

    async def _drain(self, job: asyncio.Task[str]) -> None:
        grace = self.settings.shutdown_grace
        self.log.info("task.draining", grace_seconds=grace)
        abort_wait = asyncio.create_task(self.abort_event.wait(), name="abort-wait")
        deadline = time.monotonic() + grace
        while not job.done() and not self.abort_event.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._tick()
            await asyncio.wait(
                {job, abort_wait}, timeout=min(remaining, 5.0), return_when=asyncio.FIRST_COMPLETED
            )
        abort_wait.cancel()
        if not job.done():
            self.log.warning("task.interrupting", reason="grace period over or second signal")
            job.cancel()
            # the task catches the cancellation, records "interrupted by shutdown" and
            # cleans up; wait for that (a third signal cannot make it skip the cleanup)
            await asyncio.wait({job})

    # -- startup and abandonment -----------------------------------------------------------
    async def startup(self) -> None:
        """Fail our own leftovers from before a restart, and clear maintenance left on."""
        leftovers = await self.repo.fail_own_leftovers(self.settings.agent_id)
        for task in leftovers:
            await self.handle_abandoned(task)
        await self.reconcile_maintenance()

    async def handle_abandoned(self, task: Task) -> None:
        log = self.log.bind(task_id=str(task.id), type=task.type)
        log.warning("task.abandoned", error=task.error_message)
        metrics.ABANDONED.inc()
        with contextlib.suppress(*DB_ERRORS):
            await self.repo.add_event(
                task.id, "abandoned", "failed", task.error_message or "", self.settings.agent_id
            )
        await self._disable_maintenance(log, f"task {task.id} abandoned")
        release = None
        with contextlib.suppress(*DB_ERRORS):
            if task.release_artifact_id is not None:
                release = await self.repo.release_by_id(task.release_artifact_id)
        event = NotificationEvent(
            kind=NotificationKind.TASK_ABANDONED,
            installation=self.settings.installation_name,
            task_id=task.id,
            task_type=task.type,
            outcome="failed",
            version=release.release_version if release else None,
            from_version=None,
            to_version=release.release_version if release else None,
            error=task.error_message,
            agent_id=self.settings.agent_id,
            started_at=task.picked_up_at,
            finished_at=datetime.now(UTC),
        )
        if self.services.notifiers:
            outcomes = await notify_all(self.services.notifiers, event, log)
            with contextlib.suppress(*DB_ERRORS):
                await self.repo.add_notification_result(task.id, outcomes)

    async def reconcile_maintenance(self) -> None:
        """Maintenance on with no task in progress was left by a crash: turn it off."""
        handler = self.services.maintenance
        if await self.repo.in_progress_count() > 0:
            return
        flag = await self.repo.maintenance_flag()
        live = False
        if handler is not None:
            try:
                live = await handler.status()
            except Exception as exc:
                self.log.warning("maintenance.status_failed", error=_describe(exc))
        if flag or live:
            await self._disable_maintenance(
                self.log, "maintenance mode was on with no task in progress (left by a crash)"
            )

    async def _disable_maintenance(self, log: Any, why: str) -> None:
        handler: MaintenanceHandler | None = self.services.maintenance
        if handler is not None:
            try:
                await handler.disable()
            except Exception as exc:
                log.error("maintenance.disable_failed", error=_describe(exc), why=why)
                return
        with contextlib.suppress(*DB_ERRORS):
            await self.repo.set_maintenance_flag(False)
        metrics.MAINTENANCE.set(0)
        log.info("maintenance.cleared", why=why)

    # -- LISTEN ----------------------------------------------------------------------------
    async def _listen(self) -> None:
        """Keep a LISTEN connection; after (re)connecting, poll at once."""
        attempt = 0
        while not self.stop_event.is_set():
            conn: asyncpg.Connection | None = None
            try:
                conn = await connect_once(self.settings, timeout=10)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
                attempt = 0
                self.listener_connected.set()
                self.log.info("listener.connected")
                self.wake.set()  # anything inserted while we were away
                # a half-open TCP connection sends no FIN: ask the server now and then
                keepalive = max(self.settings.poll_interval, 30.0)
                while not lost.is_set() and not conn.is_closed():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), timeout=keepalive)
                    if not lost.is_set():
                        await asyncio.wait_for(conn.execute("SELECT 1"), timeout=10)
                self.log.warning("listener.lost")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: log one line, back off, reconnect
                self.log.warning("listener.failed", error=_describe(exc))
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
            status = json.loads(str(payload)).get("status")
        except (ValueError, AttributeError):
            status = None
        if status != "inProgress":  # a claim frees nothing; anything else may
            self.wake.set()

    def _side_task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.log.error(
                "side_task.crashed", task=task.get_name(), error=_describe(task.exception())
            )
