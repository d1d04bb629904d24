"""Fencing beyond death: an owner that is frozen, cut off or failed over never deploys
beside the next owner (real agent processes, real signals, a real PostgreSQL).

The owner's deploy runs as child processes that record samples every 20 ms (see
``tests/support/child_deploy.py``), including a ``setsid`` daemon and a background child
it leaves behind. The promises checked after each fault:

- no two tasks' deploy processes ever run at the same time (from the processes' own
  records, not the agent's);
- maintenance is on in every sample of a running deploy;
- the frozen or cut-off owner writes nothing into the task once it is taken over;
- nothing the fenced deploy started survives, and no ``.env`` is left on disk.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import (
    RUNNING_PHASES,
    Recording,
    agent_env,
    assert_no_overlap,
    child_starts,
    samples_without_maintenance,
    wait_for_status,
    wait_until,
    work_dirs_of,
)
from netfaults import BlackholeProxy

from wrktalk_agent.testing import add_release

#: heartbeat 0.5 s, lease 2 s, margin 1 s: the watchdog kills at 2 s, takeover after 3 s
FAST = {"WRKTALK_AGENT_STALE_AFTER": "2"}
#: ``WRKTALK_CHAOS_SCALE`` (default 1) multiplies the chaos test's tasks (the issue's 100
#: tasks are scale 4); ``WRKTALK_CHAOS_SEED`` picks the faults.
SCALE = max(1, int(os.environ.get("WRKTALK_CHAOS_SCALE", "1")))


async def escaping_release(repo: Any, version: str, seconds: float, **kwargs: Any) -> Any:
    """A deploy of ``seconds`` that also starts a setsid daemon and a background child,
    each meant to outlive it by far."""
    behaviour = {"child": seconds, "daemon": seconds + 60, "background": seconds + 60}
    return await add_release(repo, version, {"behaviour.json": json.dumps(behaviour)}, **kwargs)


async def doomed_then_next(repo: Any, secret: str) -> tuple[Any, Any]:
    """A long deploy with escapes and a secret (the one a fault hits), and a short one
    queued behind it."""
    first = await escaping_release(repo, "1.0.0", 30, env_data=f"SECRET_TOKEN={secret}\n")
    second = await add_release(repo, "2.0.0", {"behaviour.json": json.dumps({"child": 1})})
    return await repo.create_task("deploy", first.id), await repo.create_task("deploy", second.id)


async def stop_agents(*procs: Any) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        assert proc.wait(30) == 0, log_text(proc)[-3000:]


def log_text(proc: Any) -> str:
    return Path(proc.log_path).read_text()


def last_record(recording: Recording, task: str, phases: tuple[str, ...]) -> float:
    times = [r["at"] for r in recording.records() if r.get("task") == task and r["phase"] in phases]
    return max(times, default=0.0)


async def events_by(repo: Any, task_id: Any, agent_id: str) -> list[Any]:
    return [e for e in await repo.task_events(task_id) if e.agent_id == agent_id]


async def first_recovery_event(repo: Any, task_id: Any) -> Any:
    events = [e for e in await repo.task_events(task_id) if e.step == "recovery"]
    assert events, "the task was not recovered"
    return min(events, key=lambda e: e.id)


async def assert_fenced_cleanly(
    repo: Any, recording: Recording, settings: Any, t1: Any, owner_id: str
) -> None:
    """What every fault must leave: t1 recovered (never re-run), nothing of its deploy
    alive after the takeover, no overlap, maintenance throughout, no secrets on disk."""
    recovery = await first_recovery_event(repo, t1.id)
    took_over = recovery.created_at.timestamp()
    task = str(t1.id)
    # everything the owner's deploy started had stopped before anyone else could act
    assert last_record(recording, task, ("sample", "child-end")) < took_over
    assert last_record(recording, task, ("daemon-sample",)) < took_over
    assert last_record(recording, task, ("background-sample",)) < took_over
    assert_no_overlap(recording)
    assert samples_without_maintenance(recording) == []
    assert len(child_starts(recording, task)) == 1  # never run twice
    lost = await repo.get_task(t1.id)
    assert lost.status == "failed" and lost.error_message.startswith("abandoned: ")
    # the stale owner wrote nothing into the task after it was taken over
    late = [e for e in await events_by(repo, t1.id, owner_id) if e.id > recovery.id]
    assert late == [], [(e.step, e.status, e.message) for e in late]
    assert work_dirs_of(settings, t1.id) == []
    live = json.loads(recording.live.read_text())["version"]
    assert (await repo.current_release()).release_version == live


# -- a frozen owner ------------------------------------------------------------------------
@pytest.mark.parametrize("freeze", ["SIGSTOP", "SIGTSTP to its process group (Ctrl-Z)"])
async def test_a_frozen_owner_is_fenced_by_its_watchdog_before_the_takeover(
    freeze, recording_settings, recording, repo, spawn_agent
):
    t1, t2 = await doomed_then_next(repo, "s3cr3t-value")
    env = agent_env(recording_settings, recording, **FAST)
    owner = spawn_agent({**env, "WRKTALK_AGENT_AGENT_ID": "owner"}, own_group=True)
    wait_until(lambda: child_starts(recording, str(t1.id)), 30)
    wait_until(lambda: last_record(recording, str(t1.id), ("daemon-sample",)), 10)
    standby = spawn_agent({**env, "WRKTALK_AGENT_AGENT_ID": "standby"})
    wait_until(lambda: "agent.started" in log_text(standby), 30)
    if freeze == "SIGSTOP":
        owner.send_signal(signal.SIGSTOP)
    else:
        os.killpg(owner.pid, signal.SIGTSTP)
    frozen_at = time.time()
    try:
        done = await wait_for_status(repo, t2.id, {"completed", "failed"}, 60)
        assert done.status == "completed"
        # the watchdog stopped the deploy at the renew deadline (lease 2 s, grace 1/3 s)
        assert last_record(recording, str(t1.id), ("sample",)) < frozen_at + 2.0 + 1.0
    finally:
        owner.send_signal(signal.SIGCONT)
    # thawed, the owner finds its lease gone and writes nothing into the task
    wait_until(lambda: "lease.lost" in log_text(owner), 20)
    await asyncio.sleep(1.0)
    await assert_fenced_cleanly(repo, recording, recording_settings, t1, "owner")
    await stop_agents(owner, standby)


# -- a link that drops every packet --------------------------------------------------------
async def test_an_owner_whose_link_drops_packets_fences_itself_within_its_lease(
    recording_settings, recording, repo, spawn_agent
):
    proxy = BlackholeProxy(recording_settings.dsn())
    try:
        t1, t2 = await doomed_then_next(repo, "p4ss")
        env = agent_env(recording_settings, recording, **FAST)
        cut_off = {
            **env,
            "WRKTALK_AGENT_AGENT_ID": "owner",
            "WRKTALK_AGENT_DATABASE_URL": proxy.dsn(recording_settings.dsn()),
            "WRKTALK_AGENT_DB_TIMEOUT": "1",
        }
        owner = spawn_agent(cut_off)
        wait_until(lambda: child_starts(recording, str(t1.id)), 30)
        standby = spawn_agent({**env, "WRKTALK_AGENT_AGENT_ID": "standby"})
        wait_until(lambda: "agent.started" in log_text(standby), 30)
        proxy.drop()
        dropped_at = time.time()
        done = await wait_for_status(repo, t2.id, {"completed", "failed"}, 60)
        assert done.status == "completed"
        # noticed within the renew deadline, not when the link heals
        lost = wait_until(lambda: "lease.lost" in log_text(owner), 10)
        assert lost
        lost_line = next(
            json.loads(line) for line in log_text(owner).splitlines() if '"lease.lost"' in line
        )
        from datetime import datetime

        lost_at = datetime.fromisoformat(lost_line["timestamp"].replace("Z", "+00:00"))
        assert lost_at.timestamp() < dropped_at + 2.0 + 1.0
        assert last_record(recording, str(t1.id), ("sample",)) < dropped_at + 2.0 + 1.0
        proxy.heal()
        await asyncio.sleep(2.0)  # the owner is back: it must still write nothing
        await assert_fenced_cleanly(repo, recording, recording_settings, t1, "owner")
        await stop_agents(owner, standby)
    finally:
        proxy.close()


# -- killed, restarted within the lease: no escapee, no secret left ------------------------
async def test_a_killed_owner_leaves_no_daemon_and_its_restart_deletes_the_secrets(
    recording_settings, recording, repo, spawn_agent, tmp_path
):
    t1, t2 = await doomed_then_next(repo, "s3cr3t-value")
    env = agent_env(recording_settings, recording, **FAST)
    victim = spawn_agent({**env, "WRKTALK_AGENT_AGENT_ID": "victim"})
    wait_until(lambda: last_record(recording, str(t1.id), ("daemon-sample",)), 30)
    assert work_dirs_of(recording_settings, t1.id)  # the .env is on disk meanwhile
    # the watchdog notes the agent's descendants every 0.2 s while a lease is held; a
    # daemon that detached less than that before the agent's death is not yet known
    # (docs/operator.md says so)
    time.sleep(0.5)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    killed_at = time.time()
    # the same slot restarts at once, within the lease; the task is recovered by an agent
    # on "another host" (a work dir of its own), which cannot delete the victim's files
    restarted = spawn_agent({**env, "WRKTALK_AGENT_AGENT_ID": "victim"})
    elsewhere = {**env, "WRKTALK_AGENT_WORK_DIR": str(tmp_path / "other-host")}
    rescuer = spawn_agent({**elsewhere, "WRKTALK_AGENT_AGENT_ID": "rescuer"})
    done = await wait_for_status(repo, t2.id, {"completed", "failed"}, 60)
    assert done.status == "completed"
    # the watchdog stopped the daemon and the background child with the deploy
    for phase in ("sample", "daemon-sample", "background-sample"):
        assert last_record(recording, str(t1.id), (phase,)) < killed_at + 1.0, phase
    wait_until(lambda: not work_dirs_of(recording_settings, t1.id), 15)
    assert_no_overlap(recording)
    assert samples_without_maintenance(recording) == []
    await stop_agents(restarted, rescuer)


# -- chaos -----------------------------------------------------------------------------------
async def test_chaos_four_agents_killed_frozen_and_cut_off(
    recording_settings, recording, repo, spawn_agent
):
    """4 agents, tasks whose deploys take up to a second and start a daemon and a
    background child, and every few seconds one fault: an agent killed with SIGKILL
    and restarted, an owner frozen with SIGSTOP or with SIGTSTP to its group past its
    lease, or the link of agent chaos-0 dropping every packet past its lease. At the end:
    no overlap (from the deploys' own records), maintenance throughout, no task run twice
    or stuck, `current` true, every outcome notified, nothing left running, no `.env`."""
    rng = random.Random(int(os.environ.get("WRKTALK_CHAOS_SEED", "23")))
    count = 25 * SCALE
    await repo.pool.execute("INSERT INTO admin (name, email) VALUES ('Ann', 'ann@acme.example')")
    tasks = []
    for i in range(count):
        seconds = rng.uniform(0.3, 1.0)
        # escapes that end before the deploy does when nothing goes wrong (what a finished
        # deploy leaves running is the release's business), and must die with a fenced one
        behaviour = {"child": seconds, "daemon": seconds / 2, "background": seconds / 2}
        release = await add_release(
            repo,
            f"{i + 1}.0.0",
            {"behaviour.json": json.dumps(behaviour)},
            env_data=f"SECRET_TOKEN=chaos-{i}\n",
        )
        tasks.append(await repo.create_task("deploy", release.id))
    env = agent_env(recording_settings, recording, **FAST)
    proxy = BlackholeProxy(recording_settings.dsn())
    link = {"WRKTALK_AGENT_DATABASE_URL": proxy.dsn(recording_settings.dsn()),
            "WRKTALK_AGENT_DB_TIMEOUT": "1"}  # fmt: skip

    def start(name: str) -> Any:
        extra = link if name == "chaos-0" else {}
        return spawn_agent({**env, **extra, "WRKTALK_AGENT_AGENT_ID": name}, own_group=True)

    agents = {f"chaos-{i}": start(f"chaos-{i}") for i in range(4)}
    faults: dict[str, int] = defaultdict(int)
    deadline = time.monotonic() + 90 + 30 * SCALE * 4
    try:
        while True:
            rows = await repo.pool.fetch(
                "SELECT status, claimed_by, count(*) FROM agent_task GROUP BY 1, 2"
            )
            done = sum(r["count"] for r in rows if r["status"] in ("completed", "failed"))
            if done == count:
                break
            assert time.monotonic() < deadline, f"tasks stuck: {[dict(r) for r in rows]}"
            await asyncio.sleep(rng.uniform(1.0, 2.5))
            pending = sum(r["count"] for r in rows if r["status"] == "pending")
            if pending <= 2:
                continue
            owner = next((r["claimed_by"] for r in rows if r["status"] == "inProgress"), None)
            fault = rng.choice(["kill", "stop", "tstp", "drop"])
            name = owner if owner in agents and fault in ("stop", "tstp") else None
            name = name or rng.choice(sorted(agents))
            proc = agents[name]
            if fault == "kill":
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                agents[name] = start(name)
            elif fault in ("stop", "tstp"):
                if fault == "stop":
                    proc.send_signal(signal.SIGSTOP)
                else:
                    os.killpg(proc.pid, signal.SIGTSTP)
                await asyncio.sleep(3.5)  # past the lease and its margin
                proc.send_signal(signal.SIGCONT)
            else:
                proxy.drop()
                await asyncio.sleep(3.5)
                proxy.heal()
            faults[fault] += 1
        # every outcome is notified (the outbox may need a moment after the last one)
        wait_until(
            lambda: {r["task"] for r in recording.records("notify")} >= {str(t.id) for t in tasks},
            60,
        )
        for name, proc in agents.items():  # a restarted agent may still be starting up
            started = wait_until(lambda p=proc: "agent.started" in log_text(p), 30, fail=False)
            assert started, f"{name} did not start: {log_text(proc)[-2000:]}"
            proc.send_signal(signal.SIGTERM)
        for proc in agents.values():
            assert proc.wait(30) == 0
    finally:
        proxy.close()
    print(f"chaos: {count} tasks, faults {dict(faults)}")
    assert sum(faults.values()) >= 3
    assert_no_overlap(recording)
    assert samples_without_maintenance(recording) == []
    for task in tasks:
        assert len(child_starts(recording, str(task.id))) <= 1  # never run twice
        events = [e for e in await repo.task_events(task.id) if e.step == "recovery"]
        if events:  # fenced or killed: all it started had stopped before the takeover
            took_over = min(e.created_at.timestamp() for e in events)
            assert last_record(recording, str(task.id), RUNNING_PHASES) < took_over
    live = json.loads(recording.live.read_text())["version"]
    assert (await repo.current_release()).release_version == live
    per_task = defaultdict(set)
    for mail in recording.records("notify"):
        per_task[mail["task"]].add(mail["notification_id"])
    assert all(len(ids) == 1 for ids in per_task.values())  # a repeat is the same message
    assert await repo.pending_notifications() == 0
    assert not recording.flag.exists()
    # nothing the deploys started is still running, and no secret is left on disk
    before = len(recording.records())
    await asyncio.sleep(1.0)
    assert len(recording.records()) == before
    work = Path(recording_settings.work_dir)
    assert not work.exists() or not any(work.glob("task-*"))
