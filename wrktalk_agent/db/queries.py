"""Every SQL statement the agent runs, in one place."""


def _finite(column: str) -> str:
    """A timestamp column, NULL when a backend wrote ±infinity (no code path can use those
    as times, and a JSON round trip of them fails to parse)."""
    name = column.split(".")[-1]
    return f"CASE WHEN isfinite({column}) THEN {column} END AS {name}"


TASK_COLUMNS = f"""t.id, t.type, t.status, t.release_artifact_id, {_finite("t.execute_after")},
    {_finite("t.picked_up_at")}, {_finite("t.completed_at")}, {_finite("t.last_heartbeat")},
    t.result, t.error_message, {_finite("t.created_at")}, t.claimed_by, t.claim_token,
    t.lease_seconds, t.recovery"""

# What a poll returns of the rows it claims or takes over: `result` is left out (the agent
# writes its own; a backend's, of any shape or depth, must not stop the poll's answer
# from being read).
CLAIM_COLUMNS = TASK_COLUMNS.replace("t.result, ", "")

#: Longest lease an agent records (seconds); a lease_seconds that is not a number in
#: (0, MAX_LEASE_SECONDS] is read as the polling agent's own lease.
MAX_LEASE_SECONDS = 86400


def _lease(task: str, default: str) -> str:
    """The lease of a running task as an interval: its lease_seconds when that is a
    number an agent can have written, else ``default`` (NaN, ±infinity, 1e300 and
    negatives never reach make_interval, which would overflow)."""
    seconds = f"{task}.lease_seconds"
    return (
        f"make_interval(secs => CASE WHEN {seconds} > 0 AND {seconds} <= {MAX_LEASE_SECONDS} "
        f"THEN {seconds} ELSE {default}::float8 END)"
    )


def _heartbeat(task: str) -> str:
    return f"coalesce({task}.last_heartbeat, {task}.picked_up_at, {task}.created_at)"


def lease_expired(task: str, default: str) -> str:
    """Whether a running task's lease is over: its last sign of life is older than its
    lease, or is a time no agent writes (none, ±infinity, or further in the future than a
    lease: heartbeats are the server's now())."""
    beat, lease = _heartbeat(task), _lease(task, default)
    return (
        f"({beat} IS NULL OR NOT isfinite({beat}) OR {beat} < now() - {lease}"
        f" OR {beat} > now() + {lease})"
    )


def _abandoned(task: str, default: str) -> str:
    """The error of a task taken over: who stopped heartbeating and when, and which
    impossible value was read how."""
    beat, seconds = _heartbeat(task), f"{task}.lease_seconds"
    return f"""'abandoned: agent ' || coalesce({task}.claimed_by, 'unknown')
            || CASE WHEN {beat} IS NOT NULL AND (NOT isfinite({beat}) OR {beat} > now())
                    THEN ' left last_heartbeat ' || quote_literal({beat}::text)
                         || ', a time no agent writes: read as expired'
                    ELSE ' stopped heartbeating at ' || coalesce(
                         to_char({beat} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                         'an unknown time') END
            || CASE WHEN {seconds} IS NOT NULL
                         AND NOT ({seconds} > 0 AND {seconds} <= {MAX_LEASE_SECONDS})
                    THEN '; its lease_seconds ' || quote_literal({seconds}::text)
                         || ' was read as ' || {default}::float8 || ' s'
                    ELSE '' END"""


#: What the release_version of a release may be (interfaces.VERSION_PATTERN).
_VERSION_RE = "^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$"


def task_problems(task: str, release: str, release_types: str) -> str:
    """Why the agent cannot run a pending task (``task`` joined to the release it names as
    ``release``), every column and value named; NULL when it can. ``release_types`` is the
    parameter holding the release types the installed deployers declare (a text array;
    NULL when one of them takes any type). Values are quoted with quote_literal and cut:
    they are shown, never run."""

    def value(column: str) -> str:
        return f"coalesce(quote_literal(left({column}::text, 80)), 'NULL')"

    named = f"{release}.id IS NOT NULL"
    which = f"' of release ' || {release}.id"
    return f"""nullif(concat_ws('; ',
        CASE WHEN {task}.type IS NULL OR {task}.type NOT IN ('deploy', 'rollback')
             THEN 'type ' || {value(f"{task}.type")} || ' is neither deploy nor rollback' END,
        CASE WHEN {task}.execute_after = '-infinity'
             THEN 'execute_after ' || quote_literal({task}.execute_after::text)
                  || ' is not a time the agent can wait for' END,
        CASE WHEN jsonb_typeof({task}.result) <> 'object'
             THEN 'result ' || {value(f"{task}.result")}
                  || ' is not a JSON object (the agent writes an object there)' END,
        CASE WHEN {task}.release_artifact_id IS NULL AND {task}.type = 'deploy'
             THEN 'release_artifact_id is NULL: a deploy task must name a release' END,
        CASE WHEN {task}.release_artifact_id IS NOT NULL AND {release}.id IS NULL
             THEN 'release_artifact_id ' || {task}.release_artifact_id
                  || ' names no release' END,
        CASE WHEN {named} AND ({release}.release_version IS NULL
                               OR {release}.release_version !~ '{_VERSION_RE}')
             THEN 'release_version ' || {value(f"{release}.release_version")} || {which}
                  || ' is not a release version (1-64 characters from [0-9A-Za-z.+_-], '
                  || 'starting with a letter or digit)' END,
        CASE WHEN {named} AND ({release}.chart_type IS NULL
                               OR btrim({release}.chart_type) = '')
             THEN 'chart_type ' || {value(f"{release}.chart_type")} || {which}
                  || ' names no release type' END,
        CASE WHEN {named} AND btrim({release}.chart_type) <> ''
                          AND {release_types} IS NOT NULL
                          AND NOT {release}.chart_type = ANY ({release_types})
             THEN 'chart_type ' || {value(f"{release}.chart_type")} || {which}
                  || ' is a release type no installed deployer declares ('
                  || array_to_string({release_types}, ', ') || ')' END,
        CASE WHEN {named} AND coalesce(octet_length({release}.artifact_data), 0) = 0
             THEN 'artifact_data' || {which} || ' is empty (0 bytes)' END,
        CASE WHEN {named} AND ({release}.sha256 IS NULL OR lower(btrim({release}.sha256,
                                   E' \\t\\r\\n')) !~ '^[0-9a-f]{{64}}$')
             THEN 'sha256 ' || {value(f"{release}.sha256")} || {which}
                  || ' is not a SHA-256 digest (64 hex digits)' END
    ), '')"""


