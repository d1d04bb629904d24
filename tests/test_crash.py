"""Crash consistency with real processes, real signals and a real PostgreSQL.

Deploys run as child processes (``tests/support/child_deploy.py``: a child and a
grandchild in one process group) that sample the maintenance flag every 20 ms. From their
records the tests check the product's three promises: deploys never overlap, maintenance
is on in every sample of every running deploy, and ``current`` names what the target runs.
``WRKTALK_CHAOS_SCALE`` (default 1) multiplies the repetitions of the slow-link test (the
issue's 30 tries are scale 10). The chaos test, with freezes and cut links besides kill -9,
is in ``test_fencing.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from agent_helpers import (
    agent_env,
    assert_no_overlap,
    child_release,
    child_starts,
    samples_without_maintenance,
    wait_for_status,
    wait_until,
    work_dirs_of,
)

from wrktalk_agent.testing import add_release

SCALE = max(1, int(os.environ.get("WRKTALK_CHAOS_SCALE", "1")))
FAST = {"WRKTALK_AGENT_STALE_AFTER": "2"}  # heartbeat 0.5 s, margin 1 s: takeover after 3 s


# -- kill -9 -------------------------------------------------------------------------------
@pytest.mark.parametrize("successor", ["the same id restarted", "a standby agent"])
async def test_kill_9_mid_deploy_children_die_no_overlap_truth_recorded(
    successor, recording_settings, recording, repo, spawn_agent
):
    first = await child_release(repo, "1.0.0", 30, env_data="SECRET_TOKEN=s3cr3t-value\n")
    second = await child_release(repo, "2.0.0", 1)
    t1 = await repo.create_task("deploy", first.id)
    t2 = await repo.create_task("deploy", second.id)
    env = agent_env(recording_settings, recording, **FAST)
    victim = spawn_agent({**env, "WRKTALK_AGENT_AGENT_ID": "victim"})
    wait_until(lambda: child_starts(recording, str(t1.id)), 30)
    time.sleep(0.5)
    assert work_dirs_of(recording_settings, t1.id)  # the .env is on disk meanwhile
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    killed_at = time.time()
    name = "victim" if successor == "the same id restarted" else "standby"
    rescuer = spawn_agent({**env, "WRKTALK_AGENT_AGENT_ID": name})

    done = await wait_for_status(repo, t2.id, {"completed", "failed"}, 60)
    assert done.status == "completed"
    # the dead agent's deploy processes died with it (the janitor's grace is 1/3 s)
    late = [r for r in recording.records("sample") if r["task"] == str(t1.id)]
    assert max(r["at"] for r in late) < killed_at + 1.0
    assert_no_overlap(recording)
    assert samples_without_maintenance(recording) == []
    lost = await repo.get_task(t1.id)
    assert lost.status == "failed"
    assert lost.error_message.startswith("abandoned: agent victim stopped heartbeating at ")
    assert lost.result["live"]["state"] == "absent"  # its deploy never finished
    assert len(child_starts(recording, str(t1.id))) == 1  # never re-run
    assert (await repo.current_release()).release_version == "2.0.0"
    assert json.loads(recording.live.read_text())["version"] == "2.0.0"
    assert work_dirs_of(recording_settings, t1.id) == []  # secrets deleted

    def kinds() -> list[str]:
        return sorted(r["kind"] for r in recording.records("notify"))

    wait_until(lambda: len(kinds()) >= 2, 15)  # the outbox delivers beside the loop
    assert kinds() == ["deploy_succeeded", "task_abandoned"]
    assert not recording.flag.exists() and await repo.maintenance_flag() is False
    rescuer.send_signal(signal.SIGTERM)
    assert rescuer.wait(20) == 0


# -- a database outage longer than the lease ------------------------------------------------
async def test_outage_longer_than_the_lease_owner_fences_itself_no_overlap(
    pg_server, recording_settings, recording, repo, spawn_agent
):
    if not pg_server.can_restart:
        pytest.skip("needs the embedded PostgreSQL (the test stops and starts the server)")
    first = await child_release(repo, "1.0.0", 12)
    second = await child_release(repo, "2.0.0", 1)
    t1 = await repo.create_task("deploy", first.id)
    t2 = await repo.create_task("deploy", second.id)
    env = agent_env(recording_settings, recording, **FAST)
    owner = spawn_agent({**env, "WRKTALK_AGENT_AGENT_ID": "owner"})
    wait_until(lambda: child_starts(recording, str(t1.id)), 30)
    standby = spawn_agent({**env, "WRKTALK_AGENT_AGENT_ID": "standby"})
    # the standby must be through its start-up before the database goes (a start without
    # it exits 1): its listener connects after the start-up's queries
    wait_until(lambda: "listener.connected" in Path(standby.log_path).read_text(), 30)  # type: ignore[attr-defined]
    await repo.close()
    await asyncio.to_thread(pg_server.stop)
    stopped_at = time.time()
    await asyncio.sleep(5.0)  # lease 2 s + margin 1 s, and then some
    # cut off for longer than its lease, the owner stopped its own deploy
    samples = [r["at"] for r in recording.records("sample") if r["task"] == str(t1.id)]
    assert max(samples) < stopped_at + 2.0 + 1.0
    await asyncio.to_thread(pg_server.start)
    from wrktalk_agent.db.repository import Repository

    repo = await Repository.connect(recording_settings)
    try:
        done = await wait_for_status(repo, t2.id, {"completed", "failed"}, 90)
        assert done.status == "completed"
        lost = await repo.get_task(t1.id)
        assert lost.status == "failed" and lost.error_message.startswith("abandoned: agent owner")
        assert lost.result["live"]["state"] == "absent"
        assert_no_overlap(recording)
        assert samples_without_maintenance(recording) == []
        assert (await repo.current_release()).release_version == "2.0.0"
        assert "lease.lost" in Path(owner.log_path).read_text()  # type: ignore[attr-defined]
    finally:
        await repo.close()
    for proc in (owner, standby):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, Path(proc.log_path).read_text()[-3000:]  # type: ignore[attr-defined]


# -- identity and settings ----------------------------------------------------------------------
async def test_same_agent_id_twice_the_second_is_refused(
    recording_settings, recording, repo, spawn_agent, tmp_path
):
    release = await child_release(repo, "1.0.0", 4)
    task = await repo.create_task("deploy", release.id)
    env = {**agent_env(recording_settings, recording), "WRKTALK_AGENT_AGENT_ID": "fixed"}
    first = spawn_agent(env)
    wait_until(lambda: child_starts(recording, str(task.id)), 30)
    second = spawn_agent(env)
    assert second.wait(30) == 2
    output = Path(second.log_path).read_text()  # type: ignore[attr-defined]
    assert "agent id 'fixed' is in use by a live agent" in output
    assert "Traceback" not in output
    done = await wait_for_status(repo, task.id, {"completed", "failed"}, 30)
    assert done.status == "completed"
    first.send_signal(signal.SIGTERM)
    assert first.wait(20) == 0


@pytest.mark.parametrize(
    ("stale", "heartbeat"), [("10", "60"), ("1", "1"), ("59", "30")], ids=["below", "equal", "<2x"]
)
def test_unsafe_lease_timing_is_refused_at_start(stale, heartbeat):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRKTALK_AGENT_")}
    env.update({"WRKTALK_AGENT_STALE_AFTER": stale, "WRKTALK_AGENT_HEARTBEAT_INTERVAL": heartbeat})
    proc = subprocess.run(
        [sys.executable, "-m", "wrktalk_agent.cli", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "must be at least twice WRKTALK_AGENT_HEARTBEAT_INTERVAL" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- notifications ---------------------------------------------------------------------------
async def test_kill_between_outcome_and_email_the_email_is_still_delivered_once(
    recording_settings, recording, repo, spawn_agent
):
    await repo.pool.execute("INSERT INTO admin (name, email) VALUES ('Ann', 'ann@acme.example')")
    release = await add_release(repo, "1.0.0")
    task = await repo.create_task("deploy", release.id)
    env = agent_env(recording_settings, recording, WRKTALK_AGENT_NOTIFY_TIMEOUT="2")
    stuck = spawn_agent(
        {**env, "WRKTALK_AGENT_AGENT_ID": "stuck", "WRKTALK_AGENT_RECORDING_NOTIFY_HANG": "1"}
    )
    await wait_for_status(repo, task.id, {"completed"}, 30)
    await asyncio.sleep(0.5)  # its notifier hangs; the outcome is written
    stuck.send_signal(signal.SIGKILL)
    stuck.wait(10)
    assert recording.records("notify") == []
    other = spawn_agent({**env, "WRKTALK_AGENT_AGENT_ID": "other"})
    wait_until(lambda: recording.records("notify"), 30)
    await asyncio.sleep(1.0)
    [mail] = recording.records("notify")
    assert mail["task"] == str(task.id) and mail["kind"] == "deploy_succeeded"
    assert mail["agent"] == "other"
    done = await repo.get_task(task.id)
    assert done.result["notifications"]["recording"][0]["recipient"] == "ann@acme.example"
    assert await repo.pending_notifications() == 0
    other.send_signal(signal.SIGTERM)
    assert other.wait(20) == 0


class Tarpit:
    """A TCP server that accepts connections and never says a word (an SMTP server that
    hangs): the worst a mail server can do to a sender."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.held.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


