"""Every SQL statement the agent runs, in one place."""

TASK_COLUMNS = """t.id, t.type, t.status, t.release_artifact_id, t.execute_after, t.picked_up_at,
    t.completed_at, t.last_heartbeat, t.result, t.error_message, t.created_at, t.claimed_by"""

ARTIFACT_COLUMNS = """a.id, a.release_version, a.chart_type, a.sha256,
    octet_length(a.artifact_data) AS size, a.is_current, a.is_previous, a.applied_at,
    a.created_at, a.signature, a.env_data IS NOT NULL AS has_env,
    a.values_data IS NOT NULL AS has_values"""

# One statement per poll: record the poll, fail abandoned tasks, claim the oldest due task
# unless a deployment is running, record the agent (and what it now runs), and say when
# the next task is due.
# Two agents racing for the last free slot: the loser's claim hits the unique index
# agent_task_one_in_progress and the whole statement fails with unique_violation.
POLL = f"""
WITH polled AS (
    UPDATE deployment_config SET last_agent_poll = now()
), abandoned AS (
    UPDATE agent_task t
    SET status = 'failed', completed_at = now(),
        error_message = 'abandoned: agent ' || coalesce(t.claimed_by, 'unknown')
            || ' stopped heartbeating at '
            || to_char(coalesce(t.last_heartbeat, t.picked_up_at) AT TIME ZONE 'UTC',
                       'YYYY-MM-DD"T"HH24:MI:SS"Z"')
    WHERE t.status = 'inProgress'
      AND coalesce(t.last_heartbeat, t.picked_up_at, t.created_at)
          < now() - make_interval(secs => $5)
    RETURNING {TASK_COLUMNS}
), candidate AS (
    SELECT c.id FROM agent_task c
    WHERE c.status = 'pending'
      AND (c.execute_after IS NULL OR c.execute_after <= now())
      AND NOT EXISTS (SELECT 1 FROM agent_task r WHERE r.status = 'inProgress')
    ORDER BY c.created_at, c.id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE agent_task t
    SET status = 'inProgress', picked_up_at = now(), last_heartbeat = now(), claimed_by = $1
    FROM candidate WHERE t.id = candidate.id
    RETURNING {TASK_COLUMNS}
), seen AS (
    INSERT INTO agent_instance (agent_id, hostname, pid, version, last_poll, current_task_id)
    VALUES ($1, $2, $3, $4, now(), (SELECT id FROM claimed))
    ON CONFLICT (agent_id) DO UPDATE
        SET last_poll = now(), hostname = EXCLUDED.hostname, pid = EXCLUDED.pid,
            version = EXCLUDED.version, current_task_id = EXCLUDED.current_task_id
)
SELECT
    (SELECT coalesce(jsonb_agg(to_jsonb(a)), '[]'::jsonb) FROM abandoned a) AS abandoned,
    (SELECT to_jsonb(c) FROM claimed c) AS claimed,
    (SELECT extract(epoch FROM min(p.execute_after) - clock_timestamp())::float8
       FROM agent_task p
      WHERE p.status = 'pending' AND p.execute_after > now()) AS next_due_in
"""

FAIL_OWN_LEFTOVERS = f"""
UPDATE agent_task t
SET status = 'failed', completed_at = now(),
    error_message = 'abandoned: agent ' || t.claimed_by || ' stopped heartbeating at '
        || to_char(coalesce(t.last_heartbeat, t.picked_up_at) AT TIME ZONE 'UTC',
                   'YYYY-MM-DD"T"HH24:MI:SS"Z"')
        || ' (restarted)'
WHERE t.status = 'inProgress' AND t.claimed_by = $1
RETURNING {TASK_COLUMNS}
"""

HEARTBEAT = """
UPDATE agent_task SET last_heartbeat = now()
WHERE id = $1 AND claimed_by = $2 AND status = 'inProgress'
RETURNING id
"""

FINISH_TASK = f"""
UPDATE agent_task t
SET status = $3, completed_at = now(), result = $4, error_message = $5
WHERE t.id = $1 AND t.claimed_by = $2 AND t.status = 'inProgress'
RETURNING {TASK_COLUMNS}
"""

ADD_NOTIFICATIONS = """
UPDATE agent_task
SET result = coalesce(result, '{}'::jsonb) || jsonb_build_object('notifications', $2::jsonb)
WHERE id = $1
"""

# Promote a release to current; the old current becomes previous, the old previous is
# cleared. The same three steps serve deploys and rollbacks (where target = previous).
# Separate statements because the partial unique indexes are checked row by row.
CLEAR_PREVIOUS = """
UPDATE release_artifact SET is_previous = false
WHERE is_previous
  AND NOT EXISTS (SELECT 1 FROM release_artifact c WHERE c.id = $1 AND c.is_current)
"""
DEMOTE_CURRENT = """
UPDATE release_artifact SET is_current = false, is_previous = true
WHERE is_current AND id <> $1
"""
PROMOTE = """
UPDATE release_artifact SET is_current = true, is_previous = false, applied_at = now()
WHERE id = $1
"""

INSERT_EVENT = """
INSERT INTO agent_task_event (task_id, step, status, message, agent_id)
VALUES ($1, $2, $3, $4, $5)
"""

INSERT_EVENTS = """
INSERT INTO agent_task_event (task_id, created_at, step, status, message, agent_id)
SELECT $1, e.at, e.step, e.status, e.message, $6
FROM unnest($2::timestamptz[], $3::text[], $4::text[], $5::text[]) AS e(at, step, status, message)
"""

