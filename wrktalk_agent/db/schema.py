"""Applying the schema (``db init``) and telling what a database lacks (``db check``)."""

from __future__ import annotations

from importlib import resources

import asyncpg

#: Columns the agent reads or writes, per table.
EXPECTED_COLUMNS: dict[str, tuple[str, ...]] = {
    "deployment_config": (
        "id", "deployment_type", "smtp_host", "smtp_port", "smtp_user", "smtp_password",
        "smtp_from", "maintenance_mode_enabled", "last_agent_poll", "created_at",
        "maintenance_owner", "maintenance_reason", "maintenance_since",
        "maintenance_off_pending_since", "maintenance_off_error",
    ),
    "agent_maintenance_hold": ("holder", "reason", "since"),
    "admin": ("id", "name", "email", "is_active", "role", "created_at"),
    "release_artifact": (
        "id", "release_version", "chart_type", "artifact_data", "env_data", "values_data",
        "sha256", "is_current", "is_previous", "applied_at", "created_at", "signature",
    ),
    "agent_task": (
        "id", "type", "status", "release_artifact_id", "execute_after", "picked_up_at",
        "completed_at", "last_heartbeat", "result", "error_message", "created_at", "claimed_by",
        "claim_token", "lease_seconds", "recovery",
    ),
    "agent_task_event": ("id", "task_id", "created_at", "step", "status", "message", "agent_id"),
    "agent_instance": (
        "agent_id", "hostname", "pid", "version", "started_at", "last_poll", "current_task_id",
        "instance_id", "last_seen", "stopped_at", "lease_seconds",
    ),
    "agent_failover": ("id", "timeline", "changed_at", "quiet_until"),
    "agent_notification": (
        "id", "task_id", "notifier", "event", "status", "attempts", "next_attempt_at",
        "locked_by", "locked_until", "deliveries", "created_at", "finished_at", "lease_token",
    ),
    "agent_notification_recipient": (
        "notification_id", "recipient", "state", "unsure", "sends", "send_token", "detail",
        "attempts", "updated_at",
    ),
}  # fmt: skip

#: Indexes and what they are for, as shown by ``db check`` when missing.
EXPECTED_INDEXES: dict[str, str] = {
    "release_artifact_one_current": "at most one current release",
    "release_artifact_one_previous": "at most one previous release",
    "release_artifact_created_at": "artifact history",
    "agent_task_one_in_progress": "one deployment at a time",
    "agent_task_pending": "fast claims",
    "agent_task_recent": "dashboard task list",
    "agent_task_status_recent": "dashboard status filter",
    "agent_task_cancelled_recent": "dashboard cancelled filter",
    "agent_task_finished": "dashboard: the latest finished task",
    "agent_task_event_task": "task timelines",
    "agent_notification_due": "notification delivery",
}

#: CHECK constraints the agent relies on, by (table, column): the condition and what it
#: guards. A backend-owned schema may lack them; `db init` adds them NOT VALID (existing
#: rows are left for the agent to fail one by one, new rows are checked).
EXPECTED_CHECKS: dict[tuple[str, str], tuple[str, str]] = {
    ("agent_task", "type"): ("type IN ('deploy', 'rollback')", "known task types"),
    ("agent_task", "status"): (
        "status IN ('pending', 'inProgress', 'completed', 'failed')",
        "known task statuses",
    ),
    ("agent_task_event", "status"): (
        "status IN ('started', 'succeeded', 'failed', 'skipped', 'info')",
        "known step statuses",
    ),
}

_CHECKED_COLUMNS = """
SELECT c.relname AS table_name, a.attname AS column_name
FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (k.conkey)
WHERE k.contype = 'c' AND c.relnamespace = current_schema()::regnamespace
"""

#: CHECK constraints an earlier `db init` created and the agent no longer wants, by
#: (table, name): the expression as PostgreSQL shows it, and why it goes. Dropped by
#: `db init` only when name and expression both match (a backend's own constraint, even on
#: the same column, is reported and left alone).
STALE_CHECKS: dict[tuple[str, str], tuple[str, str]] = {
    ("release_artifact", "release_artifact_chart_type_check"): (
        "(chart_type = ANY (ARRAY['helm'::text, 'compose'::text]))",
        "it pins release types to helm and compose; the installed deployers declare them now",
    ),
}

_CHECKS_ON = """
SELECT k.conname AS name, pg_get_expr(k.conbin, k.conrelid) AS expression
FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (k.conkey)
WHERE k.contype = 'c' AND c.relnamespace = current_schema()::regnamespace
  AND c.relname = $1 AND a.attname = $2
ORDER BY k.conname
"""

EXPECTED_TRIGGERS: dict[str, tuple[str, str]] = {
    "agent_task_notify": ("agent_task", "immediate wake-up on new tasks (LISTEN/NOTIFY)"),
}

NOTIFY_CHANNEL = "wrktalk_agent_task"
_INIT_LOCK = 0x77726B74  # advisory lock key: concurrent `db init` runs take turns


def schema_sql() -> str:
    return resources.files("wrktalk_agent.db").joinpath("schema.sql").read_text("utf-8")


