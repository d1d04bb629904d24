"""Prometheus metrics of the agent (served on /metrics by :mod:`wrktalk_agent.http`).

Liveness has two clocks: the poll (idle agent) and the lease heartbeat (an agent busy with
a task does not poll). An alert takes the newer of the two, so a 40-minute Helm deploy
never looks like a dead agent. Counters exist at zero from the start (every task type and
outcome), so ``increase()`` sees the first failure; the ``_created`` series are off.
"""

from __future__ import annotations

import json
import time
from typing import Any

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
)

# `*_created` series double every counter and histogram and no alert uses them.
prometheus_client.disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)
#: process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...
PROCESS = ProcessCollector(registry=REGISTRY)

#: Task types and the outcomes a finished run can have (see ``pipeline.TaskOutcome``).
TASK_TYPES = ("deploy", "rollback")
OUTCOMES = ("completed", "failed", "taken away", "fenced")
HOLD_KINDS = ("task", "operator")

TASKS = Counter(
    "wrktalk_agent_tasks",
    "Tasks finished by this agent, by type and outcome.",
    ["type", "outcome"],
    registry=REGISTRY,
)
TASK_SECONDS = Histogram(
    "wrktalk_agent_task_duration_seconds",
    "Duration of tasks from claim to outcome.",
    ["type"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600),
    registry=REGISTRY,
)
STEP_SECONDS = Histogram(
    "wrktalk_agent_step_duration_seconds",
    "Duration of pipeline steps.",
    ["step"],
    buckets=(0.01, 0.05, 0.25, 1, 5, 15, 60, 300, 900),
    registry=REGISTRY,
)
LAST_POLL = Gauge(
    "wrktalk_agent_last_successful_poll_timestamp_seconds",
    "Unix time of the last poll that reached the database.",
    registry=REGISTRY,
)
LAST_HEARTBEAT = Gauge(
    "wrktalk_agent_last_heartbeat_timestamp_seconds",
    "Unix time of the last renewal of a running task's lease (moves while a task runs).",
    registry=REGISTRY,
)
HEARTBEAT_FAILURES = Counter(
    "wrktalk_agent_heartbeat_failures",
    "Heartbeats that could not be written.",
    registry=REGISTRY,
)
RUNNING = Gauge(
    "wrktalk_agent_running_tasks",
    "Tasks this agent is running now (0 or 1).",
    registry=REGISTRY,
)
RUNNING_SINCE = Gauge(
    "wrktalk_agent_running_task_started_timestamp_seconds",
    "Unix time the running task was claimed; 0 while idle.",
    registry=REGISTRY,
)
PENDING = Gauge(
    "wrktalk_agent_pending_tasks",
    "Pending tasks in the database (due now or scheduled), as of the last refresh.",
    registry=REGISTRY,
)
MAINTENANCE = Gauge(
    "wrktalk_agent_maintenance_mode",
    "1 while maintenance mode is on, as recorded in the database (every agent agrees).",
    registry=REGISTRY,
)
MAINTENANCE_HOLDS = Gauge(
    "wrktalk_agent_maintenance_holds",
    "Holds keeping maintenance on, by kind: task (a running deploy) or operator (a window).",
    ["kind"],
    registry=REGISTRY,
)
MAINTENANCE_HOLD_SINCE = Gauge(
    "wrktalk_agent_maintenance_hold_since_timestamp_seconds",
    "Unix time the oldest hold of this kind was taken; 0 while there is none.",
    ["kind"],
    registry=REGISTRY,
)
MAINTENANCE_OFF_PENDING_SINCE = Gauge(
    "wrktalk_agent_maintenance_off_pending_since_timestamp_seconds",
    "Unix time since which maintenance should be off but switching it off keeps failing "
    "(the agent retries); 0 while nothing is pending.",
    registry=REGISTRY,
)
MAINTENANCE_OFF_FAILURES = Counter(
    "wrktalk_agent_maintenance_switch_off_failures",
    "Attempts of this agent to switch maintenance off that failed (each is retried).",
    registry=REGISTRY,
)
DUE = Gauge(
    "wrktalk_agent_due_tasks",
    "Pending tasks due now (execute_after empty or past), as of the last refresh.",
    registry=REGISTRY,
)
ABANDONED = Counter(
    "wrktalk_agent_abandoned_tasks",
    "Tasks this agent took over after their agent stopped heartbeating.",
    registry=REGISTRY,
)
AGENT_INFO = Info("wrktalk_agent", "Agent identity and version.", registry=REGISTRY)
TASKS_ENDED = Gauge(
    "wrktalk_agent_tasks_ended_last_day",
    "Tasks created in the last 24 hours that have ended, by status as every surface shows it "
    "(completed, failed, cancelled), as the database records them.",
    ["status"],
    registry=REGISTRY,
)
#: the statuses of an ended task, as the CLI, the dashboard and the metrics name them
ENDED_STATUSES = ("completed", "failed", "cancelled")
LIVE_RELEASE = Info(
    "wrktalk_agent_live_release",
    "The release marked current in the database (version, chart type).",
    registry=REGISTRY,
)
LEASES_LOST = Counter(
    "wrktalk_agent_leases_lost",
    "Tasks whose lease this agent lost (it stopped its own deploy).",
    registry=REGISTRY,
)
NOTIFICATIONS = Counter(
    "wrktalk_agent_notifications",
    "Notification deliveries attempted from the outbox, by notifier and result.",
    ["notifier", "result"],
    registry=REGISTRY,
)
NOTIFICATIONS_FAILED = Counter(
    "wrktalk_agent_notifications_failed",
    "Notifications given up by this agent: a recipient refused for good, not reached by "
    "the final deadline, or sent twice without an answer.",
    ["notifier"],
    registry=REGISTRY,
)

