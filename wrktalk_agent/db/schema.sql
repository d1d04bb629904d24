-- wrktalk-agent schema: the backend's tables plus what the agent adds.
-- Every statement is idempotent: `wrktalk-agent db init` may run any number of times,
-- also against a database whose tables the WrkTalk backend created.

CREATE TABLE IF NOT EXISTS deployment_config (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    deployment_type text NOT NULL DEFAULT 'docker',
    smtp_host text,
    smtp_port integer,
    smtp_user text,
    smtp_password text,
    smtp_from text,
    maintenance_mode_enabled boolean NOT NULL DEFAULT false,
    last_agent_poll timestamptz
);

CREATE TABLE IF NOT EXISTS admin (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text NOT NULL,
    email text NOT NULL,
    is_active boolean NOT NULL DEFAULT true,
    role text NOT NULL DEFAULT 'admin'
);

CREATE TABLE IF NOT EXISTS release_artifact (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    release_version text NOT NULL UNIQUE,
    -- the release type: any text; the installed deployers declare which they take
    chart_type text NOT NULL,
    artifact_data bytea NOT NULL,
    env_data text,
    values_data text,
    sha256 text NOT NULL,
    is_current boolean NOT NULL DEFAULT false,
    is_previous boolean NOT NULL DEFAULT false,
    applied_at timestamptz
);

CREATE TABLE IF NOT EXISTS agent_task (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    type text NOT NULL CHECK (type IN ('deploy', 'rollback')),
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'inProgress', 'completed', 'failed')),
    release_artifact_id uuid REFERENCES release_artifact (id),
    execute_after timestamptz,
    picked_up_at timestamptz,
    completed_at timestamptz,
    last_heartbeat timestamptz,
    result jsonb,
    error_message text
);