ARTIFACT_COLUMNS = """a.id, a.release_version, a.chart_type, a.sha256,
    octet_length(a.artifact_data) AS size, a.is_current, a.is_previous, a.applied_at,
    a.created_at, a.signature, a.env_data IS NOT NULL AS has_env,
    a.values_data IS NOT NULL AS has_values"""

# The JSON of a notification as notifiers get it (see interfaces.NotificationEvent), for
# outcomes decided inside SQL ($-parameters: agent id, installation name).
_SQL_EVENT = """jsonb_build_object(
    'kind', {kind}, 'installation', {installation}::text, 'task_id', {task}.id,
    'task_type', {task}.type, 'outcome', 'failed',
    'version', (SELECT v.release_version FROM release_artifact v
                WHERE v.id = {task}.release_artifact_id),
    'from_version', NULL, 'to_version', NULL, 'error', {task}.error_message,
    'agent_id', {agent}::text, 'started_at', NULL, 'finished_at', now())"""

#: The shared deployment_config.last_agent_poll is written at most this often, whatever
#: the number of agents and polls (the dashboard shows it to the second: a few seconds
#: late is still "just now").
LAST_POLL_EVERY = 5.0

_QUIET = """quiet AS (
    -- PostgreSQL before 17 cannot subtract an infinite time: such a row means no quiet
    SELECT f.quiet_until FROM agent_failover f
    WHERE f.quiet_until > now() AND isfinite(f.quiet_until)
)"""

_HEAD = """head AS (
    -- the head of the queue: the oldest due rows, checked before any is claimed
    SELECT r.id FROM agent_task r
    WHERE r.status = 'pending' AND (r.execute_after IS NULL OR r.execute_after <= now())
    ORDER BY r.created_at, r.id
    LIMIT 20
)"""

