"""Fixtures of the core's tests: the recording test plugin, in-process and real agents."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from wrktalk_agent.bootstrap import open_services
from wrktalk_agent.config import AgentSettings
from wrktalk_agent.runtime import Agent

SUPPORT = Path(__file__).parent / "support"
if str(SUPPORT) not in sys.path:
    sys.path.insert(0, str(SUPPORT))


@dataclass
class Recording:
    """What the recording plugin wrote: deploy starts/ends, maintenance, notifications."""

    log: Path
    flag: Path
    env: dict[str, str] = field(default_factory=dict)

    def records(self, phase: str | None = None) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        rows = [json.loads(line) for line in self.log.read_text().splitlines() if line]
        return [r for r in rows if phase is None or r["phase"] == phase]


@pytest.fixture
def recording(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Recording:
    rec = Recording(log=tmp_path / "records.jsonl", flag=tmp_path / "maintenance.flag")
    rec.env = {
        "WRKTALK_AGENT_RECORDING_LOG": str(rec.log),
        "WRKTALK_AGENT_RECORDING_MAINTENANCE_FLAG": str(rec.flag),
    }
    for key, value in rec.env.items():
        monkeypatch.setenv(key, value)
    return rec


@pytest.fixture
def recording_settings(agent_settings: AgentSettings, recording: Recording) -> AgentSettings:
    """Agent settings selecting the recording deployer, maintenance handler and notifier."""
    return agent_settings.model_copy(
        update={
            "deployer": "recording",
            "maintenance_mode_handler": "recording",
            "notifiers": ["recording"],
            "extra_plugins": ["wrktalk_test_plugin"],
        }
    )


@pytest.fixture
async def make_agent() -> AsyncIterator[Callable[..., Any]]:
    """Build in-process agents; their pools are closed after the test."""
    agents: list[Agent] = []

    async def build(settings: AgentSettings) -> Agent:
        services = await open_services(settings)
        agent = Agent(services)
        agents.append(agent)
        return agent

    yield build
    for agent in agents:
        await agent.repo.close()


def agent_env(settings: AgentSettings, recording: Recording, **extra: str) -> dict[str, str]:
    """Environment for a real `wrktalk-agent` process with the same settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRKTALK_AGENT_")}
    env.update(recording.env)
    env.update(
        {
            "PYTHONPATH": os.pathsep.join([str(SUPPORT), env.get("PYTHONPATH", "")]),
            "WRKTALK_AGENT_DATABASE_URL": settings.dsn(),
            "WRKTALK_AGENT_WORK_DIR": str(settings.work_dir),
            "WRKTALK_AGENT_POLL_INTERVAL": str(settings.poll_interval),
            "WRKTALK_AGENT_HEARTBEAT_INTERVAL": str(settings.heartbeat_interval),
            "WRKTALK_AGENT_DEPLOYER": "recording",
            "WRKTALK_AGENT_MAINTENANCE_MODE_HANDLER": "recording",
            "WRKTALK_AGENT_NOTIFIERS": "recording",
            "WRKTALK_AGENT_EXTRA_PLUGINS": "wrktalk_test_plugin",
            "WRKTALK_AGENT_DB_POOL_MIN_SIZE": "1",
            "WRKTALK_AGENT_DB_POOL_MAX_SIZE": "3",
            "WRKTALK_AGENT_LOG_FORMAT": "json",
        }
    )
    env.update(extra)
    return env


@pytest.fixture
def spawn_agent(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start real `wrktalk-agent run` processes; killed after the test if still alive."""
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"agent-{len(procs)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "wrktalk_agent.cli", "run", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        proc.log_path = log.name  # type: ignore[attr-defined]
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")
