"""Maintenance as recorded: the holds, the flag the backend reads, the lock every change
runs under."""

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