async def test_a_tarpit_smtp_server_does_not_delay_the_next_deploy(
    recording_settings, recording, repo, spawn_agent
):
    tarpit = Tarpit()
    try:
        await repo.pool.execute(
            "UPDATE deployment_config SET smtp_host = '127.0.0.1', smtp_port = $1,"
            " smtp_from = 'agent@acme.example'",
            tarpit.port,
        )
        await repo.pool.execute(
            "INSERT INTO admin (name, email) VALUES ('Ann', 'ann@acme.example'),"
            " ('Bob', 'bob@acme.example')"
        )
        first = await repo.create_task("deploy", (await add_release(repo, "1.0.0")).id)
        second = await repo.create_task("deploy", (await add_release(repo, "1.1.0")).id)
        env = agent_env(
            recording_settings,
            recording,
            WRKTALK_AGENT_NOTIFIERS="smtp",
            WRKTALK_AGENT_SMTP_TLS="none",
            WRKTALK_AGENT_SMTP_TIMEOUT="60",
        )
        proc = spawn_agent(env)
        done1 = await wait_for_status(repo, first.id, {"completed"}, 30)
        done2 = await wait_for_status(repo, second.id, {"completed"}, 30)
        gap = (done2.picked_up_at - done1.completed_at).total_seconds()
        assert gap < 2.0, f"the next deploy waited {gap:.1f}s for the mail server"
        await asyncio.sleep(0.5)
        proc.send_signal(signal.SIGTERM)  # while the mails hang
        assert proc.wait(20) == 0
        output = Path(proc.log_path).read_text()  # type: ignore[attr-defined]
        assert "notify.interrupted" in output and "Traceback" not in output
        pending = await repo.pool.fetchval(
            "SELECT count(*) FROM agent_notification WHERE status = 'pending'"
        )
        assert pending == 2  # recorded as not delivered: the next agent retries
    finally:
        tarpit.close()