# The poll, on every wake-up (NOTIFY or timer) of every agent: it costs what a claim must.
#  - claim the oldest due task that passes every check (task_problems: so the claim never
#    hands the agent a row it cannot parse) unless a deployment is running or a failover's
#    quiet period holds;
#  - say, without changing them, whether the head of the queue holds rows no agent can run
#    (bad_waiting: the agent then runs SWEEP_BAD) and whether a running task's lease ran out
#    (lease_expired: the agent then runs TAKE_OVER);
#  - record that this process is alive only when that changes something a reader sees (a
#    claim, a new process, a task finished, a stop) or last_seen is older than $8 seconds,
#    and the installation's last_agent_poll at most every LAST_POLL_EVERY seconds: an idle
#    poll writes nothing, so it takes no transaction id and waits for no WAL flush;
#  - say when the next task is due and when the running task's lease (or a quiet period)
#    ends.
# Two agents racing for the last free slot: the loser's claim hits the unique index
# agent_task_one_in_progress and the whole statement fails with unique_violation.
# $1 agent id, $2 hostname, $3 pid, $4 version, $5 lease seconds of our claims (STALE_AFTER
# + STALE_MARGIN, also used for rows that recorded none), $6 claim token, $7 instance id,
# $8 seconds after which last_seen is renewed by a poll that changes nothing else, $9 the
# release types the installed deployers declare (NULL: one of them takes any type).
POLL = f"""
WITH {_QUIET}, {_HEAD}, bad_waiting AS (
    SELECT 1 FROM agent_task r LEFT JOIN release_artifact a ON a.id = r.release_artifact_id
    WHERE r.id IN (SELECT id FROM head) AND r.status = 'pending'
      AND {task_problems("r", "a", "$9::text[]")} IS NOT NULL
    LIMIT 1
), expired AS (
    SELECT 1 FROM agent_task t
    WHERE t.status = 'inProgress' AND {lease_expired("t", "$5")}
      AND NOT EXISTS (SELECT 1 FROM quiet)
    LIMIT 1
), candidate AS (
    SELECT c.id FROM agent_task c LEFT JOIN release_artifact a ON a.id = c.release_artifact_id
    WHERE c.status = 'pending'
      AND c.type IN ('deploy', 'rollback')
      AND (c.execute_after IS NULL OR (isfinite(c.execute_after) AND c.execute_after <= now()))
      AND {task_problems("c", "a", "$9::text[]")} IS NULL
      AND NOT EXISTS (SELECT 1 FROM agent_task r WHERE r.status = 'inProgress')
      AND NOT EXISTS (SELECT 1 FROM quiet)
    ORDER BY c.created_at, c.id
    LIMIT 1
    FOR UPDATE OF c SKIP LOCKED
), claimed AS (
    UPDATE agent_task t
    SET status = 'inProgress', picked_up_at = now(), last_heartbeat = now(), claimed_by = $1,
        claim_token = $6, lease_seconds = $5, recovery = false
    FROM candidate WHERE t.id = candidate.id
    RETURNING {CLAIM_COLUMNS}
), seen AS (
    UPDATE agent_instance i
    SET last_poll = now(), last_seen = now(), hostname = $2, pid = $3, version = $4,
        instance_id = $7, stopped_at = NULL, current_task_id = (SELECT id FROM claimed),
        lease_seconds = $5
    WHERE i.agent_id = $1
      AND (EXISTS (SELECT 1 FROM claimed) OR i.current_task_id IS NOT NULL
           OR i.instance_id IS DISTINCT FROM $7 OR i.stopped_at IS NOT NULL
           OR i.lease_seconds IS DISTINCT FROM $5
           OR i.last_seen IS NULL OR i.last_seen < now() - make_interval(secs => $8))
), first_seen AS (
    INSERT INTO agent_instance
        (agent_id, hostname, pid, version, last_poll, last_seen, instance_id, current_task_id,
         lease_seconds)
    SELECT $1, $2, $3, $4, now(), now(), $7, (SELECT id FROM claimed), $5
    WHERE NOT EXISTS (SELECT 1 FROM agent_instance WHERE agent_id = $1)
), polled AS (
    UPDATE deployment_config SET last_agent_poll = now()
    WHERE last_agent_poll IS NULL
       OR last_agent_poll < now() - make_interval(secs => {LAST_POLL_EVERY})
)
SELECT
    (SELECT to_jsonb(c) FROM claimed c) AS claimed,
    EXISTS (SELECT 1 FROM bad_waiting) AS bad_waiting,
    EXISTS (SELECT 1 FROM expired) AS lease_expired,
    (SELECT extract(epoch FROM min(p.execute_after) - clock_timestamp())::float8
       FROM agent_task p
      WHERE p.status = 'pending' AND p.execute_after > now() AND isfinite(p.execute_after))
        AS next_due_in,
    -- when the running task's lease (or a failover's quiet period) ends: a standby polls
    -- then, not a whole poll interval later
    (SELECT extract(epoch FROM least(
                (SELECT min(q.quiet_until) FROM quiet q),
                -- the same clamps as the takeover: no time or lease a backend wrote can
                -- overflow here (a heartbeat near 294276 AD plus a day would)
                (SELECT min({_heartbeat("r")} + {_lease("r", "$5")})
                   FROM agent_task r
                  WHERE r.status = 'inProgress' AND NOT {lease_expired("r", "$5")}))
            - clock_timestamp())::float8) AS lease_ends_in
"""

# When POLL saw rows at the head of the queue that no agent can run: check every column of
# the oldest due pending rows and of the releases they name (task_problems) and reject
# those: failed with each column and value named, the admins' notification promised in the
# outbox ('infinity' means "never": such a row stays pending and is never due). Rows another
# agent is rejecting right now are skipped (SKIP LOCKED).
# $1 agent id, $2 notifier names, $3 installation name, $4 release types (as POLL's $9).
SWEEP_BAD = f"""
WITH {_HEAD}, bad AS (
    -- those of them no agent can run, each with every column and value that is wrong
    SELECT r.id, {task_problems("r", "a", "$4::text[]")} AS reason
    FROM agent_task r LEFT JOIN release_artifact a ON a.id = r.release_artifact_id
    WHERE r.id IN (SELECT id FROM head) AND r.status = 'pending'
      AND {task_problems("r", "a", "$4::text[]")} IS NOT NULL
    FOR UPDATE OF r SKIP LOCKED
), rejected AS (
    UPDATE agent_task t
    SET status = 'failed', completed_at = now(), claimed_by = $1,
        error_message = 'rejected by agent ' || $1::text || ': ' || bad.reason
    FROM bad WHERE t.id = bad.id
    RETURNING t.id, t.type, t.release_artifact_id, t.error_message
), rejected_notified AS (
    INSERT INTO agent_notification (task_id, notifier, event)
    SELECT r.id, n.name,
        {_SQL_EVENT.format(kind="'task_rejected'", installation="$3", task="r", agent="$1")}
    FROM rejected r CROSS JOIN unnest($2::text[]) AS n(name)
)
SELECT coalesce(jsonb_agg(jsonb_build_object('id', r.id, 'error', r.error_message)),
                '[]'::jsonb) AS rejected
FROM rejected r
"""