for _kind in HOLD_KINDS:
    MAINTENANCE_HOLDS.labels(kind=_kind)
    MAINTENANCE_HOLD_SINCE.labels(kind=_kind)
for _type in TASK_TYPES:
    TASK_SECONDS.labels(type=_type)
    for _outcome in OUTCOMES:
        TASKS.labels(type=_type, outcome=_outcome)


def task_started(claimed_at_wall: float | None = None) -> None:
    RUNNING.set(1)
    RUNNING_SINCE.set(claimed_at_wall if claimed_at_wall is not None else time.time())


def task_ended() -> None:
    RUNNING.set(0)
    RUNNING_SINCE.set(0)


def heartbeat_renewed() -> None:
    LAST_HEARTBEAT.set(time.time())


async def refresh_from_database(repo: Any) -> None:
    """Pending tasks, the live release and maintenance as the database records them
    (``repo.metrics_snapshot()``, one cheap statement); the caller decides how often (and
    catches)."""
    row = await repo.metrics_snapshot()
    if not row:
        return
    PENDING.set(row["pending"])
    DUE.set(row["due"])
    LIVE_RELEASE.info(
        {"version": str(row["version"] or ""), "chart_type": str(row["chart_type"] or "")}
    )
    MAINTENANCE.set(1 if row["maintenance"] else 0)
    MAINTENANCE_OFF_PENDING_SINCE.set(row["off_pending_since"] or 0)
    ended = row.get("ended") or {}
    if isinstance(ended, str):
        ended = json.loads(ended)
    for status in ENDED_STATUSES:
        TASKS_ENDED.labels(status=status).set(ended.get(status, 0))
    holds = row["holds"]
    if isinstance(holds, str):
        holds = json.loads(holds)
    for kind in HOLD_KINDS:
        count, since = holds.get(kind, (0, 0))
        MAINTENANCE_HOLDS.labels(kind=kind).set(count)
        MAINTENANCE_HOLD_SINCE.labels(kind=kind).set(since or 0)
