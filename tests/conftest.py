"""Fixtures of the core's tests: the recording test plugin, in-process and real agents."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from wrktalk_agent.bootstrap import open_services
from wrktalk_agent.config import AgentSettings
from wrktalk_agent.runtime import Agent

SUPPORT = Path(__file__).parent / "support"
if str(SUPPORT) not in sys.path:
    sys.path.insert(0, str(SUPPORT))

from agent_helpers import Recording  # noqa: E402

# Property tests are seeded unless asked otherwise: a run gives the same examples every
# time (CI included); `HYPOTHESIS_PROFILE=explore` draws new ones, which is how a new
# failing example gets found (and then becomes a test of its own).
settings.register_profile("seeded", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "seeded"))


@pytest.fixture
def recording(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Recording:
    rec = Recording.in_dir(tmp_path)
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


@pytest.fixture
def spawn_agent(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start real `wrktalk-agent run` processes; killed after the test if still alive."""
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(env: dict[str, str], *args: str, own_group: bool = False) -> subprocess.Popen[bytes]:
        """``own_group``: the agent leads a process group of its own, the way a shell
        puts a job in one (a signal to the group is what Ctrl-Z sends)."""
        log = open(tmp_path / f"agent-{len(procs)}.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "wrktalk_agent.cli", "run", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=0 if own_group else None,
        )
        proc.log_path = log.name  # type: ignore[attr-defined]
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
