"""PostgreSQL as customers run it: host lists, a standby in the list, a failover in the
middle of a deploy, and PgBouncer in transaction pooling mode. Real PG 15 servers and a
real PgBouncer on loopback, started by the tests (see ``test_ha_servers.py``)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the harness module next to this file

from agent_helpers import Recording, agent_env, blocking_release
from test_ha_servers import (
    PgBouncer,
    PgNode,
    create_wrktalk_database,
    init_primary,
    needs_pg_bin,
    needs_pgbouncer,
    primary_and_replica,
    wait_replayed,
)

from wrktalk_agent.artifacts import fetch_artifact
from wrktalk_agent.config import AgentSettings
from wrktalk_agent.db.repository import (
    CONNECTION_ERRORS,
    DatabaseUnavailable,
    ListenUnavailable,
    Repository,
    connect_listener,
    listen_dsn,
    pooler_mode,
)
from wrktalk_agent.pipeline import DB_ERRORS
from wrktalk_agent.testing import add_release, free_port
from wrktalk_agent.tui.data import DashboardSource, Filters

pytestmark = [needs_pg_bin, pytest.mark.timeout(300)]


def settings_for(hosts: list[str], work: Path, **extra: Any) -> AgentSettings:
    return AgentSettings(
        db_host=",".join(hosts),
        db_name="wrktalk",
        db_user="postgres",
        db_ssl_mode="disable",
        work_dir=work,
        db_pool_min_size=1,
        db_pool_max_size=3,
        **extra,
    )


async def server_port(repo: Repository) -> int:
    return int(await repo.pool.fetchval("SELECT inet_server_port()"))


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[PgNode, PgNode]]:
    """A primary and a streaming replica shared by the tests that do not change roles."""
    with primary_and_replica() as nodes:
        yield nodes


@pytest.fixture
async def repo_on(tmp_path: Path) -> AsyncIterator[Any]:
    repos: list[Repository] = []

    async def connect(settings: AgentSettings, **kwargs: Any) -> Repository:
        repo = await Repository.connect(settings, timeout=10, **kwargs)
        repos.append(repo)
        return repo

    yield connect
    for repo in repos:
        await repo.close()


# -- host lists --------------------------------------------------------------------------
async def test_a_host_list_whose_first_host_is_down_uses_the_next(pair, repo_on, tmp_path):
    primary, _ = pair
    down = f"127.0.0.1:{free_port()}"  # nothing listens there
    settings = settings_for([down, primary.hostport], tmp_path)

    repo = await repo_on(settings)

    assert await server_port(repo) == primary.port
    release = await add_release(repo, "host-list-1")  # a write: we are on the primary
    assert (await repo.release_by_version("host-list-1")).id == release.id
    assert settings.server_label() == f"{down},{primary.hostport}"


async def test_a_host_list_whose_first_host_is_a_standby_lands_on_the_primary(
    pair, repo_on, tmp_path
):
    primary, replica = pair
    for attrs in ("read-write", "primary"):
        settings = settings_for(
            [replica.hostport, primary.hostport], tmp_path, db_target_session_attrs=attrs
        )
        repo = await repo_on(settings)
        assert await server_port(repo) == primary.port
        await add_release(repo, f"after-standby-{attrs}")


async def test_a_list_of_standbys_only_is_one_clear_line(pair, tmp_path):
    _, replica = pair
    settings = settings_for([replica.hostport], tmp_path)
    with pytest.raises(DatabaseUnavailable) as caught:
        await Repository.connect(settings, timeout=10)
    assert str(caught.value) == (
        f"no server at {replica.hostport} is read-write (all standbys? a failover under way?)"
    )


async def test_the_dashboard_reads_from_a_standby_when_told_and_listens_on_the_primary(
    pair, tmp_path
):
    primary, replica = pair
    settings = settings_for(
        [primary.hostport, replica.hostport], tmp_path, tui_target_session_attrs="prefer-standby"
    )
    source = DashboardSource(settings)
    try:
        await source.snapshot(Filters())
        async with source._repository() as repo:
            assert await server_port(repo) == replica.port
    finally:
        await source.close()
    listener = await connect_listener(settings)
    try:
        assert await listener.fetchval("SELECT inet_server_port()") == primary.port
    finally:
        await listener.close()


async def test_a_write_on_a_read_only_server_is_an_outage_and_retires_the_connection(
    pair, repo_on, tmp_path
):
    primary, replica = pair
    # "any" is the way to land on a standby on purpose: what a demoted primary looks like
    url = f"postgresql://postgres@{replica.hostport},{primary.hostport}/wrktalk"
    repo = await repo_on(
        AgentSettings(database_url=url + "?target_session_attrs=any", work_dir=tmp_path)
    )
    watcher = await asyncpg.connect(replica.url("postgres"))

    async def gone(pid: int) -> None:
        for _ in range(200):
            if not await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid
            ):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"backend {pid} still there: the connection was not retired")

    try:
        insert = "INSERT INTO admin (name, email) VALUES ($1, $2) RETURNING id"
        async with repo.pool.acquire() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError) as caught:
                await conn.fetchval(insert, "Ada", "ada@example.com")
        assert isinstance(caught.value, CONNECTION_ERRORS) and isinstance(caught.value, DB_ERRORS)
        await gone(pid)

        # inside a transaction (the outcome write): rolled back, then dropped by the pool
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            async with repo.pool.acquire() as conn, conn.transaction():
                pid = await conn.fetchval("SELECT pg_backend_pid()")
                await conn.fetchval(insert, "Ada", "ada@example.com")
        await gone(pid)
        assert await repo.pool.fetchval("SELECT 1") == 1  # the pool opened a new one
    finally:
        await watcher.close()


# -- a failover in the middle of a deploy ---------------------------------------------------
def _failover_env(settings: AgentSettings, recording: Recording, **extra: str) -> dict[str, str]:
    env = agent_env(settings, recording, WRKTALK_AGENT_NOTIFIERS="", **extra)
    del env["WRKTALK_AGENT_DATABASE_URL"]  # the host list comes from DB_HOST
    env.update(
        {
            "WRKTALK_AGENT_DB_HOST": settings.db_host,
            "WRKTALK_AGENT_DB_NAME": "wrktalk",
            "WRKTALK_AGENT_DB_USER": "postgres",
            "WRKTALK_AGENT_DB_SSL_MODE": "disable",
        }
    )
    return env


@pytest.fixture
def recording(tmp_path: Path) -> Recording:
    return Recording.in_dir(tmp_path)


async def _wait_for(predicate: Any, timeout: float, what: str, proc: Any = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the agent exited ({proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.1)


async def test_a_failover_during_a_deploy_loses_nothing(recording, spawn_agent, tmp_path):
    primary = init_primary()
    replica = None
    try:
        await create_wrktalk_database(primary)
        replica = await asyncio.to_thread(_replica_of, primary)
        hosts = [primary.hostport, replica.hostport]
        settings = settings_for(hosts, tmp_path / "work", poll_interval=0.5)
        setup = await Repository.connect(settings)
        release, started, go = await blocking_release(setup, tmp_path)
        first = await setup.create_task("deploy", release.id)
        await setup.close()
        proc = spawn_agent(
            _failover_env(
                settings,
                recording,
                WRKTALK_AGENT_HEARTBEAT_INTERVAL="1",
                # above the failover's few seconds (docs/operator.md: HA PostgreSQL); the
                # new primary then starts nothing for this lease and its margin (35 s)
                WRKTALK_AGENT_STALE_AFTER="30",
            )
        )
        await _wait_for(lambda: asyncio.sleep(0, started.exists()), 60, "deploy start", proc)
        await asyncio.to_thread(wait_replayed_sync, primary, replica)

        primary.stop("fast")  # every WAL record is sent to the replica before it stops
        go.touch()  # the deploy finishes while there is no primary at all:
        await asyncio.sleep(3)  # its timeline entries and outcome wait (retried)
        replica.promote()

        repo = await Repository.connect(settings_for([replica.hostport], tmp_path / "w2"))
        try:

            async def finished() -> Any:
                task = await repo.get_task(first.id)
                return task if task and task.status in ("completed", "failed") else None

            task = await _wait_for(finished, 120, "the outcome on the new primary", proc)
            assert task.status == "completed", task.error_message
            steps = [(e.step, e.status) for e in await repo.task_events(first.id)]
            assert ("deploy", "succeeded") in steps, steps
            assert (await repo.current_release()).id == release.id

            second = await repo.create_task("deploy", (await add_release(repo, "2.0.0")).id)

            async def second_done() -> bool:
                task = await repo.get_task(second.id)
                return task is not None and task.status == "completed"

            await _wait_for(second_done, 120, "the next task on the new primary", proc)
        finally:
            await repo.close()
        starts, ends = recording.records("start"), recording.records("end")
        assert [r["task"] for r in starts] == [str(first.id), str(second.id)]  # once each
        assert len(ends) == 2 and ends[0]["end"] <= ends[1]["start"], "two deploys overlapped"
    finally:
        if replica is not None:
            replica.destroy()
        primary.destroy()


def _replica_of(primary: PgNode) -> PgNode:
    from test_ha_servers import add_replica

    return add_replica(primary)


def wait_replayed_sync(primary: PgNode, replica: PgNode) -> None:
    asyncio.run(wait_replayed(primary, replica))


# -- PgBouncer in transaction pooling mode ------------------------------------------------
@pytest.fixture
def bouncer() -> Iterator[tuple[PgNode, PgBouncer]]:
    primary = init_primary("bounced")
    pool = PgBouncer(primary)
    try:
        asyncio.run(create_wrktalk_database(primary))
        pool.start()
        yield primary, pool
    finally:
        pool.stop()
        primary.destroy()


def _private(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True)
    return path


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wrktalk_agent.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def _fifty_tasks_through(
    primary: PgNode, pool: PgBouncer, recording: Recording, spawn_agent: Any, tmp_path: Path,
    **extra: str,
) -> tuple[dict[str, str], Any]:  # fmt: skip
    settings = AgentSettings(
        database_url=pool.url(), db_pooler="pgbouncer", work_dir=tmp_path / "work"
    )
    repo = await Repository.connect(settings)
    try:
        release = await add_release(repo, "1.0.0")
        env = agent_env(
            settings,
            recording,
            WRKTALK_AGENT_NOTIFIERS="",
            WRKTALK_AGENT_DB_POOLER="pgbouncer",
            **extra,
        )
        proc = spawn_agent(env)
        for _ in range(50):
            await repo.create_task("deploy", release.id)

        async def all_done() -> bool:
            rows = await repo.pool.fetch("SELECT status, count(*) FROM agent_task GROUP BY 1")
            return {r["status"]: r["count"] for r in rows} == {"completed": 50}

        await _wait_for(all_done, 180, "50 tasks through PgBouncer", proc)
    finally:
        await repo.close()
    starts = recording.records("start")
    assert len(starts) == 50 and len({r["task"] for r in starts}) == 50
    spans = sorted((r["start"], r["end"]) for r in recording.records("end"))
    for (_, end), (next_start, _) in itertools.pairwise(spans):
        assert next_start >= end, "two deploys overlapped"
    return env, proc


@needs_pgbouncer
async def test_through_pgbouncer_the_agent_cli_and_dashboard_work_polling_only(
    bouncer, recording, spawn_agent, tmp_path
):
    primary, pool = bouncer
    env, _ = await _fifty_tasks_through(
        primary, pool, recording, spawn_agent, tmp_path, WRKTALK_AGENT_POLL_INTERVAL="0.3"
    )

    listed = _cli(env, "task", "list", "--status", "completed", "--json")
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 50
    check = _cli({**env, "WRKTALK_AGENT_DEPLOYER": "script"}, "check")
    assert "through PgBouncer" in check.stdout and "polling only" in check.stdout, check.stdout

    settings = AgentSettings(database_url=pool.url(), db_pooler="pgbouncer", work_dir=tmp_path)
    assert listen_dsn(settings) is None
    source = DashboardSource(settings)
    states: list[str | None] = []
    listening = asyncio.create_task(source.listen(lambda: None, states.append))
    try:
        snapshot = await source.snapshot(Filters(status="completed"))
        assert len(snapshot.tasks) == 50
        await _wait_for(lambda: asyncio.sleep(0, bool(states)), 30, "listener state")
        assert states[0] is not None and "LISTEN cannot work through the pooler" in states[0]
    finally:
        listening.cancel()
        await source.close()
    with pytest.raises(ListenUnavailable):
        await connect_listener(settings)


@needs_pgbouncer
async def test_through_pgbouncer_with_a_direct_listen_connection(
    bouncer, recording, spawn_agent, tmp_path
):
    primary, pool = bouncer
    direct = primary.url()
    settings = AgentSettings(
        database_url=pool.url(), db_pooler="pgbouncer", listen_database_url=direct,
        work_dir=tmp_path,
    )  # fmt: skip
    assert listen_dsn(settings) == direct
    assert f"LISTEN over a direct connection to {primary.hostport}" in pooler_mode(settings)
    await _fifty_tasks_through(
        primary, pool, recording, spawn_agent, tmp_path,
        WRKTALK_AGENT_POLL_INTERVAL="2", WRKTALK_AGENT_LISTEN_DATABASE_URL=direct,
    )  # fmt: skip

    # the dashboard's live updates go over the direct connection and see NOTIFYs
    source = DashboardSource(settings)
    changes: list[int] = []
    states: list[str | None] = []
    listening = asyncio.create_task(source.listen(lambda: changes.append(1), states.append))
    try:
        await _wait_for(lambda: asyncio.sleep(0, states[-1:] == [None]), 30, "listening")
        before = len(changes)
        repo = await Repository.connect(settings)
        try:
            await repo.create_task("rollback", None)
        finally:
            await repo.close()
        await _wait_for(lambda: asyncio.sleep(0, len(changes) > before), 30, "a NOTIFY")
    finally:
        listening.cancel()
        await source.close()


@needs_pgbouncer
async def test_the_agent_listens_over_the_direct_connection_not_the_pooler(
    bouncer, recording, spawn_agent, tmp_path
):
    primary, pool = bouncer
    settings = AgentSettings(database_url=pool.url(), db_pooler="pgbouncer", work_dir=tmp_path)
    env = agent_env(
        settings, recording, WRKTALK_AGENT_NOTIFIERS="", WRKTALK_AGENT_DB_POOLER="pgbouncer",
        WRKTALK_AGENT_LISTEN_DATABASE_URL=primary.url(),
    )  # fmt: skip
    proc = spawn_agent(env)
    watcher = await asyncpg.connect(primary.url("postgres"))
    try:
        # PgBouncer reaches the server over its unix socket: a TCP client is a direct one
        sql = (
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%' "
            "AND client_addr IS NOT NULL"
        )
        await _wait_for(lambda: watcher.fetchval(sql), 30, "a direct LISTEN connection", proc)
    finally:
        await watcher.close()


@needs_pgbouncer
async def test_pooler_connections_share_few_server_connections_without_mixing_statements(
    bouncer, tmp_path
):
    """Many clients, one server connection: each statement keeps its own parameters."""
    _, pool = bouncer
    settings = AgentSettings(
        database_url=pool.url(), db_pooler="pgbouncer", work_dir=tmp_path,
        db_pool_min_size=10, db_pool_max_size=10,
    )  # fmt: skip
    repo = await Repository.connect(settings)
    try:
        release = await add_release(repo, "big", data=os.urandom(3 * 1024 * 1024))

        async def one(i: int) -> None:
            if i % 3 == 0:
                assert await repo.pool.fetchval("SELECT $1::int + $2::int", i, 1) == i + 1
            elif i % 3 == 1:
                assert await repo.pool.fetchval("SELECT $1::text", str(i)) == str(i)
            elif i % 30 == 2:  # a prepared statement in a transaction, several chunks
                fetched = await fetch_artifact(
                    repo, release, _private(tmp_path / f"a{i}"), max_bytes=10**8
                )
                assert fetched.sha256 == release.sha256
            else:
                assert (await repo.release_by_id(release.id)).release_version == "big"

        await asyncio.gather(*(one(i) for i in range(300)))
    finally:
        await repo.close()


# -- a claim lost with an async standby ------------------------------------------------------
async def _stop_streaming(replica: PgNode) -> None:
    """Cut the replica off its primary (as a lagging async standby would be): what the
    primary commits from now on never reaches it."""
    conn = await asyncpg.connect(replica.url("postgres"))
    try:
        await conn.execute("ALTER SYSTEM SET primary_conninfo = ''")
        await conn.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 30
        while await conn.fetchval("SELECT count(*) FROM pg_stat_wal_receiver"):
            assert time.monotonic() < deadline, "the replica kept streaming"
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def test_a_claim_lost_in_a_failover_is_recovered_not_run_again(
    recording, spawn_agent, tmp_path
):
    """The owner's claim is committed on the primary but never reaches the standby that is
    then promoted. On the new primary the task is pending again: no other agent may start
    it while the owner can still be deploying (the failover's quiet period), and the owner,
    finding its claim gone, stops its deploy and takes the task back for recovery."""
    primary = init_primary()
    replica = None
    try:
        await create_wrktalk_database(primary)
        replica = await asyncio.to_thread(_replica_of, primary)
        hosts = [primary.hostport, replica.hostport]
        settings = settings_for(hosts, tmp_path / "work", poll_interval=0.5)
        setup = await Repository.connect(settings)
        release = await add_release(setup, "1.0.0", {"behaviour.json": json.dumps({"child": 30})})
        due = await setup.pool.fetchval("SELECT now() + interval '4 seconds'")
        task = await setup.create_task("deploy", release.id, execute_after=due)
        await setup.close()
        await asyncio.to_thread(wait_replayed_sync, primary, replica)
        await _stop_streaming(replica)  # the claim, made at the due time, stays on the primary
        timing = {"WRKTALK_AGENT_HEARTBEAT_INTERVAL": "0.5", "WRKTALK_AGENT_STALE_AFTER": "4",
                  "WRKTALK_AGENT_STALE_MARGIN": "2"}  # fmt: skip
        env = _failover_env(settings, recording, **timing)
        owner = spawn_agent({**env, "WRKTALK_AGENT_AGENT_ID": "owner"})

        async def deploying() -> bool:
            return any(r["task"] == str(task.id) for r in recording.records("child-start"))

        await _wait_for(deploying, 60, "the owner's deploy", owner)
        primary.stop("immediate")
        replica.promote()
        other = spawn_agent({**env, "WRKTALK_AGENT_AGENT_ID": "other"})
        repo = await Repository.connect(settings_for([replica.hostport], tmp_path / "w2"))
        try:

            async def ended() -> Any:
                found = await repo.get_task(task.id)
                return found if found and found.status in ("completed", "failed") else None

            lost = await _wait_for(ended, 90, "the lost claim's recovery", owner)
            assert lost.claimed_by == "owner" and lost.recovery
            assert "was lost in a database failover" in (lost.error_message or "")
            starts = [r for r in recording.records("child-start") if r["task"] == str(task.id)]
            assert len(starts) == 1, "the task ran a second time"
            samples = [r["at"] for r in recording.records("sample") if r["task"] == str(task.id)]
            recovered = [e for e in await repo.task_events(task.id) if e.step == "recovery"]
            assert recovered and max(samples) < recovered[0].created_at.timestamp()
            # the queue flows on the new primary once the quiet period is over
            nxt = await add_release(repo, "2.0.0", {"behaviour.json": json.dumps({"child": 0.2})})
            second = await repo.create_task("deploy", nxt.id)

            async def second_done() -> bool:
                found = await repo.get_task(second.id)
                return found is not None and found.status == "completed"

            await _wait_for(second_done, 60, "the next task on the new primary")
        finally:
            await repo.close()
        assert "failover.quiet" in Path(other.log_path).read_text()
        for proc in (owner, other):
            proc.terminate()
        for proc in (owner, other):
            assert proc.wait(30) == 0
    finally:
        if replica is not None:
            replica.destroy()
        primary.destroy()
