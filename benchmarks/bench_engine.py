"""Task engine: pickup latency (NOTIFY vs polling), per-task overhead, idle database load.

    python benchmarks/bench_engine.py [--tasks 200] [--idle-seconds 30]

Goals (issue 3): p99 pickup ≤ 50 ms with NOTIFY; median claim→completed ≤ 10 ms with a
no-op deployer and a 1 KB artifact; ≤ 2 statements per poll interval from an idle agent.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import asyncpg

sys.path.insert(0, str(Path(__file__).parent))
from _support import (
    database_name,
    drop_database,
    fresh_database,
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


class NoopDeployer:
    name: ClassVar[str] = "noop"
    chart_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: Any, context: Any) -> None:
        pass

    async def check(self) -> list[CheckResult]:
        return []

    async def deploy(self, request: DeployRequest) -> DeployOutcome:
        return DeployOutcome()

    async def rollback(self, request: DeployRequest) -> DeployOutcome:
        return DeployOutcome()


class NoopPlugin:
    @hookimpl
    def wrktalk_register_deployers(self, register: Any) -> None:
        register(NoopDeployer)


def settings_for(db_url: str, work: Path, **extra: Any) -> AgentSettings:
    values: dict[str, Any] = {
        "database_url": db_url,
        "work_dir": work,
        "deployer": "noop",
        "maintenance_mode_handler": "none",
        "notifiers": [],
        "agent_id": "bench",
        "heartbeat_interval": 60,
        "log_level": "error",
        "db_pool_min_size": 2,
        "db_pool_max_size": 4,
    }
    values.update(extra)
    return AgentSettings(**values)


async def start_agent(settings: AgentSettings) -> tuple[Agent, asyncio.Task[int]]:
    registry = PluginRegistry(entry_points=False)
    registry.register_module(NoopPlugin(), "noop")
    agent = Agent(await open_services(settings, registry))
    runner = asyncio.create_task(agent.run())
    if settings.listen:
        await asyncio.wait_for(agent.listener_connected.wait(), 10)
    await asyncio.sleep(0.3)
    return agent, runner


async def stop_agent(agent: Agent, runner: asyncio.Task[int]) -> None:
    agent.request_stop("bench over")
    await asyncio.wait_for(runner, 30)
    await agent.repo.close()


async def pickup_run(db_url: str, work: Path, tasks: int, **extra: Any) -> dict[str, list[float]]:
    settings = settings_for(db_url, work, **extra)
    conn = await asyncpg.connect(db_url)
    artifact = make_tarball({"payload": os.urandom(1024)}, gzip=False)
    import hashlib

    release_id = await conn.fetchval(
        "INSERT INTO release_artifact (release_version, chart_type, artifact_data, sha256)"
        " VALUES ($1, 'compose', $2, $3) RETURNING id",
        f"bench-{os.getpid()}-{extra.get('listen', True)}",
        artifact,
        hashlib.sha256(artifact).hexdigest(),
    )
    agent, runner = await start_agent(settings)
    pickups, overheads = [], []
    try:
        for _ in range(tasks):
            task_id = await conn.fetchval(
                "INSERT INTO agent_task (type, release_artifact_id) VALUES ('deploy', $1)"
                " RETURNING id",
                release_id,
            )
            while True:
                row = await conn.fetchrow(
                    "SELECT status, created_at, picked_up_at, completed_at"
                    " FROM agent_task WHERE id = $1",
                    task_id,
                )
                if row["status"] in ("completed", "failed"):
                    break
                await asyncio.sleep(0.002)
            assert row["status"] == "completed", row
            pickups.append((row["picked_up_at"] - row["created_at"]).total_seconds() * 1000)
            overheads.append((row["completed_at"] - row["picked_up_at"]).total_seconds() * 1000)
    finally:
        await stop_agent(agent, runner)
        await conn.close()
    return {"pickup": pickups, "overhead": overheads}


async def idle_load(
    url: str, db_url: str, work: Path, seconds: float, poll: float
) -> tuple[float, int]:
    """Transactions committed in the agent's database per poll interval while idle."""
    settings = settings_for(db_url, work, poll_interval=poll)
    agent, runner = await start_agent(settings)
    name = database_name(db_url)
    watcher = await asyncpg.connect(url)
    try:

        async def commits() -> int:
            await watcher.execute("SELECT pg_stat_clear_snapshot()")
            await asyncio.sleep(1.1)  # statistics are flushed about once a second
            return int(
                await watcher.fetchval(
                    "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", name
                )
            )

        before = await commits()
        await asyncio.sleep(seconds)
        after = await commits()
    finally:
        await watcher.close()
        await stop_agent(agent, runner)
    intervals = (seconds + 1.1) / poll
    return (after - before) / intervals, after - before


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    args = parser.parse_args()
    with server_url() as url, tempfile.TemporaryDirectory() as work:
        db_url = await fresh_database(url)
        try:
            notify = await pickup_run(db_url, Path(work), args.tasks, poll_interval=30.0)
            polling = await pickup_run(
                db_url, Path(work), args.tasks, poll_interval=1.0, listen=False
            )
            per_poll, total = await idle_load(url, db_url, Path(work), args.idle_seconds, poll=1.0)
        finally:
            await drop_database(url, db_url)
    rows = [
        ["pickup p50, NOTIFY", f"{median(notify['pickup']):.1f} ms", ""],
        ["pickup p99, NOTIFY", f"{percentile(notify['pickup'], 99):.1f} ms", "≤ 50 ms"],
        ["pickup p50, poll 1 s", f"{median(polling['pickup']):.1f} ms", ""],
        ["pickup p99, poll 1 s", f"{percentile(polling['pickup'], 99):.1f} ms", ""],
        ["claim→completed median", f"{median(notify['overhead']):.1f} ms", "≤ 10 ms"],
        ["claim→completed p99", f"{percentile(notify['overhead'], 99):.1f} ms", ""],
        [
            "idle statements / poll interval",
            f"{per_poll:.2f} ({total} in {args.idle_seconds:.0f}+1 s)",
            "≤ 2",
        ],
    ]
    print(table(f"task engine, {args.tasks} tasks", ["measure", "value", "goal"], rows))


if __name__ == "__main__":
    configure_logging("error", "console")  # the table is the output
    asyncio.run(main())
