"""HA PostgreSQL figures, all from one run on this machine (PostgreSQL 15 binaries, a
real agent process with the recording test plugin):

* failover: from the primary's stop (then ``pg_ctl promote`` of the replica) to the agent's
  first successful poll on the new primary (``agent_instance.last_poll`` there);
* NOTIFY to pickup (``picked_up_at - created_at``), direct beside PgBouncer in transaction
  mode with a direct LISTEN connection, and PgBouncer polling only.

Run: ``python benchmarks/bench_failover.py`` (or ``nox -s bench -- failover``).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "support")]

from agent_helpers import Recording, agent_env  # noqa: E402
from test_ha_servers import (  # noqa: E402
    PgBouncer,
    add_replica,
    create_wrktalk_database,
    init_primary,
    pgbouncer_version,
    wait_replayed,
)

from wrktalk_agent.config import AgentSettings  # noqa: E402
from wrktalk_agent.db.repository import Repository  # noqa: E402
from wrktalk_agent.testing import add_release  # noqa: E402

POLL_INTERVAL = 5.0
TASKS = 15


def spawn(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "wrktalk_agent.cli", "run"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def base_env(settings: AgentSettings, work: Path, **extra: str) -> dict[str, str]:
    recording = Recording.in_dir(work)
    return agent_env(
        settings,
        recording,
        WRKTALK_AGENT_NOTIFIERS="",
        WRKTALK_AGENT_POLL_INTERVAL=str(POLL_INTERVAL),
        WRKTALK_AGENT_LOG_LEVEL="warning",
        **extra,
    )


async def failover_seconds(work: Path) -> tuple[float, float]:
    """(stop → promoted, stop → first poll on the new primary)."""
    work.mkdir(parents=True, exist_ok=True)
    primary = init_primary("bench-primary")
    replica = None
    proc = None
    try:
        await create_wrktalk_database(primary)
        replica = await asyncio.to_thread(add_replica, primary, "bench-replica")
        hosts = f"{primary.hostport},{replica.hostport}"
        settings = AgentSettings(
            db_host=hosts, db_name="wrktalk", db_user="postgres", db_ssl_mode="disable",
            work_dir=work,
        )  # fmt: skip
        env = base_env(settings, work)
        del env["WRKTALK_AGENT_DATABASE_URL"]
        env.update(
            WRKTALK_AGENT_DB_HOST=hosts,
            WRKTALK_AGENT_DB_NAME="wrktalk",
            WRKTALK_AGENT_DB_USER="postgres",
            WRKTALK_AGENT_DB_SSL_MODE="disable",
        )
        proc = spawn(env, work / "failover-agent.log")
        watch = await Repository.connect(settings)
        while not await watch.pool.fetchval("SELECT count(*) FROM agent_instance"):
            await asyncio.sleep(0.05)
        await watch.close()
        await asyncio.to_thread(lambda: asyncio.run(wait_replayed(primary, replica)))

        stopped = time.monotonic()
        await asyncio.to_thread(primary.stop, "fast")
        await asyncio.to_thread(replica.promote)
        promoted = time.monotonic() - stopped
        after = await Repository.connect(
            AgentSettings(database_url=replica.url(), work_dir=work, db_pool_min_size=1)
        )
        try:
            since = await after.pool.fetchval("SELECT now()")
            while not await after.pool.fetchval(
                "SELECT count(*) FROM agent_instance WHERE last_poll > $1", since
            ):
                await asyncio.sleep(0.02)
        finally:
            await after.close()
        return promoted, time.monotonic() - stopped
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        if replica is not None:
            replica.destroy()
        primary.destroy()


async def pickup_seconds(
    label: str, settings: AgentSettings, work: Path, **extra: str
) -> list[float]:
    work.mkdir(parents=True, exist_ok=True)
    repo = await Repository.connect(settings)
    proc = spawn(base_env(settings, work, **extra), work / f"{label}.log")
    try:
        release = await add_release(repo, f"bench-{label}")
        while not await repo.pool.fetchval("SELECT count(*) FROM agent_instance"):
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # the listener (if any) is connected by now
        figures = []
        for _ in range(TASKS):
            task = await repo.create_task("deploy", release.id)
            while True:
                row = await repo.pool.fetchrow(
                    "SELECT status, extract(epoch FROM picked_up_at - created_at) AS s "
                    "FROM agent_task WHERE id = $1",
                    task.id,
                )
                if row["status"] == "completed":
                    figures.append(float(row["s"]))
                    break
                await asyncio.sleep(0.01)
            # a random phase against the poll timer, as in real life
            await asyncio.sleep(0.3 + (time.monotonic() * 7919 % 1.0))
        return figures
    finally:
        proc.terminate()
        proc.wait(30)
        await repo.close()


def summary(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    return f"median {statistics.median(ms):8.1f} ms   max {ms[-1]:8.1f} ms   n={len(ms)}"


async def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="wrktalk-bench-failover-"))
    print(f"PgBouncer: {pgbouncer_version()}; agent poll interval {POLL_INTERVAL:g}s")
    promoted, polled = await failover_seconds(work / "failover")
    print(f"{'failover: primary stop -> replica promoted':52} {promoted * 1000:8.1f} ms")
    print(f"{'failover: primary stop -> first poll on new primary':52} {polled * 1000:8.1f} ms")

    primary = init_primary("bench-pickup")
    bouncer = PgBouncer(primary)
    try:
        await create_wrktalk_database(primary)
        await asyncio.to_thread(bouncer.start)
        direct = AgentSettings(database_url=primary.url(), work_dir=work / "direct")
        pooled = AgentSettings(
            database_url=bouncer.url(), db_pooler="pgbouncer", work_dir=work / "pooled"
        )
        rows = [
            ("NOTIFY -> pickup, direct", await pickup_seconds("direct", direct, work / "d")),
            (
                "NOTIFY -> pickup, PgBouncer + direct LISTEN",
                await pickup_seconds(
                    "pgbouncer-listen",
                    pooled,
                    work / "pl",
                    WRKTALK_AGENT_DB_POOLER="pgbouncer",
                    WRKTALK_AGENT_LISTEN_DATABASE_URL=primary.url(),
                ),
            ),
            (
                "NOTIFY -> pickup, PgBouncer polling only",
                await pickup_seconds(
                    "pgbouncer-poll", pooled, work / "pp", WRKTALK_AGENT_DB_POOLER="pgbouncer"
                ),
            ),
        ]
        for label, values in rows:
            print(f"{label:52} {summary(values)}")
    finally:
        await asyncio.to_thread(bouncer.stop)
        primary.destroy()
    if not os.environ.get("WRKTALK_BENCH_KEEP"):
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
