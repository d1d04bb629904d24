"""What a dead, frozen or cut-off owner costs: fault → its deploy stopped → next deploy.

Real agent processes (`wrktalk-agent run`), a deploy that runs as child processes
(tests/support/child_deploy.py, via the recording test plugin), a standby agent. Mid-deploy
the owner is

- killed with SIGKILL;
- frozen with SIGSTOP (a paused VM, Ctrl-Z);
- cut off: its PostgreSQL link (through tests/support/netfaults.py) drops every packet.

The standby takes the task over once the lease and its margin have passed, recovers it,
and claims the next task. For each fault: when the owner's deploy processes stopped (the
last sample they wrote; the watchdog enforces the renew deadline) and when the next deploy
started, beside the lease (STALE_AFTER) and the takeover bound (lease + STALE_MARGIN).

    python benchmarks/bench_recovery.py               # short timings and the defaults
    python benchmarks/bench_recovery.py --repeats 3
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "support"))

from wrktalk_agent.testing import make_tarball

ROOT = Path(__file__).resolve().parent.parent
SUPPORT = ROOT / "tests" / "support"

#: name -> (heartbeat, stale_after, stale_margin, poll_interval)
CONFIGS = {
    "short": (0.5, 1.5, 1.0, 1.0),
    "defaults": (5.0, 15.0, 5.0, 30.0),
}
FAULTS = ("kill -9", "SIGSTOP", "packets dropped")


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


async def one_run(url: str, name: str, fault: str, work: Path) -> tuple[float, float]:
    """Seconds from the fault to the owner's deploy stopped, and to the next deploy."""
    from netfaults import BlackholeProxy

    heartbeat, stale, margin, poll = CONFIGS[name]
    db_url = await fresh_database(url)
    log, flag, live = work / "records.jsonl", work / "flag", work / "live.json"
    for path in (log, flag, live):
        path.unlink(missing_ok=True)
    conn = await asyncpg.connect(db_url)
    procs: list[subprocess.Popen[bytes]] = []
    proxy = BlackholeProxy(db_url)
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

        def spawn(agent_id: str, **extra: str) -> subprocess.Popen[bytes]:
            proc = subprocess.Popen(
                [sys.executable, "-m", "wrktalk_agent.cli", "run"],
                env={**env, **extra, "WRKTALK_AGENT_AGENT_ID": agent_id},
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

        victim = spawn("victim", WRKTALK_AGENT_DATABASE_URL=proxy.dsn(db_url))
        await asyncio.to_thread(wait_for, lambda: started(first), 60)
        spawn("standby")
        await asyncio.sleep(1.5)
        at = time.time()
        if fault == "kill -9":
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
        elif fault == "SIGSTOP":
            victim.send_signal(signal.SIGSTOP)
        else:
            proxy.drop()
        next_start = await asyncio.to_thread(wait_for, lambda: started(second), stale * 3 + 120)
        last = max(
            (r["at"] for r in records(log) if r.get("task") == str(first) and "at" in r),
            default=at,
        )
        victim.send_signal(signal.SIGCONT)
        proxy.heal()
        return max(0.0, last - at), next_start - at
    finally:
        proxy.close()
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
    repeats = int(sys.argv[sys.argv.index("--repeats") + 1]) if "--repeats" in sys.argv else 1
    rows = []
    with server_url() as url, tempfile.TemporaryDirectory(prefix="wrktalk-bench-rec-") as tmp:
        for name, (heartbeat, stale, margin, _poll) in CONFIGS.items():
            for fault in FAULTS:
                stops, nexts = [], []
                for _ in range(repeats):
                    stopped, nxt = await one_run(url, name, fault, Path(tmp))
                    stops.append(stopped)
                    nexts.append(nxt)
                rows.append(
                    [
                        name,
                        f"{heartbeat:g} / {stale:g} / {margin:g}",
                        fault,
                        f"{median(stops):.2f} (max {max(stops):.2f})",
                        f"{stale + margin:g}",
                        f"{median(nexts):.2f} (max {max(nexts):.2f})",
                    ]
                )
    print(
        table(
            f"owner dies, freezes or is cut off mid-deploy (standby agent), seconds, "
            f"{repeats} run(s) each",
            [
                "config",
                "heartbeat / lease / margin",
                "fault",
                "fault -> deploy stopped",
                "takeover bound",
                "fault -> next deploy",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
