"""Tasks as the CLI and the dashboard see them (create, read, list, cancel) and their
timeline (agent_task_event)."""

from wrktalk_agent.db.queries.rows import CANCELLED, TASK_COLUMNS

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


TASK_EVENTS = """
SELECT id, task_id, created_at, step, status, message, agent_id
FROM agent_task_event WHERE task_id = $1 ORDER BY id
"""

GET_TASK = f"""
SELECT {TASK_COLUMNS}, a.release_version
FROM agent_task t LEFT JOIN release_artifact a ON a.id = t.release_artifact_id
WHERE t.id = $1
"""


_SHOWN_STATUS_IS = f"""(t.status = CASE WHEN $1 = 'cancelled' THEN 'failed' ELSE $1 END
    AND (CASE WHEN $1 = 'cancelled' THEN {CANCELLED}
              WHEN $1 = 'failed' THEN NOT {CANCELLED} ELSE true END))"""
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


#: task ids in a range of the primary key (a prefix an operator typed): the index answers
TASK_IDS_BETWEEN = "SELECT id FROM agent_task WHERE id BETWEEN $1 AND $2 ORDER BY id LIMIT $3"
#: the oldest pending rollback, if any (one is enough)
PENDING_ROLLBACK = """SELECT id FROM agent_task WHERE type = 'rollback' AND status = 'pending'
ORDER BY created_at LIMIT 1"""
