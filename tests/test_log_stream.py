"""The JSON log stream stays JSON, also while the database is away, and says what the
docs say it says."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from pathlib import Path

import asyncpg
from agent_helpers import agent_env

from wrktalk_agent.testing import add_release, with_database

ROOT = Path(__file__).resolve().parent.parent


async def _cut_off(database_url: str, database: str, seconds: float) -> None:
    """An outage: the agent's connections are killed and new ones refused for a while."""
    admin = await asyncpg.connect(with_database(database_url, "postgres"))
    await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'wrktalk-agent' AND datname = $1",
                database,
            )
            await asyncio.sleep(0.2)
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        await admin.close()


async def test_every_line_is_json_through_an_outage_and_a_failed_task_is_an_error(
    recording_settings, recording, repo, spawn_agent, database_url
):
    failing = await add_release(
        repo, "1.0.0", {"behaviour.json": json.dumps({"fail": "boom from the deployer"})}
    )
    env = agent_env(recording_settings, recording, WRKTALK_AGENT_LOG_LEVEL="debug")
    proc = spawn_agent(env)
    database = await repo.pool.fetchval("SELECT current_database()")
    for _ in range(200):  # started and listening
        if b"listener.connected" in Path(proc.log_path).read_bytes():
            break
        await asyncio.sleep(0.05)
    await _cut_off(database_url, database, 4.0)
    task = await repo.create_task("deploy", failing.id)
    for _ in range(400):
        found = await repo.get_task(task.id)
        if found.status == "failed":
            break
        await asyncio.sleep(0.05)
    assert found.status == "failed", found
    await asyncio.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0

    raw = Path(proc.log_path).read_text().splitlines()
    lines = []
    for line in raw:
        try:
            lines.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
    events = {line["event"] for line in lines}
    assert {"poll.failed", "listener.failed"} & events, events  # the outage was seen
    finished = [line for line in lines if line["event"] == "task.finished"]
    assert finished and finished[-1]["level"] == "error"
    assert finished[-1]["agent_id"] == env.get("WRKTALK_AGENT_AGENT_ID", finished[-1]["agent_id"])
    assert all("agent_id" in line for line in lines if line["event"].startswith("task."))


def test_documented_log_events_exist_in_the_code() -> None:
    doc = (ROOT / "docs" / "operator.md").read_text()
    section = doc[doc.index("### Logs") : doc.index("### What is masked")]
    documented = set(re.findall(r"`([a-z_]+\.[a-z_]+)`", section))
    assert documented, "the Logs section names no events"
    code = "\n".join(p.read_text() for p in (ROOT / "wrktalk_agent").rglob("*.py"))
    missing = {event for event in documented if f'"{event}"' not in code}
    assert not missing, f"documented log events the code never writes: {missing}"