TASK_EVENTS = """
SELECT id, task_id, created_at, step, status, message, agent_id
FROM agent_task_event WHERE task_id = $1 ORDER BY id
"""

GET_TASK = f"""
SELECT {TASK_COLUMNS}, a.release_version
FROM agent_task t LEFT JOIN release_artifact a ON a.id = t.release_artifact_id
WHERE t.id = $1
"""

LIST_TASKS = f"""
SELECT {TASK_COLUMNS}, a.release_version
FROM agent_task t LEFT JOIN release_artifact a ON a.id = t.release_artifact_id
WHERE ($1::text IS NULL OR t.status = $1) AND ($2::text IS NULL OR t.type = $2)
ORDER BY t.created_at DESC, t.id DESC
LIMIT $3
"""

INSERT_TASK = f"""
INSERT INTO agent_task AS t (type, status, release_artifact_id, execute_after)
VALUES ($1, 'pending', $2, $3)
RETURNING {TASK_COLUMNS}
"""

CANCEL_TASK = f"""
UPDATE agent_task t
SET status = 'failed', completed_at = now(), error_message = $2
WHERE t.id = $1 AND t.status = 'pending'
RETURNING {TASK_COLUMNS}
"""

INSERT_RELEASE = f"""
INSERT INTO release_artifact AS a
    (release_version, chart_type, artifact_data, env_data, values_data, sha256, signature)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING {ARTIFACT_COLUMNS}
"""

RELEASE_BY_ID = f"SELECT {ARTIFACT_COLUMNS} FROM release_artifact a WHERE a.id = $1"
RELEASE_BY_VERSION = (
    f"SELECT {ARTIFACT_COLUMNS} FROM release_artifact a WHERE a.release_version = $1"
)
CURRENT_RELEASE = f"SELECT {ARTIFACT_COLUMNS} FROM release_artifact a WHERE a.is_current"
PREVIOUS_RELEASE = f"SELECT {ARTIFACT_COLUMNS} FROM release_artifact a WHERE a.is_previous"
LIST_RELEASES = f"""
SELECT {ARTIFACT_COLUMNS} FROM release_artifact a ORDER BY a.created_at DESC, a.id DESC LIMIT $1
"""

RELEASE_SECRETS = "SELECT env_data, values_data FROM release_artifact WHERE id = $1"
# Artifacts are read slice by slice with one prepared statement: substring() reads only
# the slice's TOAST chunks (compressed tarballs are stored uncompressed). Measured 2.5x
# faster than streaming the slices through one cursor over generate_series.
ARTIFACT_SLICE = (
    "SELECT substring(artifact_data FROM $2::int FOR $3::int) FROM release_artifact WHERE id = $1"
)
ARTIFACT_WHOLE = "SELECT artifact_data FROM release_artifact WHERE id = $1"

SET_MAINTENANCE_FLAG = "UPDATE deployment_config SET maintenance_mode_enabled = $1"
GET_MAINTENANCE_FLAG = """
SELECT coalesce(bool_or(maintenance_mode_enabled), false) FROM deployment_config
"""

SMTP_CONFIG = """
SELECT smtp_host, smtp_port, smtp_user, smtp_password, smtp_from
FROM deployment_config
ORDER BY smtp_host IS NULL, created_at  -- a configured row wins over a bare one
LIMIT 1
"""
ACTIVE_ADMINS = "SELECT name, email FROM admin WHERE is_active ORDER BY email"

IN_PROGRESS_COUNT = "SELECT count(*) FROM agent_task WHERE status = 'inProgress'"


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
    t.created_at, t.claimed_by, a.release_version"""

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
DASHBOARD_TASKS_BY_STATUS = {
    status: f"""
SELECT {_DASHBOARD_TASK_COLUMNS}
FROM agent_task t LEFT JOIN release_artifact a ON a.id = t.release_artifact_id
WHERE t.status = '{status}' AND ($1::text IS NULL OR t.type = $1)
ORDER BY t.created_at DESC, t.id DESC
LIMIT $2
"""
    for status in ("pending", "inProgress", "completed", "failed")
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


# -- privileges (wrktalk-agent check) ---------------------------------------------------------
# What the connected role may do, asked without doing it. $1/$2: parallel arrays of table
# names and privileges; `granted` is NULL when the table does not exist (the schema check
# reports that). Missing tables never raise: to_regclass returns NULL.
TABLE_PRIVILEGES = """
SELECT r.tbl AS table_name, r.priv AS privilege,
    CASE WHEN to_regclass(r.tbl) IS NULL THEN NULL
         ELSE has_table_privilege(to_regclass(r.tbl), r.priv) END AS granted
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS r(tbl, priv, n)
ORDER BY r.n
"""

# The schema itself, the sequence behind agent_task_event.id (INSERT needs USAGE on it) and
# the advisory-lock functions (EXECUTE is granted to PUBLIC unless someone revoked it).
OTHER_PRIVILEGES = """
SELECT has_schema_privilege(current_schema(), 'USAGE') AS schema_usage,
    (SELECT CASE WHEN s IS NULL THEN NULL ELSE has_sequence_privilege(s, 'USAGE') END
       FROM (SELECT CASE WHEN to_regclass('agent_task_event') IS NULL THEN NULL
                         ELSE pg_get_serial_sequence('agent_task_event', 'id') END AS s) q)
        AS event_sequence_usage,
    has_function_privilege('pg_try_advisory_lock(bigint)', 'EXECUTE') AS advisory_lock,
    has_function_privilege('pg_advisory_unlock(bigint)', 'EXECUTE') AS advisory_unlock,
    current_user AS role_name
"""
