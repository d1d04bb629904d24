"""A running task's lease and the agent's process: the renewal, the failover check, the
process record (agent_instance) and the lease questions of the start-up clean-up."""

from wrktalk_agent.db.queries.rows import lease_expired

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


TASK_STATUS = "SELECT status FROM agent_task WHERE id = $1"
