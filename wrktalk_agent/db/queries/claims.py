"""The claim: the poll every agent runs on every wake-up, what it sets off (rejecting rows
no agent can run, taking over a task whose lease ran out, failing a claimed row the agent
cannot read), a claim lost in a failover taken back for recovery, and the outcome."""

from wrktalk_agent.db.queries.rows import (
    CLAIM_COLUMNS,
    SQL_EVENT,
    TASK_COLUMNS,
    abandoned_error,
    last_sign_of_life,
    lease_expired,
    lease_interval,
    task_problems,
)

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
                (SELECT min({last_sign_of_life("r")} + {lease_interval("r", "$5")})
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
        {SQL_EVENT.format(kind="'task_rejected'", installation="$3", task="r", agent="$1")}
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
            THEN t.error_message ELSE {abandoned_error("t", "$5")} END
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
        {SQL_EVENT.format(kind="'task_rejected'", installation="$6", task="f", agent="$3")}
    FROM failed f CROSS JOIN unnest($5::text[]) AS n(name)
)
SELECT id, error_message FROM failed
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


FINISH_TASK = f"""
UPDATE agent_task t
SET status = $3, completed_at = now(), result = $4, error_message = $5
WHERE t.id = $1 AND t.claim_token = $2 AND t.status = 'inProgress'
RETURNING {TASK_COLUMNS}
"""

# The notifications an outcome promises (one row per notifier name, the event JSON), written
# in the outcome's own transaction. $1 task, $2 notifier names, $3 event.
INSERT_NOTIFICATIONS = """
INSERT INTO agent_notification (task_id, notifier, event)
SELECT $1, n.name, $3::jsonb FROM unnest($2::text[]) AS n(name)
"""
