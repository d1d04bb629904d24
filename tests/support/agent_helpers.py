"""Helpers shared by the core's tests (importable: tests/support is on sys.path)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wrktalk_agent.config import AgentSettings
from wrktalk_agent.testing import add_release

SUPPORT = Path(__file__).parent


@dataclass
class Recording:
    """What the recording plugin wrote: deploy starts/ends, maintenance, notifications."""

    log: Path
    flag: Path
    live: Path
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def in_dir(cls, directory: Path) -> Recording:
        """Files in ``directory``, and the environment that points the plugin at them."""
        rec = cls(
            log=directory / "records.jsonl",
            flag=directory / "maintenance.flag",
            live=directory / "live.json",
        )
        rec.env = {
            "WRKTALK_AGENT_RECORDING_LOG": str(rec.log),
            "WRKTALK_AGENT_RECORDING_MAINTENANCE_FLAG": str(rec.flag),
            "WRKTALK_AGENT_RECORDING_LIVE": str(rec.live),
        }
        return rec

    def records(self, phase: str | None = None) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        rows = [json.loads(line) for line in self.log.read_text().splitlines() if line]
        return [r for r in rows if phase is None or r["phase"] == phase]


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
            "WRKTALK_AGENT_STALE_MARGIN": str(settings.stale_margin),
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


def wait_until(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.05, *, fail: bool = True
) -> Any:
    """The predicate's first true value within ``timeout``; else an AssertionError (or,
    with ``fail=False``, the last value)."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    if fail:
        raise AssertionError(f"condition not met within {timeout}s")
    return value


async def blocking_release(repo: Any, tmp_path: Path, version: str = "1.0.0") -> Any:
    """A release whose recording deploy touches ``started`` and then waits until ``go``
    exists. Returns (release, started, go)."""
    from wrktalk_agent.testing import add_release

    started, go = tmp_path / "started", tmp_path / "go"
    behaviour = {"started": str(started), "wait_for": str(go)}
    release = await add_release(repo, version, {"behaviour.json": json.dumps(behaviour)})
    return release, started, go


#: Records that mean "a process of this task's deploy is running now".
RUNNING_PHASES = ("child-start", "sample", "child-end", "daemon-sample", "background-sample")


# -- reading the deploys' records --------------------------------------------------------------
def deploy_spans(recording: Recording) -> dict[str, tuple[float, float]]:
    """Per task: first and last moment any of its deploy processes was seen running
    (escaped descendants included: a daemon or a background child it started)."""
    seen: dict[str, list[float]] = defaultdict(list)
    for record in recording.records():
        if record["phase"] in RUNNING_PHASES:
            seen[record["task"]].append(record["at"])
    return {task: (min(times), max(times)) for task, times in seen.items()}


def assert_no_overlap(recording: Recording) -> None:
    spans = sorted(deploy_spans(recording).values())
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"two deploys overlapped by {end - start:.3f}s"


def samples_without_maintenance(recording: Recording) -> list[dict[str, Any]]:
    return [r for r in recording.records("sample") if not r["maintenance"]]


def child_starts(recording: Recording, task: str) -> list[dict[str, Any]]:
    return [r for r in recording.records("child-start") if r["task"] == task]


async def wait_for_status(repo: Any, task_id: Any, statuses: set[str], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        task = await repo.get_task(task_id)
        if task.status in statuses:
            return task
        assert time.monotonic() < deadline, f"task {task_id} still {task.status}"
        await asyncio.sleep(0.1)


async def child_release(repo: Any, version: str, seconds: float, **kwargs: Any) -> Any:
    return await add_release(
        repo, version, {"behaviour.json": json.dumps({"child": seconds})}, **kwargs
    )


def work_dirs_of(settings: Any, task_id: Any) -> list[Path]:
    base = Path(settings.work_dir)
    return list(base.glob(f"task-{task_id}-*")) if base.exists() else []
