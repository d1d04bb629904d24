"""The daemon under concurrency and failure: real `wrktalk-agent run` processes."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from agent_helpers import agent_env, blocking_release, wait_until

from wrktalk_agent.testing import add_release


async def _status_counts(repo) -> dict[str, int]:
    rows = await repo.pool.fetch("SELECT status, count(*) FROM agent_task GROUP BY status")
    return {r["status"]: r["count"] for r in rows}


async def test_four_agents_two_hundred_tasks_exactly_once_one_at_a_time(
    recording_settings, recording, repo, spawn_agent
):
    release = await add_release(repo, "1.0.0")
    await repo.pool.executemany(
        "INSERT INTO agent_task (type, release_artifact_id) VALUES ('deploy', $1)",
        [(release.id,)] * 200,
    )
    env = agent_env(recording_settings, recording, WRKTALK_AGENT_NOTIFIERS="")
    agents = [spawn_agent({**env, "WRKTALK_AGENT_AGENT_ID": f"agent-{i}"}) for i in range(4)]

    async def all_done() -> bool:
        counts = await _status_counts(repo)
        return counts.get("completed", 0) == 200

    deadline = time.monotonic() + 240
    while not await all_done():
        assert time.monotonic() < deadline, await _status_counts(repo)
        assert all(a.poll() is None for a in agents), "an agent died"
        await asyncio.sleep(0.2)
    for proc in agents:
        proc.send_signal(signal.SIGTERM)
    for proc in agents:
        assert proc.wait(30) == 0

    starts = recording.records("start")
    ends = recording.records("end")
    assert len(starts) == len(ends) == 200
    assert len({r["task"] for r in starts}) == 200  # every task ran exactly once
    spans = sorted((r["start"], r["end"]) for r in ends)
    for (_, end), (next_start, _) in itertools.pairwise(spans):
        assert next_start >= end, "two deploys overlapped"
    claimed_by = await repo.pool.fetch("SELECT DISTINCT claimed_by FROM agent_task")
    assert len(claimed_by) >= 2  # the work really was shared
    assert await _status_counts(repo) == {"completed": 200}


async def test_kill_9_mid_task_is_abandoned_by_another_agent(
    recording_settings, recording, repo, spawn_agent, tmp_path
):
    release, started, _ = await blocking_release(repo, tmp_path)
    task = await repo.create_task("deploy", release.id)
    env = agent_env(recording_settings, recording, WRKTALK_AGENT_STALE_AFTER="2")
    victim = spawn_agent({**env, "WRKTALK_AGENT_AGENT_ID": "victim"})
    wait_until(started.exists, 30)
    assert recording.flag.exists()  # maintenance is on during the deploy
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    killed_at = time.monotonic()
    rescuer = spawn_agent({**env, "WRKTALK_AGENT_AGENT_ID": "rescuer"})

    async def abandoned():
        t = await repo.get_task(task.id)
        return t if t.status == "failed" else None

    while (found := await abandoned()) is None:
        assert time.monotonic() - killed_at < 2 + 1 + 10, "not abandoned in time"
        await asyncio.sleep(0.1)
    assert found.error_message.startswith("abandoned: agent victim stopped heartbeating at ")
    wait_until(lambda: not recording.flag.exists(), 5)
    assert await repo.maintenance_flag() is False
    wait_until(lambda: any(r["kind"] == "task_abandoned" for r in recording.records("notify")), 5)
    # never re-run automatically
    await asyncio.sleep(1.5)
    assert len(recording.records("start")) == 1
    rescuer.send_signal(signal.SIGTERM)
    assert rescuer.wait(20) == 0
    # `task show` names both agents, what was found live, the next step, dated times
    shown = subprocess.run(
        [sys.executable, "-m", "wrktalk_agent.cli", "task", "show", str(task.id)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0 and shown.stderr == "", shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == (
        f"deploy 1.0.0 failed (task {task.id}, ran on agent victim, recovered by rescuer)"
    )
    assert "live: absent (recording: nothing deployed yet)" in lines
    assert "next: deploy 1.0.0 again" in lines
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    claimed = next(line for line in lines if " claimed " in line)
    assert claimed.startswith(today), claimed


async def test_restart_with_same_id_recovers_own_leftover_once_its_lease_ran_out(
    recording_settings, recording, repo, make_agent
):
    release = await add_release(repo, "1.0.0")
    task = await repo.create_task("deploy", release.id)
    await repo.pool.execute(
        "UPDATE agent_task SET status='inProgress', claimed_by='test-agent', picked_up_at=now(),"
        " last_heartbeat=now(), lease_seconds=2 WHERE id=$1",
        task.id,
    )
    await repo.hold_maintenance(f"task:{task.id}", "deploy 1.0.0")
    recording.flag.write_text("left on")
    agent = await make_agent(recording_settings)
    # within the dead run's lease: nothing is touched (its deploy may still be stopping)
    assert await agent.run(once=True) == 0
    assert (await repo.get_task(task.id)).status == "inProgress"
    assert recording.flag.exists()
    await asyncio.sleep(2.2)
    assert await agent.run(once=True) == 0
    failed = await repo.get_task(task.id)
    assert failed.status == "failed"
    assert failed.error_message.startswith("abandoned: agent test-agent stopped heartbeating at ")
    assert "found nothing deployed" in failed.error_message
    assert failed.result["live"]["state"] == "absent"
    assert not recording.flag.exists()
    assert await repo.maintenance_flag() is False


async def test_recovery_records_a_deploy_that_finished_as_completed(
    recording_settings, recording, repo, make_agent
):
    """The agent died after its deploy had finished: the target runs the new release, so
    the database says so (the task completed, the release current), admins are told."""
    old = await add_release(repo, "1.0.0")
    new = await add_release(repo, "1.1.0")
    await repo.pool.execute("UPDATE release_artifact SET is_current = true WHERE id=$1", old.id)
    task = await repo.create_task("deploy", new.id)
    await repo.pool.execute(
        "UPDATE agent_task SET status='inProgress', claimed_by='gone', picked_up_at=now(),"
        " last_heartbeat=now() - interval '1 minute', lease_seconds=2 WHERE id=$1",
        task.id,
    )
    recording.live.write_text(json.dumps({"version": "1.1.0"}))
    agent = await make_agent(recording_settings)
    assert await agent.run(once=True) == 0
    done = await repo.get_task(task.id)
    assert done.status == "completed" and done.error_message is None
    assert done.result["abandoned"].startswith("abandoned: agent gone stopped heartbeating")
    assert (await repo.current_release()).release_version == "1.1.0"
    assert (await repo.previous_release()).release_version == "1.0.0"
    [mail] = recording.records("notify")
    assert mail["kind"] == "task_abandoned" and mail["outcome"] == "completed"
    assert mail["live"].startswith("1.1.0 live")


async def test_maintenance_left_by_an_ended_task_is_cleared_at_startup_others_kept(
    recording_settings, recording, repo, make_agent
):
    release = await add_release(repo, "1.0.0")
    task = await repo.create_task("deploy", release.id)
    await repo.pool.execute("UPDATE agent_task SET status='failed' WHERE id=$1", task.id)
    # 1: owned by a task that has ended (its switch-off failed): cleared
    await repo.hold_maintenance(f"task:{task.id}", "deploy 1.0.0")
    recording.flag.write_text("on")
    agent = await make_agent(recording_settings)
    assert await agent.run(once=True) == 0
    assert not recording.flag.exists()
    assert await repo.maintenance_flag() is False
    # 2: on at the proxy with no owner recorded (someone did it by hand): left alone
    recording.flag.write_text("by hand")
    assert await agent.run(once=True) == 0
    assert recording.flag.exists()
    # 3: an operator's window survives agent starts and deploys
    await repo.hold_maintenance("operator:alice", "db migration")
    await repo.create_task("deploy", release.id)
    assert await agent.run(once=True) == 0
    state = await repo.maintenance_state()
    assert state.enabled
    assert [(h.holder, h.reason) for h in state.holds] == [("operator:alice", "db migration")]
    assert recording.flag.exists()


async def test_sigterm_drains_then_second_sigterm_aborts(
    recording_settings, recording, repo, spawn_agent, tmp_path
):
    release, started, release_go = await blocking_release(repo, tmp_path)
    env = agent_env(recording_settings, recording, WRKTALK_AGENT_SHUTDOWN_GRACE="30")

    # 1: SIGTERM while deploying → the deploy finishes within the grace period, exit 0
    first = await repo.create_task("deploy", release.id)
    proc = spawn_agent(env)
    wait_until(started.exists, 30)
    proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    assert proc.poll() is None  # still draining
    release_go.touch()
    assert proc.wait(20) == 0
    assert (await repo.get_task(first.id)).status == "completed"

    # 2: a second SIGTERM aborts at once: the task fails, maintenance is cleared
    started.unlink()
    release_go.unlink()
    second = await repo.create_task("deploy", release.id)
    proc = spawn_agent(env)
    wait_until(started.exists, 30)
    proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    failed = await repo.get_task(second.id)
    assert failed.status == "failed"
    # what is live was asked before maintenance went off (1.0.0, from the first task)
    assert failed.error_message == "interrupted by shutdown; found 1.0.0 live (recording live file)"
    assert failed.result["live"]["version"] == "1.0.0"
    assert not recording.flag.exists()
    assert await repo.maintenance_flag() is False


async def test_grace_period_over_interrupts(
    recording_settings, recording, repo, spawn_agent, tmp_path
):
    release, started, _ = await blocking_release(repo, tmp_path)
    task = await repo.create_task("deploy", release.id)
    proc = spawn_agent(agent_env(recording_settings, recording, WRKTALK_AGENT_SHUTDOWN_GRACE="1"))
    wait_until(started.exists, 30)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    interrupted = await repo.get_task(task.id)
    assert interrupted.error_message == (
        "interrupted by shutdown; found nothing deployed (recording: nothing deployed yet); "
        "next: check the site, then deploy 1.0.0 again or roll back"
    )
    assert interrupted.result["next_step"] == "check the site, then deploy 1.0.0 again or roll back"


async def test_execute_after_is_honoured_and_early_notify_ignored(
    recording_settings, recording, repo, make_agent
):
    release = await add_release(repo, "1.0.0")
    agent = await make_agent(recording_settings.model_copy(update={"poll_interval": 30.0}))
    runner = asyncio.create_task(agent.run())
    await asyncio.wait_for(agent.listener_connected.wait(), 10)
    due = datetime.now(UTC) + timedelta(seconds=2)
    task = await repo.create_task("deploy", release.id, due)  # the insert NOTIFYs at once
    await asyncio.sleep(1.0)
    assert (await repo.get_task(task.id)).status == "pending"  # not run early
    while (await repo.get_task(task.id)).picked_up_at is None:
        await asyncio.sleep(0.02)
        assert datetime.now(UTC) < due + timedelta(seconds=5)
    picked = (await repo.get_task(task.id)).picked_up_at
    assert due <= picked <= due + timedelta(milliseconds=100)
    agent.request_stop("test")
    await asyncio.wait_for(runner, 20)


async def test_listener_killed_server_side_pickup_still_immediate(
    recording_settings, recording, repo, make_agent
):
    release = await add_release(repo, "1.0.0")
    agent = await make_agent(recording_settings.model_copy(update={"poll_interval": 60.0}))
    runner = asyncio.create_task(agent.run())
    await asyncio.wait_for(agent.listener_connected.wait(), 10)
    killed = await repo.pool.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
    )
    assert killed == 1
    await asyncio.sleep(0.2)
    await asyncio.wait_for(agent.listener_connected.wait(), 10)
    await asyncio.sleep(0.3)  # let the reconnect poll pass
    task = await repo.create_task("deploy", release.id)
    began = time.monotonic()
    while (await repo.get_task(task.id)).status != "completed":
        await asyncio.sleep(0.05)
        assert time.monotonic() - began < 5, "pickup waited for the 60 s poll"
    agent.request_stop("test")
    await asyncio.wait_for(runner, 20)


async def test_postgres_restart_mid_task_outcome_written(
    pg_server, recording_settings, recording, repo, make_agent, tmp_path
):
    if not pg_server.can_restart:
        pytest.skip("needs the embedded PostgreSQL (the test stops and starts the server)")
    release, started, go = await blocking_release(repo, tmp_path)
    task = await repo.create_task("deploy", release.id)
    agent = await make_agent(recording_settings)
    runner = asyncio.create_task(agent.run(once=True))
    while not started.exists():
        await asyncio.sleep(0.05)
    await asyncio.to_thread(pg_server.stop)
    go.touch()
    await asyncio.sleep(2.0)  # the deploy ends while the database is down
    assert not runner.done()
    await asyncio.to_thread(pg_server.start)
    assert await asyncio.wait_for(runner, 60) == 0
    conn = await asyncpg.connect(recording_settings.dsn())
    try:
        row = await conn.fetchrow("SELECT status FROM agent_task WHERE id=$1", task.id)
    finally:
        await conn.close()
    assert row["status"] == "completed"


async def test_http_endpoint_of_a_running_agent(recording_settings, recording, repo, spawn_agent):
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    task = await repo.create_task("deploy", (await add_release(repo, "1.0.0")).id)
    env = agent_env(
        recording_settings,
        recording,
        WRKTALK_AGENT_HTTP_PORT=str(port),
        WRKTALK_AGENT_HTTP_HOST="127.0.0.1",
    )
    proc = spawn_agent(env)

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except OSError:
            return 0, ""

    wait_until(lambda: get("/healthz")[0] == 200, 30)
    assert get("/readyz")[0] == 200
    while (await repo.get_task(task.id)).status != "completed":
        await asyncio.sleep(0.05)
    metrics = wait_until(lambda: (m := get("/metrics")[1]) and 'type="deploy"' in m and m, 10)
    assert 'wrktalk_agent_tasks_total{outcome="completed",type="deploy"} 1.0' in metrics
    assert "wrktalk_agent_last_successful_poll_timestamp_seconds" in metrics
    assert 'wrktalk_agent_info{agent_id="' in metrics
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


async def test_log_lines_are_json_bound_to_the_task_and_free_of_secrets(
    recording_settings, recording, repo, spawn_agent
):
    release = await add_release(repo, "1.0.0", env_data="API_TOKEN=hunter2\n")
    await repo.create_task("deploy", release.id)
    env = agent_env(recording_settings, recording)
    proc = spawn_agent(env, "--once")
    assert proc.wait(60) == 0
    lines = [json.loads(line) for line in open(proc.log_path).read().splitlines() if line]
    task_lines = [line for line in lines if line["event"].startswith("task.")]
    assert {"task.claimed", "task.finished"} <= {line["event"] for line in task_lines}
    for line in task_lines:
        assert line["task_id"] and line["type"] == "deploy" and line["plugin"] == "recording"
    assert any(line.get("version") == "1.0.0" for line in task_lines)
    text = open(proc.log_path).read()
    assert "hunter2" not in text
    assert "database" in {k for line in lines for k in line}
    started = next(line for line in lines if line["event"] == "agent.started")
    assert started["database"].startswith("postgresql://")


async def test_outcome_write_refused_by_the_database_still_ends_the_task(
    recording_settings, recording, repo, make_agent
):
    """A non-outage error on the final write (here a trigger refusing the flag change):
    the agent survives, maintenance is off, and the task still ends — failed, saying
    what the database refused — instead of blocking the queue."""
    await repo.pool.execute(
        """CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'flags are frozen'; END $$;
           CREATE TRIGGER frozen BEFORE UPDATE ON release_artifact
           FOR EACH ROW EXECUTE FUNCTION refuse();"""
    )
    task = await repo.create_task("deploy", (await add_release(repo, "1.0.0")).id)
    follow_up = await repo.create_task("deploy", (await add_release(repo, "1.1.0")).id)
    agent = await make_agent(recording_settings)
    assert await agent.run(once=True) == 1
    failed = await repo.get_task(task.id)
    assert failed.status == "failed"
    assert failed.error_message == (
        "the database refused the outcome (completed): RaiseError: flags are frozen"
    )
    assert not recording.flag.exists() and await repo.maintenance_flag() is False
    assert await agent.run(once=True) == 1  # the queue keeps flowing
    assert (await repo.get_task(follow_up.id)).status == "failed"


async def test_task_show_follow_waits_out_a_database_restart_in_one_line(
    pg_server, recording_settings, repo, tmp_path
):
    """`task show --follow` (a real process) through a PostgreSQL restart: one line on
    stderr saying it still follows, no traceback, then the outcome and exit 0."""
    if not pg_server.can_restart:
        pytest.skip("needs the embedded PostgreSQL (the test stops and starts the server)")
    task = await repo.create_task("deploy", (await add_release(repo, "1.0.0")).id)
    await repo.pool.execute(
        "UPDATE agent_task SET status = 'inProgress', claimed_by = 'a-1' WHERE id = $1", task.id
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRKTALK_AGENT_")}
    env.update(WRKTALK_AGENT_DATABASE_URL=recording_settings.dsn(), WRKTALK_AGENT_LOG_FORMAT="json")
    follower = subprocess.Popen(
        [sys.executable, "-m", "wrktalk_agent.cli", "task", "show", "--follow", str(task.id)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        await asyncio.sleep(2.0)
        assert follower.poll() is None
        await asyncio.to_thread(pg_server.stop)
        await asyncio.sleep(3.0)
        await asyncio.to_thread(pg_server.start)
        conn = await asyncpg.connect(recording_settings.dsn())
        try:
            await conn.execute(
                "UPDATE agent_task SET status = 'completed', completed_at = now() WHERE id = $1",
                task.id,
            )
        finally:
            await conn.close()
        out, err = await asyncio.to_thread(follower.communicate, timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, out + err
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("database unreachable, still following: "), err
    assert out.splitlines()[-1].startswith("deploy 1.0.0 completed")
