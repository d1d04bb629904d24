"""The dashboard's queries and its data source, against a real database."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from wrktalk_agent.config import AgentSettings
from wrktalk_agent.db import queries as q
from wrktalk_agent.db.repository import Repository
from wrktalk_agent.testing import add_release
from wrktalk_agent.tui.data import ActionRefused, DashboardSource, Filters, SourceUnavailable

DASHBOARD_QUERIES = {
    **{name: sql for name, sql in vars(q).items() if name.startswith("DASHBOARD_")},
    **{f"tasks {status}": sql for status, sql in q.DASHBOARD_TASKS_BY_STATUS.items()},
}


def test_dashboard_queries_never_read_secrets_or_artifact_bytes() -> None:
    assert len(DASHBOARD_QUERIES) >= 10
    for name, sql in DASHBOARD_QUERIES.items():
        if isinstance(sql, dict):
            continue  # its statements are listed one by one
        # octet_length reads the size from the TOAST pointer, not the bytes
        sql = sql.replace("octet_length(a.artifact_data)", "")
        for column in ("artifact_data", "env_data", "values_data", "smtp_password", "smtp_user"):
            assert not re.search(rf"\b{column}\b", sql), f"{name} reads {column}"


async def test_releases_include_current_and_previous_beyond_the_limit(repo: Repository) -> None:
    releases = [await add_release(repo, f"1.{n}.0", data=b"x" * (n + 1)) for n in range(5)]
    for n, release in enumerate(releases):
        await repo.pool.execute(
            "UPDATE release_artifact SET created_at = $2 WHERE id = $1",
            release.id,
            datetime(2025, 1, 1 + n, tzinfo=UTC),
        )
    for change, release in (
        ("is_current = true", releases[0]),
        ("is_previous = true", releases[1]),
        ("signature = 'sig'", releases[4]),
    ):
        await repo.pool.execute(f"UPDATE release_artifact SET {change} WHERE id = $1", release.id)
    shown = await repo.dashboard_releases(limit=2)
    assert [(r.release_version, r.size, r.is_current, r.is_previous) for r in shown] == [
        ("1.4.0", 5, False, False),
        ("1.3.0", 4, False, False),
        ("1.1.0", 2, False, True),
        ("1.0.0", 1, True, False),
    ]
    assert shown[0].signature == "sig"


async def test_tasks_leave_out_the_result_and_cut_long_errors(repo: Repository) -> None:
    release = await add_release(repo, "1.0.0")
    done = await repo.create_task("deploy", release.id)
    await repo.pool.execute(
        """UPDATE agent_task SET status = 'failed', result = '{"deployer": {"output": "x"}}',
           error_message = $2 WHERE id = $1""",
        done.id,
        "e" * 1000,
    )
    pending = await repo.create_task("rollback", None)
    [failed] = await repo.dashboard_tasks(status="failed")
    assert failed.result is None and failed.error_message == "e" * 300
    assert failed.release_version == "1.0.0"
    assert [t.id for t in await repo.dashboard_tasks()] == [pending.id, done.id]
    assert [t.id for t in await repo.dashboard_tasks(task_type="rollback")] == [pending.id]
    assert await repo.dashboard_tasks(status="pending", task_type="deploy") == []


async def test_running_tasks_come_with_their_latest_event(repo: Repository) -> None:
    task = await repo.create_task("deploy", None)
    other = await repo.create_task("deploy", None)
    await repo.pool.execute("UPDATE agent_task SET status = 'inProgress' WHERE id = $1", task.id)
    await repo.add_event(other.id, "claim", "info")
    assert [(t.id, e) for t, e in await repo.dashboard_running()] == [(task.id, None)]
    await repo.add_event(task.id, "artifact", "started")
    await repo.add_event(task.id, "artifact", "succeeded", "ok")
    # the latest by id, even when clocks disagree
    await repo.pool.execute("UPDATE agent_task_event SET created_at = now() - interval '1 day'")
    [(running, event)] = await repo.dashboard_running()
    assert running.id == task.id and event is not None
    assert (event.step, event.status, event.message) == ("artifact", "succeeded", "ok")


async def test_agents_seen_recently_or_running_a_task(repo: Repository) -> None:
    task = await repo.create_task("deploy", None)
    await repo.pool.execute(
        "UPDATE agent_task SET status = 'inProgress', last_heartbeat = now() WHERE id = $1",
        task.id,
    )
    await repo.pool.execute(
        """INSERT INTO agent_instance (agent_id, hostname, pid, version, last_poll, current_task_id)
           VALUES ('fresh', 'h', 1, 'v', now(), NULL),
                  ('gone', 'h', 2, 'v', now() - interval '3 days', NULL),
                  ('busy', 'h', 3, 'v', now() - interval '3 days', $1)""",
        task.id,
    )
    since = datetime.now(UTC) - timedelta(hours=24)
    agents = await repo.dashboard_agents(since)
    assert [a.agent_id for a in agents] == ["fresh", "busy"]
    assert agents[1].last_heartbeat is not None


async def test_source_refuses_a_rollback_when_the_previous_release_changed(
    repo: Repository, agent_settings: AgentSettings
) -> None:
    old = await add_release(repo, "1.0.0")
    await repo.pool.execute("UPDATE release_artifact SET is_previous = true WHERE id = $1", old.id)
    source = DashboardSource(agent_settings)
    try:
        snapshot = await source.snapshot(Filters())
        assert snapshot.installation.previous_id == old.id
        await repo.pool.execute("UPDATE release_artifact SET is_previous = false")
        with pytest.raises(ActionRefused, match="previous release changed"):
            await source.request_rollback(old.id)
        assert await repo.dashboard_tasks() == []
    finally:
        await source.close()


async def test_source_reports_an_unreachable_database_without_the_password(
    unused_tcp_port: int,
) -> None:
    source = DashboardSource(
        AgentSettings(database_url=f"postgresql://app:s3cr3t@127.0.0.1:{unused_tcp_port}/x")  # type: ignore[arg-type]
    )
    with pytest.raises(SourceUnavailable) as caught:
        await source.snapshot(Filters())
    assert f"127.0.0.1:{unused_tcp_port}" in str(caught.value)
    assert "s3cr3t" not in str(caught.value)
    await source.close()


async def test_source_survives_its_connections_being_killed(
    repo: Repository, agent_settings: AgentSettings
) -> None:
    source = DashboardSource(agent_settings)
    try:
        await source.snapshot(Filters())
        await repo.pool.execute(
            """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
               WHERE datname = current_database() AND pid <> pg_backend_pid()"""
        )
        try:
            await source.snapshot(Filters())
        except SourceUnavailable:
            pass  # the pool's dead connection: reported once, then retired
        snapshot = await source.snapshot(Filters())
        assert snapshot.tasks == []
    finally:
        await source.close()


async def test_source_reports_a_schema_error_instead_of_raising_it(
    repo: Repository, agent_settings: AgentSettings
) -> None:
    await repo.pool.execute("ALTER TABLE agent_task RENAME COLUMN claimed_by TO claimed_by_x")
    source = DashboardSource(agent_settings)
    try:
        with pytest.raises(SourceUnavailable, match="claimed_by"):
            await source.snapshot(Filters())
    finally:
        await source.close()
