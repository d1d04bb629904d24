"""Prometheus metrics of the agent (served on /metrics by :mod:`wrktalk_agent.http`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

REGISTRY = CollectorRegistry(auto_describe=True)

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
HEARTBEAT_FAILURES = Counter(
    "wrktalk_agent_heartbeat_failures",
    "Heartbeats that could not be written.",
    registry=REGISTRY,
)
MAINTENANCE = Gauge(
    "wrktalk_agent_maintenance_mode",
    "1 while this agent holds maintenance mode on.",
    registry=REGISTRY,
)
ABANDONED = Counter(
    "wrktalk_agent_abandoned_tasks",
    "Tasks this agent took over after their agent stopped heartbeating.",
    registry=REGISTRY,
)
AGENT_INFO = Info("wrktalk_agent", "Agent identity and version.", registry=REGISTRY)
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
