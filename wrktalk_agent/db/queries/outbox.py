"""The notification outbox (leases, sends, outcomes per recipient) and whom it mails: the
active admins and the SMTP settings of deployment_config."""

# -- the notification outbox -------------------------------------------------------------
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
