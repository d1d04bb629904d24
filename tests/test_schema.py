"""Schema: `db init` is idempotent and `db check` names what a database lacks."""

from __future__ import annotations

import asyncpg
import pytest

from wrktalk_agent.db.schema import check_schema, init_schema
from wrktalk_agent.testing import PgServer


@pytest.fixture
def empty_database(pg_server: PgServer):
    url = pg_server.create_database(migrated=False)
    yield url
    pg_server.drop_database(url)


async def test_init_twice_is_a_noop_the_second_time(empty_database: str) -> None:
    conn = await asyncpg.connect(empty_database)
    try:
        first = await init_schema(conn)
        assert "table agent_task is missing" in first
        assert await check_schema(conn) == []
        assert await init_schema(conn) == []
    finally:
        await conn.close()


async def test_check_names_missing_column_index_and_trigger(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("ALTER TABLE agent_task DROP COLUMN claimed_by")
        await conn.execute("DROP INDEX agent_task_pending")
        await conn.execute("DROP TRIGGER agent_task_notify ON agent_task")
        problems = await check_schema(conn)
        assert problems == [
            "column agent_task.claimed_by is missing",
            "index agent_task_pending (fast claims) is missing",
            "trigger agent_task_notify on agent_task "
            "(immediate wake-up on new tasks (LISTEN/NOTIFY)) is missing",
        ]
        assert await init_schema(conn) == problems
        assert await check_schema(conn) == []
    finally:
        await conn.close()


async def test_init_completes_a_backend_owned_database(empty_database: str) -> None:
    """The backend created its tables without the agent's additions."""
    conn = await asyncpg.connect(empty_database)
    try:
        await conn.execute(
            """CREATE TABLE release_artifact (id uuid PRIMARY KEY, release_version text,
                 chart_type text, artifact_data bytea, env_data text, values_data text,
                 sha256 text, is_current boolean DEFAULT false, is_previous boolean DEFAULT false,
                 applied_at timestamptz)"""
        )
        problems = await check_schema(conn)
        assert "column release_artifact.signature is missing" in problems
        assert "table release_artifact is missing" not in problems
        await init_schema(conn)
        assert await check_schema(conn) == []
    finally:
        await conn.close()