# When POLL saw a running task whose lease ran out: take it over (its owner stopped
# heartbeating longer ago than the lease the owner recorded, or left a heartbeat or lease no
# agent writes: see lease_expired). It stays inProgress, so the one-deployment slot stays
# taken while the new owner finds out what is live and clears what was left. Not during a
# failover's quiet period. The taker's agent_instance row names the task.
# $1 agent id, $2 hostname, $3 pid, $4 version, $5 lease seconds, $6 claim token,
# $7 instance id.
TAKE_OVER = f"""
WITH {_QUIET}, taken_over AS (
    UPDATE agent_task t
    SET claimed_by = $1, claim_token = $6, lease_seconds = $5, last_heartbeat = now(),
        recovery = true,
        error_message = CASE WHEN t.recovery AND starts_with(t.error_message, 'abandoned: ')
            THEN t.error_message ELSE {_abandoned("t", "$5")} END
    WHERE t.status = 'inProgress' AND {lease_expired("t", "$5")}
      AND NOT EXISTS (SELECT 1 FROM quiet)
    RETURNING {CLAIM_COLUMNS}
), seen AS (
    INSERT INTO agent_instance
        (agent_id, hostname, pid, version, last_poll, last_seen, instance_id, current_task_id,
         lease_seconds)
    SELECT $1, $2, $3, $4, now(), now(), $7, o.id, $5 FROM taken_over o
    ON CONFLICT (agent_id) DO UPDATE
        SET last_poll = now(), last_seen = now(), hostname = EXCLUDED.hostname,
            pid = EXCLUDED.pid, version = EXCLUDED.version, instance_id = EXCLUDED.instance_id,
            stopped_at = NULL, current_task_id = EXCLUDED.current_task_id,
            lease_seconds = EXCLUDED.lease_seconds
)
SELECT (SELECT to_jsonb(o) FROM taken_over o) AS taken_over
"""

# A row the poll claimed or took over that the agent then could not read (defense in
# depth: the poll's checks should have rejected it): failed with the reason, the admins'
# notification promised, only while this claim holds it.
# $1 task, $2 claim token, $3 agent id, $4 reason, $5 notifier names, $6 installation.
QUARANTINE = f"""
WITH failed AS (
    UPDATE agent_task t
    SET status = 'failed', completed_at = now(),
        error_message = 'rejected by agent ' || $3::text || ': ' || $4::text
    WHERE t.id = $1 AND t.claim_token = $2 AND t.status = 'inProgress'
    RETURNING t.id, t.type, t.release_artifact_id, t.error_message
), notified AS (
    INSERT INTO agent_notification (task_id, notifier, event)
    SELECT f.id, n.name,
        {_SQL_EVENT.format(kind="'task_rejected'", installation="$6", task="f", agent="$3")}
    FROM failed f CROSS JOIN unnest($5::text[]) AS n(name)
)
SELECT id, error_message FROM failed
"""

# Renew the lease; the same statement says this process is alive.
# $1 task, $2 claim token, $3 agent id, $4 instance id.
HEARTBEAT = """
WITH renewed AS (
    UPDATE agent_task SET last_heartbeat = now()
    WHERE id = $1 AND claim_token = $2 AND status = 'inProgress'
    RETURNING id
), seen AS (
    UPDATE agent_instance SET last_seen = now()
    WHERE agent_id = $3 AND instance_id = $4
)
SELECT id FROM renewed
"""

# Our claim was lost with a failover (the promoted standby never received it) and the task
# is pending again: take it for recovery, so that whatever our deploy changed is found out
# instead of the task being run again from the start.
# $1 task, $2 agent id, $3 claim token, $4 lease seconds.
RECLAIM_FOR_RECOVERY = f"""
UPDATE agent_task t
SET status = 'inProgress', claimed_by = $2, claim_token = $3, lease_seconds = $4,
    picked_up_at = coalesce(t.picked_up_at, now()), last_heartbeat = now(), recovery = true,
    error_message = 'abandoned: the claim of agent ' || $2::text
        || ' was lost in a database failover (the promoted standby had not received it) '
        || 'while its ' || t.type || ' ran'
WHERE t.id = $1 AND t.status = 'pending'
RETURNING {TASK_COLUMNS}
"""

# After a connection reached a server it had not seen: record the primary's WAL timeline;
# a new timeline (a promoted standby) starts a quiet period of $1 seconds in which no task
# is claimed or taken over. Returns the seconds left of a quiet period (0: none).
FAILOVER_CHECK = """
WITH seen AS (
    SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) AS timeline
), recorded AS (
    INSERT INTO agent_failover AS f (id, timeline, changed_at, quiet_until)
    SELECT 1, seen.timeline, now(), '-infinity' FROM seen
    ON CONFLICT (id) DO UPDATE
        SET timeline = EXCLUDED.timeline, changed_at = now(),
            quiet_until = now() + make_interval(secs => $1)
        WHERE f.timeline IS DISTINCT FROM EXCLUDED.timeline
    RETURNING f.quiet_until
)
SELECT coalesce((
    SELECT extract(epoch FROM u.quiet_until - now())::float8
    FROM (SELECT coalesce((SELECT quiet_until FROM recorded),
                          (SELECT quiet_until FROM agent_failover WHERE id = 1)) AS quiet_until) u
    WHERE u.quiet_until > now() AND isfinite(u.quiet_until)), 0)
"""

