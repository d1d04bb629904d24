"""Read-only questions of the metrics endpoint and the operator dashboard."""

from wrktalk_agent.db.queries.rows import CANCELLED

#: one cheap statement: pending and due tasks (the partial index on pending rows), the live
#: release and maintenance as recorded (the flag, the holds, a failing switch-off)
METRICS_REFRESH = f"""
SELECT (SELECT count(*) FROM agent_task WHERE status = 'pending') AS pending,
       (SELECT count(*) FROM agent_task WHERE status = 'pending'
          AND (execute_after IS NULL OR (isfinite(execute_after) AND execute_after <= now())))
          AS due,
       (SELECT release_version FROM release_artifact WHERE is_current LIMIT 1) AS version,
       (SELECT chart_type FROM release_artifact WHERE is_current LIMIT 1) AS chart_type,
       (SELECT coalesce(bool_or(maintenance_mode_enabled), false) FROM deployment_config)
          AS maintenance,
       (SELECT extract(epoch FROM max(maintenance_off_pending_since))::float8
          FROM deployment_config) AS off_pending_since,
       (SELECT coalesce(jsonb_object_agg(k.kind, jsonb_build_array(k.n, k.since)), '{{}}')
          FROM (SELECT split_part(holder, ':', 1) AS kind, count(*) AS n,
                       extract(epoch FROM min(since))::float8 AS since
                  FROM agent_maintenance_hold GROUP BY 1) k) AS holds,
       (SELECT jsonb_build_object(
            'completed', count(*) FILTER (WHERE t.status = 'completed'),
            'failed', count(*) FILTER (WHERE t.status = 'failed' AND NOT {CANCELLED}),
            'cancelled', count(*) FILTER (WHERE {CANCELLED}))
          FROM agent_task t
         WHERE t.status IN ('completed', 'failed') AND t.created_at > now() - interval '1 day')
          AS ended
"""


# -- dashboard (wrktalk-agent tui) -----------------------------------------------------------
# Read-only questions of the operator dashboard, asked every few seconds. None of them reads
# artifact_data, env_data, values_data or smtp_password, and each is served by an index at
# 100k tasks / 1M events / 1000 artifacts (benchmarks/bench_tui.py checks with EXPLAIN).

DASHBOARD_OVERVIEW = """
SELECT now() AS now,
    (SELECT coalesce(bool_or(maintenance_mode_enabled), false) FROM deployment_config)
        AS maintenance,
    (SELECT max(last_agent_poll) FROM deployment_config) AS last_agent_poll,
    (SELECT id FROM release_artifact WHERE is_current) AS current_id,
    (SELECT release_version FROM release_artifact WHERE is_current) AS current_version,
    (SELECT id FROM release_artifact WHERE is_previous) AS previous_id,
    (SELECT release_version FROM release_artifact WHERE is_previous) AS previous_version,
    (SELECT count(*) FROM agent_task WHERE status = 'pending') AS pending_count
"""

# The task list leaves out `result` (a deployer's output tail: only the detail screen shows
# it) and cuts error messages.
_DASHBOARD_TASK_COLUMNS = """t.id, t.type, t.status, t.release_artifact_id, t.execute_after,
    t.picked_up_at, t.completed_at, t.last_heartbeat, left(t.error_message, 300) AS error_message,
    t.created_at, t.claimed_by, t.lease_seconds, a.release_version"""

DASHBOARD_TASKS = f"""
SELECT {_DASHBOARD_TASK_COLUMNS}
FROM agent_task t LEFT JOIN release_artifact a ON a.id = t.release_artifact_id
WHERE ($1::text IS NULL OR t.type = $1)
ORDER BY t.created_at DESC, t.id DESC
LIMIT $2
"""

# One statement per status, the status written into the SQL: asyncpg prepares statements
# and PostgreSQL may switch to a generic plan after five runs; with `status = $1` that plan
# walked agent_task_recent and filtered (60-100 ms for 'pending' at 100k tasks). With the
# value known, every plan picks agent_task_pending / agent_task_status_recent.
_STATUS_CONDITION = {
    "pending": "t.status = 'pending'",
    "inProgress": "t.status = 'inProgress'",
    "completed": "t.status = 'completed'",
    "failed": f"t.status = 'failed' AND NOT {CANCELLED}",
    "cancelled": f"t.status = 'failed' AND {CANCELLED}",
}
DASHBOARD_TASKS_BY_STATUS = {
    status: f"""
SELECT {_DASHBOARD_TASK_COLUMNS}
FROM agent_task t LEFT JOIN release_artifact a ON a.id = t.release_artifact_id
WHERE {condition} AND ($1::text IS NULL OR t.type = $1)
ORDER BY t.created_at DESC, t.id DESC
LIMIT $2
"""
    for status, condition in _STATUS_CONDITION.items()
}

