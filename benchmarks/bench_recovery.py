"""Time from kill -9 of the agent running a deploy to the next deploy starting.

Real agent processes (`wrktalk-agent run`), a deploy that runs as child processes
(tests/support/child_deploy.py, via the recording test plugin), a standby agent. The
victim is killed with SIGKILL mid-deploy; the standby takes the task over once the lease
and its margin have passed, recovers it, and claims the next task. Printed beside the
lease (STALE_AFTER), the margin the fencing adds (STALE_MARGIN) and their sum, with how
long the victim's deploy processes outlived it (the janitor's kill).

    python benchmarks/bench_recovery.py             # short and medium heartbeats
    python benchmarks/bench_recovery.py --defaults  # also the defaults (about 4 minutes)
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
from _support import drop_database, fresh_database, median, server_url, table

from wrktalk_agent.testing import make_tarball

ROOT = Path(__file__).resolve().parent.parent
SUPPORT = ROOT / "tests" / "support"

#: name -> (heartbeat, stale_after, stale_margin, poll_interval, repeats)
CONFIGS = {
    "short": (0.5, 1.5, 1.0, 1.0, 3),
    "medium": (2.0, 6.0, 3.0, 2.0, 3),
    "defaults": (60.0, 180.0, 15.0, 30.0, 1),
}


def records(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line]


def wait_for(predicate, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.02)
    raise TimeoutError("condition not met")


async def add_release(conn: asyncpg.Connection, version: str, seconds: float) -> object:
    import hashlib

    data = make_tarball({"behaviour.json": json.dumps({"child": seconds})})
    return await conn.fetchval(
        "INSERT INTO release_artifact (release_version, chart_type, artifact_data, sha256)"
        " VALUES ($1, 'compose', $2, $3) RETURNING id",
        version,
        data,
        hashlib.sha256(data).hexdigest(),
    )


async def one_run(url: str, name: str, work: Path) -> tuple[float, float]:
    heartbeat, stale, margin, poll, _ = CONFIGS[name]
    db_url = await fresh_database(url)
    log, flag, live = work / "records.jsonl", work / "flag", work / "live.json"
    for path in (log, flag, live):
        path.unlink(missing_ok=True)
    conn = await asyncpg.connect(db_url)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        slow = await add_release(conn, "1.0.0", 600)
        fast = await add_release(conn, "2.0.0", 0.2)
        first = await conn.fetchval(
            "INSERT INTO agent_task (type, release_artifact_id) VALUES ('deploy', $1) RETURNING id",
            slow,
        )
        second = await conn.fetchval(
            "INSERT INTO agent_task (type, release_artifact_id) VALUES ('deploy', $1) RETURNING id",
            fast,
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("WRKTALK_AGENT_")}
        env.update(
            {
                "PYTHONPATH": str(SUPPORT),
                "WRKTALK_AGENT_DATABASE_URL": db_url,
                "WRKTALK_AGENT_WORK_DIR": str(work / "work"),
                "WRKTALK_AGENT_POLL_INTERVAL": str(poll),
                "WRKTALK_AGENT_HEARTBEAT_INTERVAL": str(heartbeat),
                "WRKTALK_AGENT_STALE_AFTER": str(stale),
                "WRKTALK_AGENT_STALE_MARGIN": str(margin),
                "WRKTALK_AGENT_DEPLOYER": "recording",
                "WRKTALK_AGENT_MAINTENANCE_MODE_HANDLER": "recording",
                "WRKTALK_AGENT_NOTIFIERS": "",
                "WRKTALK_AGENT_EXTRA_PLUGINS": "wrktalk_test_plugin",
                "WRKTALK_AGENT_RECORDING_LOG": str(log),
                "WRKTALK_AGENT_RECORDING_MAINTENANCE_FLAG": str(flag),
                "WRKTALK_AGENT_RECORDING_LIVE": str(live),
                "WRKTALK_AGENT_LOG_LEVEL": "warning",
                "WRKTALK_AGENT_LOG_FORMAT": "json",
            }
        )

        def spawn(agent_id: str) -> subprocess.Popen[bytes]:
            proc = subprocess.Popen(
                [sys.executable, "-m", "wrktalk_agent.cli", "run"],
                env={**env, "WRKTALK_AGENT_AGENT_ID": agent_id},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append(proc)
            return proc

        def started(task: object) -> float:
            found = [
                r["at"]
                for r in records(log)
                if r["phase"] == "child-start" and r["task"] == str(task)
            ]
            return found[0] if found else 0.0

        victim = spawn("victim")
        await asyncio.to_thread(wait_for, lambda: started(first), 60)
        spawn("standby")
        await asyncio.sleep(1.0)
        victim.send_signal(signal.SIGKILL)
        killed = time.time()
        victim.wait(10)
        next_start = await asyncio.to_thread(wait_for, lambda: started(second), stale * 3 + 120)
        orphan = max(
            (r["at"] for r in records(log) if r.get("task") == str(first) and "at" in r),
            default=killed,
        )
        return next_start - killed, max(0.0, orphan - killed)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        await conn.close()
        await drop_database(url, db_url)


async def main() -> None:
    names = ["short", "medium"] + (["defaults"] if "--defaults" in sys.argv else [])
    rows = []
    with server_url() as url, tempfile.TemporaryDirectory(prefix="wrktalk-bench-rec-") as tmp:
        for name in names:
            heartbeat, stale, margin, poll, repeats = CONFIGS[name]
            gaps, orphans = [], []
            for _ in range(repeats):
                gap, orphan = await one_run(url, name, Path(tmp))
                gaps.append(gap)
                orphans.append(orphan)
            rows.append(
                [
                    name,
                    f"{heartbeat:g}",
                    f"{stale:g}",
                    f"{margin:g}",
                    f"{stale + margin:g} (+ poll {poll:g})",
                    f"{min(gaps):.2f} / {median(gaps):.2f} / {max(gaps):.2f}",
                    f"{max(orphans):.3f} (samples every 0.02)",
                ]
            )
    print(
        table(
            "kill -9 mid-deploy -> next deploy starts (standby agent), seconds",
            [
                "config",
                "heartbeat",
                "lease (STALE_AFTER)",
                "fencing margin",
                "takeover bound",
                "kill->next min/median/max",
                "orphan lived (max)",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