FINISH_TASK = f"""
UPDATE agent_task t
SET status = $3, completed_at = now(), result = $4, error_message = $5
WHERE t.id = $1 AND t.claim_token = $2 AND t.status = 'inProgress'
RETURNING {TASK_COLUMNS}
"""

# -- the agent's process ---------------------------------------------------------------
INSTANCE = """
SELECT instance_id, hostname, pid, stopped_at,
    extract(epoch FROM clock_timestamp() - coalesce(last_seen, last_poll))::float8 AS age,
    coalesce(last_seen, last_poll) AS last_seen
FROM agent_instance WHERE agent_id = $1
"""
INSTANCE_STOPPED = """
UPDATE agent_instance SET stopped_at = now(), current_task_id = NULL
WHERE agent_id = $1 AND instance_id = $2
"""
TASK_LEASES = f"""
SELECT t.id, t.claimed_by,
    t.status = 'inProgress' AND NOT {lease_expired("t", "$2")} AS leased
FROM agent_task t WHERE t.id = ANY($1::uuid[])
"""

# -- maintenance: who holds it -----------------------------------------------------------
# Maintenance is on while a hold exists (agent_maintenance_hold: task:<id>, operator:<name>).
# Every change of the holds and every switch of the proxy runs under one advisory lock,
# never under a row lock a poll needs: a slow proxy never delays a claim.
MAINTENANCE_LOCK_KEY = 0x5752_4B54_4D41_494E & 0x7FFF_FFFF_FFFF_FFFF  # "WRKTMAIN"
MAINTENANCE_LOCK = "SELECT pg_advisory_xact_lock($1::bigint)"
MAINTENANCE_TRY_LOCK = "SELECT pg_try_advisory_xact_lock($1::bigint)"
MAINTENANCE_STATE = """
SELECT coalesce(bool_or(d.maintenance_mode_enabled), false) AS enabled,
    max(d.maintenance_off_pending_since) AS off_pending_since,
    max(d.maintenance_off_error) AS off_error,
    (SELECT coalesce(jsonb_agg(jsonb_build_object(
                'holder', h.holder, 'reason', h.reason, 'since', h.since)
            ORDER BY h.since, h.holder), '[]'::jsonb)
       FROM agent_maintenance_hold h) AS holds
FROM deployment_config d
"""
# A task's hold, written only while its claim still owns the task. $1 task, $2 claim
# token, $3 reason. Returns the holder (none: the claim is lost).
TASK_HOLD = """
INSERT INTO agent_maintenance_hold (holder, reason)
SELECT 'task:' || $1::uuid::text, $3
WHERE EXISTS (SELECT 1 FROM agent_task
              WHERE id = $1 AND claim_token = $2 AND status = 'inProgress')
ON CONFLICT (holder) DO UPDATE SET reason = EXCLUDED.reason
RETURNING holder
"""
# An operator's window: a second `on` by the same operator updates the reason. $1 holder,
# $2 reason. `created` is false when the operator already held one.
OPERATOR_HOLD = """
INSERT INTO agent_maintenance_hold (holder, reason) VALUES ($1, $2)
ON CONFLICT (holder) DO UPDATE SET reason = EXCLUDED.reason
RETURNING holder, (xmax = 0) AS created
"""
# Releasing a task's hold, fenced like TASK_HOLD. $1 task, $2 claim token.
RELEASE_TASK_HOLD = """
DELETE FROM agent_maintenance_hold
WHERE holder = 'task:' || $1::uuid::text
  AND EXISTS (SELECT 1 FROM agent_task
              WHERE id = $1 AND claim_token = $2 AND status = 'inProgress')
RETURNING holder, reason, since
"""
RELEASE_HOLD = """
DELETE FROM agent_maintenance_hold WHERE holder = $1 RETURNING holder, reason, since
"""
RELEASE_ALL_HOLDS = "DELETE FROM agent_maintenance_hold RETURNING holder, reason, since"
# Holds of tasks that have ended (or vanished): their owner is gone, proved by this very
# statement. A task still inProgress keeps its hold, also while it waits to be recovered.
RELEASE_ENDED_TASK_HOLDS = """
DELETE FROM agent_maintenance_hold h
WHERE h.holder LIKE 'task:%'
  AND NOT EXISTS (SELECT 1 FROM agent_task t
                  WHERE t.status = 'inProgress' AND 'task:' || t.id::text = h.holder)
RETURNING h.holder, h.reason, h.since
"""
_HOLDS_SUMMARY = """maintenance_owner = (SELECT string_agg(holder, ', ' ORDER BY since, holder)
        FROM agent_maintenance_hold),
    maintenance_reason = (SELECT reason FROM agent_maintenance_hold ORDER BY since, holder
        LIMIT 1),
    maintenance_since = (SELECT min(since) FROM agent_maintenance_hold)"""