# -- a slow link: the clean-up races --------------------------------------------------------
class LatencyProxy:
    """Forwards TCP to PostgreSQL, delaying every chunk by ``delay`` seconds each way."""

    def __init__(self, target: tuple[str, int], delay: float) -> None:
        self.target, self.delay = target, delay
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0)
        )
        self.port = self.server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    await asyncio.sleep(self.delay)
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


def _slow_dsn(dsn: str, port: int) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    netloc = parts.netloc.rsplit("@", 1)
    auth = f"{netloc[0]}@" if len(netloc) == 2 else ""
    return urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{port}"))


async def test_slow_link_clean_up_races_never_switch_maintenance_off_under_a_deploy(
    recording_settings, recording, repo, spawn_agent
):
    from urllib.parse import urlsplit

    dsn = recording_settings.dsn()
    parts = urlsplit(dsn)
    if parts.hostname is None or parts.port is None:
        pytest.skip("needs a TCP database URL to put a proxy in front of")
    proxy = LatencyProxy((parts.hostname, parts.port), delay=0.5)  # 1 s per round trip
    env = agent_env(recording_settings, recording, **FAST)
    slow_env = {**env, "WRKTALK_AGENT_DATABASE_URL": _slow_dsn(dsn, proxy.port)}
    try:
        for attempt in range(3 * SCALE):
            # race 1: a (slow) agent starting while another one deploys
            release = await child_release(repo, f"{attempt}.0.0", 3)
            task = await repo.create_task("deploy", release.id)
            fast = spawn_agent({**env, "WRKTALK_AGENT_AGENT_ID": f"fast-{attempt}"})
            wait_until(lambda task=task: child_starts(recording, str(task.id)), 30)
            slow = spawn_agent({**slow_env, "WRKTALK_AGENT_AGENT_ID": f"slow-{attempt}"})
            await wait_for_status(repo, task.id, {"completed"}, 60)
            # race 2: the deploying agent dies; the slow one and a fresh one race to
            # recover it and to claim the next deploy
            doomed = await child_release(repo, f"{attempt}.1.0", 30)
            after = await child_release(repo, f"{attempt}.2.0", 1)
            t_doomed = await repo.create_task("deploy", doomed.id)
            t_after = await repo.create_task("deploy", after.id)
            wait_until(lambda t=t_doomed: child_starts(recording, str(t.id)), 60)
            owner = (await repo.get_task(t_doomed.id)).claimed_by
            runner = {f"fast-{attempt}": fast, f"slow-{attempt}": slow}[owner]
            runner.send_signal(signal.SIGKILL)
            runner.wait(10)
            fresh = spawn_agent({**env, "WRKTALK_AGENT_AGENT_ID": f"fresh-{attempt}"})
            await wait_for_status(repo, t_after.id, {"completed"}, 90)
            for proc in (fast, slow, fresh):
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in (fast, slow, fresh):
                proc.wait(30)
            assert samples_without_maintenance(recording) == [], f"attempt {attempt}"
            assert_no_overlap(recording)
    finally:
        proxy.close()