async def check_schema(conn: asyncpg.Connection) -> list[str]:
    """Plain-words list of what the database lacks; empty when complete."""
    problems: list[str] = []
    rows = await conn.fetch(
        # pg_attribute, not information_schema.columns: the latter hides the columns of a
        # table the role has no privilege on, and a missing GRANT is not a missing table
        """SELECT c.relname AS table_name, a.attname AS column_name
           FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
           WHERE c.relnamespace = current_schema()::regnamespace
             AND c.relname = ANY($1::text[]) AND a.attnum > 0 AND NOT a.attisdropped""",
        list(EXPECTED_COLUMNS),
    )
    present: dict[str, set[str]] = {}
    for row in rows:
        present.setdefault(row["table_name"], set()).add(row["column_name"])
    for table, columns in EXPECTED_COLUMNS.items():
        if table not in present:
            problems.append(f"table {table} is missing")
            continue
        for column in columns:
            if column not in present[table]:
                problems.append(f"column {table}.{column} is missing")
    index_rows = await conn.fetch(
        "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
    )
    indexes = {r["indexname"] for r in index_rows}
    for name, purpose in EXPECTED_INDEXES.items():
        if name not in indexes:
            problems.append(f"index {name} ({purpose}) is missing")
    if (
        "deployment_config" in present
        and await conn.fetchval("SELECT has_table_privilege('deployment_config', 'SELECT')")
        and not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM deployment_config)")
    ):
        problems.append(
            "table deployment_config has no row (maintenance state and agent polls "
            "cannot be recorded)"
        )
    trigger_rows = await conn.fetch(
        """SELECT t.tgname, c.relname FROM pg_trigger t
           JOIN pg_class c ON c.oid = t.tgrelid
           WHERE NOT t.tgisinternal AND c.relnamespace = current_schema()::regnamespace"""
    )
    triggers = {(r["tgname"], r["relname"]) for r in trigger_rows}
    for name, (table, purpose) in EXPECTED_TRIGGERS.items():
        if (name, table) not in triggers:
            problems.append(f"trigger {name} on {table} ({purpose}) is missing")
    return problems


async def missing_constraints(conn: asyncpg.Connection) -> list[str]:
    """The CHECK constraints a backend-owned schema lacks, in plain words. Not part of
    :func:`check_schema`: the agent runs without them (it fails a row it cannot process),
    so only `db check` reports them and `db init` adds them."""
    return [
        f"check constraint on {table}.{column} ({purpose}: {condition}) is missing"
        for table, column, condition, purpose in await _missing_checks(
            conn, await _present_columns(conn)
        )
    ]


async def stale_constraints(conn: asyncpg.Connection) -> list[str]:
    """The constraints of :data:`STALE_CHECKS` present, in plain words (`db init` drops
    them)."""
    return [
        f"check constraint {name} on {table} ({expression}) is from an earlier `db init`: {why}"
        for table, name, expression, why in await _stale_checks(conn)
    ]


async def _stale_checks(conn: asyncpg.Connection) -> list[tuple[str, str, str, str]]:
    found = []
    for (table, name), (expression, why) in STALE_CHECKS.items():
        row = await conn.fetchrow(
            """SELECT pg_get_expr(k.conbin, k.conrelid) AS expression FROM pg_constraint k
               JOIN pg_class c ON c.oid = k.conrelid
               WHERE k.contype = 'c' AND k.conname = $2 AND c.relname = $1
                 AND c.relnamespace = current_schema()::regnamespace""",
            table,
            name,
        )
        if row is not None and row["expression"] == expression:
            found.append((table, name, expression, why))
    return found


async def release_type_constraints(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    """(name, expression) of each CHECK constraint on ``release_artifact.chart_type`` that
    is not a stale one of the agent's: a backend's own rule on release types, which the
    agent reports (`check`, `db check`) and never changes."""
    stale = {name for _, name, _, _ in await _stale_checks(conn)}
    return [
        (r["name"], r["expression"])
        for r in await conn.fetch(_CHECKS_ON, "release_artifact", "chart_type")
        if r["name"] not in stale
    ]


async def _present_columns(conn: asyncpg.Connection) -> dict[str, set[str]]:
    present: dict[str, set[str]] = {}
    for row in await conn.fetch(
        """SELECT table_name, column_name FROM information_schema.columns
           WHERE table_schema = current_schema()"""
    ):
        present.setdefault(row["table_name"], set()).add(row["column_name"])
    return present


async def _missing_checks(
    conn: asyncpg.Connection, present: dict[str, set[str]]
) -> list[tuple[str, str, str, str]]:
    """(table, column, condition, purpose) of each expected CHECK constraint that no
    constraint on that column provides (the name does not matter: a backend names its own)."""
    checked = {(r["table_name"], r["column_name"]) for r in await conn.fetch(_CHECKED_COLUMNS)}
    return [
        (table, column, condition, purpose)
        for (table, column), (condition, purpose) in EXPECTED_CHECKS.items()
        if column in present.get(table, set()) and (table, column) not in checked
    ]


async def init_schema(conn: asyncpg.Connection) -> list[str]:
    """Apply the schema; return what was missing before (empty: nothing was changed)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _INIT_LOCK)
        missing = (
            await check_schema(conn)
            + await missing_constraints(conn)
            + await stale_constraints(conn)
        )
        if missing:
            await conn.execute(schema_sql())
            await _add_checks(conn)
            await _drop_stale_checks(conn)
    return missing


async def _drop_stale_checks(conn: asyncpg.Connection) -> None:
    for table, name, _, _ in await _stale_checks(conn):
        # identifiers come from STALE_CHECKS above, never from input
        await conn.execute(f'ALTER TABLE {table} DROP CONSTRAINT IF EXISTS "{name}"')


async def _add_checks(conn: asyncpg.Connection) -> None:
    """CHECK constraints a pre-existing table lacks (CREATE TABLE IF NOT EXISTS skipped it).
    NOT VALID: rows already there are not checked, so a bad old row cannot block `db init`."""
    present = await _present_columns(conn)
    for table, column, condition, _ in await _missing_checks(conn, present):
        # identifiers come from EXPECTED_CHECKS above, never from input
        await conn.execute(
            f'ALTER TABLE {table} ADD CONSTRAINT "{table}_{column}_check" '
            f"CHECK ({condition}) NOT VALID"
        )