# The flag the backend reads, and the summary of the holds beside it.
RECORD_MAINTENANCE_ON = f"""
UPDATE deployment_config SET maintenance_mode_enabled = true,
    maintenance_off_pending_since = NULL, maintenance_off_error = NULL,
    {_HOLDS_SUMMARY}
"""
RECORD_HOLDS = f"UPDATE deployment_config SET {_HOLDS_SUMMARY}"
# The proxy is off: recorded only while no hold has appeared meanwhile.
RECORD_MAINTENANCE_OFF = """
UPDATE deployment_config SET maintenance_mode_enabled = false, maintenance_owner = NULL,
    maintenance_reason = NULL, maintenance_since = NULL,
    maintenance_off_pending_since = NULL, maintenance_off_error = NULL
WHERE NOT EXISTS (SELECT 1 FROM agent_maintenance_hold)
"""
# The last hold is gone but the proxy could not be switched off: still on, retried. $1 error.
RECORD_OFF_PENDING = f"""
UPDATE deployment_config SET maintenance_mode_enabled = true,
    maintenance_off_pending_since = coalesce(maintenance_off_pending_since, now()),
    maintenance_off_error = $1, {_HOLDS_SUMMARY}
WHERE NOT EXISTS (SELECT 1 FROM agent_maintenance_hold)
"""
# An operator's `off --force` (or a recovered task's hold) in the timeline of the tasks
# whose holds it ended. $1 task ids, $2 message.
MAINTENANCE_NOTE = """
INSERT INTO agent_task_event (task_id, step, status, message, agent_id)
SELECT t.id, 'maintenance-off', 'info', $2, NULL
FROM agent_task t WHERE t.id = ANY($1::uuid[])
"""
TASK_STATUS = "SELECT status FROM agent_task WHERE id = $1"