-- Agent additions to the backend's tables.
ALTER TABLE deployment_config ADD COLUMN IF NOT EXISTS created_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE admin ADD COLUMN IF NOT EXISTS created_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE release_artifact ADD COLUMN IF NOT EXISTS created_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE release_artifact ADD COLUMN IF NOT EXISTS signature text;
ALTER TABLE agent_task ADD COLUMN IF NOT EXISTS created_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE agent_task ADD COLUMN IF NOT EXISTS claimed_by text;
-- The lease of a running task: a token per claim (heartbeats and the outcome must present
-- it), the seconds after the last heartbeat at which another agent may take the task over
-- (the owner's STALE_AFTER + STALE_MARGIN), and whether the task is being recovered after
-- its agent died.
ALTER TABLE agent_task ADD COLUMN IF NOT EXISTS claim_token uuid;
ALTER TABLE agent_task ADD COLUMN IF NOT EXISTS lease_seconds double precision;
ALTER TABLE agent_task ADD COLUMN IF NOT EXISTS recovery boolean NOT NULL DEFAULT false;
-- Who switched maintenance on (task:<id> or operator:<name>), why and since when.
ALTER TABLE deployment_config ADD COLUMN IF NOT EXISTS maintenance_owner text;
ALTER TABLE deployment_config ADD COLUMN IF NOT EXISTS maintenance_reason text;
ALTER TABLE deployment_config ADD COLUMN IF NOT EXISTS maintenance_since timestamptz;

-- Maintenance holds: a running task's claim and each operator's window are separate holds;
-- maintenance stays on while any hold exists and goes off when the last one is released.
-- deployment_config keeps the flag the backend reads (and a summary of the holds), and
-- when a switch-off failed: the agent retries it until it succeeds.
CREATE TABLE IF NOT EXISTS agent_maintenance_hold (
    holder text PRIMARY KEY,
    reason text,
    since timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE deployment_config ADD COLUMN IF NOT EXISTS maintenance_off_pending_since timestamptz;
ALTER TABLE deployment_config ADD COLUMN IF NOT EXISTS maintenance_off_error text;
-- A window recorded before holds existed (one owner in deployment_config) becomes a hold.
INSERT INTO agent_maintenance_hold (holder, reason, since)
SELECT d.maintenance_owner, d.maintenance_reason, coalesce(d.maintenance_since, now())
FROM deployment_config d
WHERE d.maintenance_mode_enabled AND d.maintenance_owner IS NOT NULL
  AND d.maintenance_owner NOT LIKE '%,%'
  AND NOT EXISTS (SELECT 1 FROM agent_maintenance_hold)
ORDER BY d.created_at
LIMIT 1
ON CONFLICT (holder) DO NOTHING;

-- Every step of a task, in order: the timeline operators read.
CREATE TABLE IF NOT EXISTS agent_task_event (
    id bigserial PRIMARY KEY,
    task_id uuid NOT NULL REFERENCES agent_task (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    step text NOT NULL,
    status text NOT NULL CHECK (status IN ('started', 'succeeded', 'failed', 'skipped', 'info')),
    message text NOT NULL DEFAULT '',
    agent_id text
);

-- Agents seen by the database: one row per agent id, refreshed on every poll.
CREATE TABLE IF NOT EXISTS agent_instance (
    agent_id text PRIMARY KEY,
    hostname text NOT NULL,
    pid integer NOT NULL,
    version text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_poll timestamptz NOT NULL DEFAULT now(),
    current_task_id uuid
);
-- The process behind an agent id (a new one per start), when it was last seen alive (poll
-- or heartbeat) and when it stopped cleanly: a second live process with the same id is
-- refused at start-up.
ALTER TABLE agent_instance ADD COLUMN IF NOT EXISTS instance_id uuid;
ALTER TABLE agent_instance ADD COLUMN IF NOT EXISTS last_seen timestamptz;
ALTER TABLE agent_instance ADD COLUMN IF NOT EXISTS stopped_at timestamptz;
-- The agent's lease (STALE_AFTER + STALE_MARGIN), written by each poll: no sign of life for
-- that long and the agent is stale, as the dashboard tells it.
ALTER TABLE agent_instance ADD COLUMN IF NOT EXISTS lease_seconds double precision;

-- The outbox: notifications promised in the same transaction as a task's outcome, one row
-- per notifier; any agent delivers what is due.
CREATE TABLE IF NOT EXISTS agent_notification (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    task_id uuid REFERENCES agent_task (id) ON DELETE CASCADE,
    notifier text NOT NULL,
    event jsonb NOT NULL,
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    locked_by text,
    locked_until timestamptz,
    deliveries jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX IF NOT EXISTS agent_notification_due
    ON agent_notification (next_attempt_at) WHERE status = 'pending';
-- The lease of the agent delivering a notification: a token per claim, presented by every
-- write the deliverer makes (renewals, each recipient's state, the outcome).
ALTER TABLE agent_notification ADD COLUMN IF NOT EXISTS lease_token uuid;

-- Where each recipient of a notification stands, so that a retry goes only to those who
-- still need it and nobody gets the same mail more than twice (the second time only after
-- an attempt whose outcome is unknown).
CREATE TABLE IF NOT EXISTS agent_notification_recipient (
    notification_id uuid NOT NULL REFERENCES agent_notification (id) ON DELETE CASCADE,
    recipient text NOT NULL,
    state text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'sending', 'delivered', 'failed', 'unknown', 'dropped')),
    -- sends whose outcome is not known: in flight, or lost to a timeout, a dropped
    -- connection or a dead agent; a recipient is sent to only while this is below 2
    unsure integer NOT NULL DEFAULT 0,
    sends integer NOT NULL DEFAULT 0,
    send_token uuid,
    detail text NOT NULL DEFAULT '',
    attempts integer NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (notification_id, recipient)
);

-- The WAL timeline of the primary, as the agents last saw it. A new timeline means a
-- standby was promoted: a claim committed on the old primary may not have reached it, so
-- for a lease and its margin after the change no task is claimed or taken over (an owner
-- whose claim was lost stops its deploy within that time, see "Failure model").
CREATE TABLE IF NOT EXISTS agent_failover (
    id integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    timeline text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    quiet_until timestamptz NOT NULL DEFAULT '-infinity'
);
-- Recorded now, on the primary, so that standbys have it long before any failover.
INSERT INTO agent_failover (id, timeline)
SELECT 1, substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)
WHERE NOT pg_is_in_recovery()
ON CONFLICT (id) DO NOTHING;

-- At most one current and one previous release.
CREATE UNIQUE INDEX IF NOT EXISTS release_artifact_one_current
    ON release_artifact ((true)) WHERE is_current;
CREATE UNIQUE INDEX IF NOT EXISTS release_artifact_one_previous
    ON release_artifact ((true)) WHERE is_previous;
CREATE INDEX IF NOT EXISTS release_artifact_created_at ON release_artifact (created_at DESC);

-- One deployment at a time per installation, whatever the number of agents: the
-- inProgress row itself is the lock.
CREATE UNIQUE INDEX IF NOT EXISTS agent_task_one_in_progress
    ON agent_task ((true)) WHERE status = 'inProgress';
-- The claim: pending tasks, oldest first.
CREATE INDEX IF NOT EXISTS agent_task_pending
    ON agent_task (created_at, id) WHERE status = 'pending';
-- The dashboard: recent tasks, with or without a status filter.
CREATE INDEX IF NOT EXISTS agent_task_recent ON agent_task (created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS agent_task_status_recent ON agent_task (status, created_at DESC);
-- The dashboard's cancelled filter: a cancelled task is a failed one whose error starts
-- "cancelled by " (few among the failed: without it the filter reads every failed row).
CREATE INDEX IF NOT EXISTS agent_task_cancelled_recent ON agent_task (created_at DESC, id DESC)
    WHERE status = 'failed' AND starts_with(coalesce(error_message, ''), 'cancelled by ');
-- The dashboard: the latest finished task (what it found live), without a sort of them all.
CREATE INDEX IF NOT EXISTS agent_task_finished ON agent_task (completed_at DESC NULLS LAST, id DESC)
    WHERE status IN ('completed', 'failed');
CREATE INDEX IF NOT EXISTS agent_task_event_task ON agent_task_event (task_id, id);

-- The agent records maintenance state and poll times in deployment_config: make sure
-- the row exists (the backend normally creates it; this never adds a second one).
INSERT INTO deployment_config (deployment_type)
SELECT 'docker' WHERE NOT EXISTS (SELECT 1 FROM deployment_config);

-- Wake agents (and dashboards) when a task is created or changes status.
CREATE OR REPLACE FUNCTION wrktalk_agent_task_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(
        'wrktalk_agent_task',
        json_build_object('id', NEW.id, 'status', NEW.status, 'type', NEW.type)::text
    );
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER agent_task_notify
    AFTER INSERT OR UPDATE OF status ON agent_task
    FOR EACH ROW EXECUTE FUNCTION wrktalk_agent_task_notify();