# Running tasks with their latest event (the step they are in): only inProgress rows are
# looked at, and for each only the newest entry of agent_task_event_task.
DASHBOARD_RUNNING = f"""
SELECT {_DASHBOARD_TASK_COLUMNS},
    e.id AS event_id, e.created_at AS event_at, e.step AS event_step,
    e.status AS event_status, e.message AS event_message, e.agent_id AS event_agent
FROM agent_task t
LEFT JOIN release_artifact a ON a.id = t.release_artifact_id
LEFT JOIN LATERAL (
    SELECT x.id, x.created_at, x.step, x.status, x.message, x.agent_id
    FROM agent_task_event x WHERE x.task_id = t.id ORDER BY x.id DESC LIMIT 1
) e ON true
WHERE t.status = 'inProgress'
ORDER BY t.created_at DESC
"""

# Agents seen since $1, with the heartbeat of the task they are running (their sign of life
# while a deploy keeps them from polling).
DASHBOARD_AGENTS = """
SELECT i.agent_id, i.hostname, i.pid, i.version, i.started_at, i.last_poll,
       i.current_task_id, t.last_heartbeat
FROM agent_instance i
LEFT JOIN agent_task t ON t.id = i.current_task_id AND t.status = 'inProgress'
WHERE i.last_poll > $1 OR t.id IS NOT NULL
ORDER BY i.last_poll DESC
LIMIT 100
"""

# Newest releases plus the current and previous ones however old they are. The size comes
# from octet_length, which reads the TOAST header only, never the bytes.
_DASHBOARD_RELEASE_COLUMNS = """a.id, a.release_version, a.chart_type, a.sha256,
    octet_length(a.artifact_data) AS size, a.is_current, a.is_previous, a.applied_at,
    a.created_at, a.signature"""

DASHBOARD_RELEASES = f"""
(SELECT {_DASHBOARD_RELEASE_COLUMNS} FROM release_artifact a
 ORDER BY a.created_at DESC, a.id DESC LIMIT $1)
UNION
(SELECT {_DASHBOARD_RELEASE_COLUMNS} FROM release_artifact a WHERE a.is_current)
UNION
(SELECT {_DASHBOARD_RELEASE_COLUMNS} FROM release_artifact a WHERE a.is_previous)
ORDER BY created_at DESC, id DESC
"""


# What the dashboard adds for an honest picture: tasks due now (a new task runs after
# them), who holds maintenance and why, and what the latest finished task found live after
# a recovery (an interrupted or abandoned deploy leaves the live version uncertain).
DASHBOARD_STATE = """
SELECT
    (SELECT count(*) FROM agent_task
      WHERE status = 'pending'
        AND (execute_after IS NULL OR (isfinite(execute_after) AND execute_after <= now())))
        AS due_count,
    (SELECT max(maintenance_owner) FROM deployment_config) AS maintenance_owner,
    (SELECT max(maintenance_reason) FROM deployment_config) AS maintenance_reason,
    (SELECT max(maintenance_since) FROM deployment_config) AS maintenance_since,
    f.id AS last_task_id, f.live AS last_live, f.next_step AS last_next_step
FROM (SELECT 1) one
LEFT JOIN LATERAL (
    SELECT t.id, t.result -> 'live' AS live, t.result ->> 'next_step' AS next_step
    FROM agent_task t
    WHERE t.status IN ('completed', 'failed')
    ORDER BY t.completed_at DESC NULLS LAST, t.id DESC
    LIMIT 1
) f ON true
"""

# DASHBOARD_AGENTS with the liveness an agent records itself: last_seen (polls and lease
# heartbeats) and stopped_at (set on a clean stop).
# lease_seconds: the agent's own lease (no sign of life for that long: stale, whatever the
# dashboard's settings); task_taken_over: the task it was running is now another agent's.
DASHBOARD_AGENT_STATES = """
SELECT i.agent_id, i.hostname, i.pid, i.version, i.started_at, i.last_poll,
       i.current_task_id, t.last_heartbeat, i.last_seen, i.stopped_at, i.lease_seconds,
       coalesce(c.claimed_by IS DISTINCT FROM i.agent_id, false) AS task_taken_over
FROM agent_instance i
LEFT JOIN agent_task t ON t.id = i.current_task_id AND t.status = 'inProgress'
LEFT JOIN agent_task c ON c.id = i.current_task_id
WHERE coalesce(i.last_seen, i.last_poll) > $1 OR t.id IS NOT NULL
ORDER BY coalesce(i.last_seen, i.last_poll) DESC
LIMIT 100
"""

# The newest lines of a task's live output (wrktalk_agent.live_output), newest first.
DASHBOARD_OUTPUT = """
SELECT id, created_at, step, message
FROM agent_task_event
WHERE task_id = $1 AND status = 'info' AND starts_with(message, $2)
ORDER BY id DESC
LIMIT $3
"""