# -- the notification outbox -------------------------------------------------------------
INSERT_NOTIFICATIONS = """
INSERT INTO agent_notification (task_id, notifier, event)
SELECT $1, n.name, $3::jsonb FROM unnest($2::text[]) AS n(name)
"""
# Due notifications for the notifiers this agent has, leased for $2 seconds under a new
# token each; age: seconds since the notification was promised (the database's clock).
CLAIM_NOTIFICATIONS = """
UPDATE agent_notification n
SET locked_by = $1, locked_until = now() + make_interval(secs => $2),
    lease_token = gen_random_uuid(), attempts = n.attempts + 1
FROM (
    SELECT d.id FROM agent_notification d
    WHERE d.status = 'pending' AND d.next_attempt_at <= now()
      AND (d.locked_until IS NULL OR d.locked_until < now())
      AND d.notifier = ANY($3::text[])
    ORDER BY d.next_attempt_at, d.created_at
    LIMIT $4
    FOR UPDATE SKIP LOCKED
) due
WHERE n.id = due.id
RETURNING n.id, n.task_id, n.notifier, n.event, n.attempts, n.lease_token,
    extract(epoch FROM now() - n.created_at)::float8 AS age
"""
# Keep the lease ($1 id, $2 token) for $3 more seconds; no row: it was taken away.
RENEW_NOTIFICATION = """
UPDATE agent_notification SET locked_until = now() + make_interval(secs => $3)
WHERE id = $1 AND lease_token = $2 AND status = 'pending'
RETURNING id
"""
_LEASED = "SELECT 1 FROM agent_notification WHERE id = $1 AND lease_token = $2"
# A send that began ('sending') and never got an answer recorded — its agent was cut off
# by NOTIFY_TIMEOUT, stopped, died or froze — may have arrived: the recipient gets one
# repeat, or none when this was already the repeat. Run by the lease holder ($1, $2)
# when it takes a notification and when it ends its attempt.
SETTLE_UNANSWERED = f"""
UPDATE agent_notification_recipient
SET state = CASE WHEN unsure >= 2 THEN 'unknown' ELSE 'pending' END,
    detail = 'outcome unknown: no answer after the message was sent ('
             || CASE WHEN unsure >= 2 THEN 'sent twice, not repeated again'
                     ELSE 'it will be repeated once' END || ')',
    updated_at = now()
WHERE notification_id = $1 AND state = 'sending' AND EXISTS ({_LEASED})
"""
NOTIFICATION_RECIPIENTS = """
SELECT recipient, state, unsure, sends, attempts, detail FROM agent_notification_recipient
WHERE notification_id = $1 ORDER BY recipient
"""
# The point of no return for one recipient ($2) of notification $1, under lease token $3:
# allowed while the lease holds (extended by $4 seconds here) and fewer than two sends to
# this recipient have an unknown outcome. Returns the send's number, or no row: don't send.
BEGIN_SEND = """
WITH lease AS (
    UPDATE agent_notification SET locked_until = now() + make_interval(secs => $4)
    WHERE id = $1 AND lease_token = $3 AND status = 'pending'
    RETURNING id
)
INSERT INTO agent_notification_recipient AS r
    (notification_id, recipient, state, unsure, sends, send_token, detail)
SELECT id, $2, 'sending', 1, 1, $3, 'sending' FROM lease
ON CONFLICT (notification_id, recipient) DO UPDATE
SET state = 'sending', unsure = r.unsure + 1, sends = r.sends + 1, send_token = $3,
    detail = 'sending', updated_at = now()
WHERE r.state IN ('pending', 'sending') AND r.unsure < 2
RETURNING r.sends
"""
# One recipient's outcome ($4: delivered | temporary | permanent | unknown, $5 detail,
# $6 attempts the notifier made), while lease token $3 holds notification $1. A send in
# flight ('sending') ends with it; settled recipients are never changed again.
REPORT_DELIVERY = """
INSERT INTO agent_notification_recipient AS r
    (notification_id, recipient, state, unsure, detail, attempts)
SELECT n.id, $2,
    CASE $4::text WHEN 'delivered' THEN 'delivered' WHEN 'permanent' THEN 'failed'
         ELSE 'pending' END,
    CASE WHEN $4::text = 'unknown' THEN 1 ELSE 0 END, $5, $6
FROM agent_notification n WHERE n.id = $1 AND n.lease_token = $3
ON CONFLICT (notification_id, recipient) DO UPDATE
SET state = CASE
        WHEN $4::text = 'delivered' THEN 'delivered'
        WHEN $4::text = 'permanent' THEN 'failed'
        WHEN $4::text = 'unknown'
             AND r.unsure + CASE WHEN r.state = 'sending' THEN 0 ELSE 1 END >= 2
             THEN 'unknown'
        ELSE 'pending' END,
    unsure = r.unsure + CASE
        WHEN r.state = 'sending' THEN CASE WHEN $4::text = 'unknown' THEN 0 ELSE -1 END
        ELSE CASE WHEN $4::text = 'unknown' THEN 1 ELSE 0 END END,
    detail = $5, attempts = r.attempts + $6, updated_at = now()
WHERE r.state IN ('pending', 'sending')
RETURNING r.state
"""
LOCK_LEASED_NOTIFICATION = _LEASED + " FOR UPDATE"
# Recipients the notifier no longer names (an admin made inactive between attempts).
DROP_RECIPIENTS = """
UPDATE agent_notification_recipient
SET state = 'dropped', detail = 'no longer a recipient: ' || detail, updated_at = now()
WHERE notification_id = $1 AND recipient = ANY($2::text[]) AND state = 'pending'
"""
# The final deadline passed: whoever is still waiting for a retry is given up.
GIVE_UP_RECIPIENTS = """
UPDATE agent_notification_recipient
SET state = 'failed', detail = 'gave up at the deadline; last: ' || detail, updated_at = now()
WHERE notification_id = $1 AND state = 'pending'
"""
# $1 id, $2 lease token, $3 status, $4 deliveries, $5 seconds until the next attempt;
# with the same lease, a line in the task's timeline ($6 status, $7 message, $8 agent id;
# none when $7 is NULL).
FINISH_NOTIFICATION = """
WITH done AS (
    UPDATE agent_notification
    SET status = $3, deliveries = $4, locked_by = NULL, locked_until = NULL,
        lease_token = NULL,
        finished_at = CASE WHEN $3 <> 'pending' THEN now() END,
        next_attempt_at = now() + make_interval(secs => $5)
    WHERE id = $1 AND lease_token = $2
    RETURNING task_id, notifier
), told AS (
    INSERT INTO agent_task_event (task_id, step, status, message, agent_id)
    SELECT done.task_id, 'notify', $6, $7, $8 FROM done
    WHERE $7::text IS NOT NULL AND done.task_id IS NOT NULL
)
UPDATE agent_task t
SET result = coalesce(t.result, '{}'::jsonb) || jsonb_build_object(
    'notifications',
    coalesce(t.result -> 'notifications', '{}'::jsonb)
        || jsonb_build_object(done.notifier, $4::jsonb))
FROM done WHERE t.id = done.task_id
"""
PENDING_NOTIFICATIONS = "SELECT count(*) FROM agent_notification WHERE status = 'pending'"

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
# Nothing of the current release runs any more: it becomes previous, none is current
# (two statements, in this order, for the partial unique indexes).
CLEAR_PREVIOUS_IF_CURRENT = """
UPDATE release_artifact SET is_previous = false
WHERE is_previous AND EXISTS (SELECT 1 FROM release_artifact c WHERE c.is_current)
"""
CURRENT_TO_PREVIOUS = """
UPDATE release_artifact SET is_current = false, is_previous = true WHERE is_current
"""
PROMOTE = """
UPDATE release_artifact SET is_current = true, is_previous = false, applied_at = now()
WHERE id = $1
"""

INSERT_EVENT = """
INSERT INTO agent_task_event (task_id, step, status, message, agent_id)
VALUES ($1, $2, $3, $4, $5)
"""

# A task owner's timeline entries: written only while its claim ($7) owns the task, so an
# owner that was frozen or cut off and comes back writes nothing into a task that another
# agent has taken over. Returns how many were written.
INSERT_EVENTS = """
WITH owner AS (
    SELECT 1 FROM agent_task WHERE id = $1 AND claim_token = $7 AND status = 'inProgress'
), written AS (
    INSERT INTO agent_task_event (task_id, created_at, step, status, message, agent_id)
    SELECT $1, e.at, e.step, e.status, e.message, $6
    FROM unnest($2::timestamptz[], $3::text[], $4::text[], $5::text[])
        AS e(at, step, status, message)
    WHERE EXISTS (SELECT 1 FROM owner)
    RETURNING 1
)
SELECT count(*) FROM written
"""
# Entries written where ownership is already settled (the outcome's own transaction, after
# its conditional UPDATE; entries of no claim).
INSERT_EVENTS_UNFENCED = """
INSERT INTO agent_task_event (task_id, created_at, step, status, message, agent_id)
SELECT $1, e.at, e.step, e.status, e.message, $6
FROM unnest($2::timestamptz[], $3::text[], $4::text[], $5::text[]) AS e(at, step, status, message)
"""

# The server a connection reached: a different answer on a new connection means a
# failover (or a restart), and task owners re-check their claims.
SERVER_IDENTITY = """
SELECT inet_server_addr()::text, inet_server_port(), pg_postmaster_start_time(),
    pg_is_in_recovery()
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

# A cancelled task is stored as failed with an error starting "cancelled by " (see
# models.SHOWN_STATUSES): the filters `failed` and `cancelled` tell them apart.
_CANCELLED = "(t.status = 'failed' AND starts_with(coalesce(t.error_message, ''), 'cancelled by '))"
_SHOWN_STATUS_IS = f"""(t.status = CASE WHEN $1 = 'cancelled' THEN 'failed' ELSE $1 END
    AND (CASE WHEN $1 = 'cancelled' THEN {_CANCELLED}
              WHEN $1 = 'failed' THEN NOT {_CANCELLED} ELSE true END))"""
LIST_TASKS = f"""
SELECT {TASK_COLUMNS}, a.release_version
FROM agent_task t LEFT JOIN release_artifact a ON a.id = t.release_artifact_id
WHERE ($1::text IS NULL OR {_SHOWN_STATUS_IS}) AND ($2::text IS NULL OR t.type = $2)
ORDER BY t.created_at DESC, t.id DESC
LIMIT $3
"""

INSERT_TASK = f"""
INSERT INTO agent_task AS t (type, status, release_artifact_id, execute_after)
VALUES ($1, 'pending', $2, $3)
RETURNING {TASK_COLUMNS}
"""

# A cancelled task is stored as failed (the backend's status set has no "cancelled"), with
# an error starting "cancelled by" and the result {"cancelled": true, "by": ...}.
# $1 task, $2 error message, $3 result.
CANCEL_TASK = f"""
UPDATE agent_task t
SET status = 'failed', completed_at = now(), error_message = $2, result = $3
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
#: ``release sign``: only when nobody changed the signature since it was read
SET_RELEASE_SIGNATURE = """UPDATE release_artifact SET signature = $2
    WHERE id = $1 AND signature IS NOT DISTINCT FROM $3 RETURNING id"""
# Artifacts are read slice by slice with one prepared statement: substring() reads only
# the slice's TOAST chunks (compressed tarballs are stored uncompressed). Measured 2.5x
# faster than streaming the slices through one cursor over generate_series.
ARTIFACT_SLICE = (
    "SELECT substring(artifact_data FROM $2::int FOR $3::int) FROM release_artifact WHERE id = $1"
)
ARTIFACT_WHOLE = "SELECT artifact_data FROM release_artifact WHERE id = $1"

# -- small questions of the CLI, metrics and health endpoints ---------------------------
#: task ids in a range of the primary key (a prefix an operator typed): the index answers
TASK_IDS_BETWEEN = "SELECT id FROM agent_task WHERE id BETWEEN $1 AND $2 ORDER BY id LIMIT $3"
#: the oldest pending rollback, if any (one is enough)
PENDING_ROLLBACK = """SELECT id FROM agent_task WHERE type = 'rollback' AND status = 'pending'
ORDER BY created_at LIMIT 1"""
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
            'failed', count(*) FILTER (WHERE t.status = 'failed' AND NOT {_CANCELLED}),
            'cancelled', count(*) FILTER (WHERE {_CANCELLED}))
          FROM agent_task t
         WHERE t.status IN ('completed', 'failed') AND t.created_at > now() - interval '1 day')
          AS ended
"""
#: the database answers at all (readiness, a listening connection's keepalive)
PING = "SELECT 1"

SMTP_CONFIG = """
SELECT smtp_host, smtp_port, smtp_user, smtp_password, smtp_from
FROM deployment_config
ORDER BY smtp_host IS NULL, created_at  -- a configured row wins over a bare one
LIMIT 1
"""
ACTIVE_ADMINS = "SELECT id, name, email FROM admin WHERE is_active ORDER BY email, id"
# What the backend writes, for the demo and tests: an admin, the SMTP settings.
INSERT_ADMIN = "INSERT INTO admin (name, email, is_active) VALUES ($1, $2, $3)"
SET_SMTP = "UPDATE deployment_config SET smtp_host = $1, smtp_port = $2, smtp_from = $3"

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
    "failed": f"t.status = 'failed' AND NOT {_CANCELLED}",
    "cancelled": f"t.status = 'failed' AND {_CANCELLED}",
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
    current_user AS role_name, current_schema() AS schema_name,
    CASE WHEN to_regclass('agent_task_event') IS NOT NULL
         THEN pg_get_serial_sequence('agent_task_event', 'id') END AS event_sequence
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
