"""Helpers of the agent's end-to-end tests (tests/test_e2e_*.py).

The Docker fixtures (engine, app image, compose project) and the fake ``helm`` belong to
the compose and helm plugins' own test suites; :func:`plugin_test_fixtures` loads them
from there, so that both suites build the image and drive the fake Helm the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar
from uuid import UUID

from wrktalk_agent.db.models import ArtifactInfo, Task, TaskEvent
from wrktalk_agent.db.repository import Repository
from wrktalk_agent.runtime import Agent

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
FINISHED = ("completed", "failed")


def plugin_test_fixtures(plugin: str) -> ModuleType:
    """``plugins/<plugin>/tests/conftest.py`` as a plain module (its directory goes on
    sys.path, as that conftest arranges for its own helpers). Import the fixtures you
    need from it into the test module."""
    name = f"wrktalk_e2e_{plugin}_fixtures"
    if name in sys.modules:
        return sys.modules[name]
    tests_dir = ROOT / "plugins" / plugin / "tests"
    if str(tests_dir) not in sys.path:
        sys.path.insert(0, str(tests_dir))
    spec = importlib.util.spec_from_file_location(name, tests_dir / "conftest.py")
    assert spec is not None and spec.loader is not None, f"no test fixtures in {tests_dir}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def plugin_test_module(plugin: str, module: str) -> ModuleType:
    """A helper module of ``plugins/<plugin>/tests`` (e.g. ``compose_support``)."""
    plugin_test_fixtures(plugin)  # puts the directory on sys.path
    return importlib.import_module(module)


async def eventually(
    check: Callable[[], T | Awaitable[T | None] | None],
    *,
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``check`` (sync or async) until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        await asyncio.sleep(interval)


@asynccontextmanager
async def running(agent: Agent) -> AsyncIterator[asyncio.Task[int]]:
    """``agent.run(once=True)`` in the background. Should the test fail while it runs,
    the agent is stopped and its task aborted: a deploy held open must not outlive the
    test (the ``make_agent`` fixture closes the pool the outcome is written through)."""
    runner = asyncio.create_task(agent.run(once=True), name="agent-under-test")
    try:
        yield runner
    finally:
        if not runner.done():
            agent.request_stop("test over")
            agent.request_stop("test over")  # the second request aborts the task
            with contextlib.suppress(Exception):
                await asyncio.wait_for(runner, 30)


def agent_log(proc: subprocess.Popen[bytes]) -> str:
    """What a process from the ``spawn_agent`` fixture has logged so far."""
    return Path(proc.log_path).read_text(errors="replace")  # type: ignore[attr-defined]


async def wait_for_task(
    repo: Repository,
    task_id: UUID,
    *,
    timeout: float,
    agent: subprocess.Popen[bytes] | None = None,
) -> Task:
    """The task once it is completed or failed; fails early when ``agent`` has died."""

    async def finished() -> Task | None:
        alive = agent is None or agent.poll() is None
        task = await repo.get_task(task_id)
        assert task is not None, f"no task {task_id}"
        if task.status in FINISHED:
            return task
        if not alive:
            assert agent is not None
            raise AssertionError(
                f"the agent exited ({agent.returncode}) with task {task_id} {task.status}; "
                f"its log:\n{agent_log(agent)[-4000:]}"
            )
        return None

    return await eventually(finished, timeout=timeout, interval=0.1, what=f"task {task_id} done")


async def release_flags(repo: Repository) -> tuple[str | None, str | None]:
    """(current, previous) release versions."""
    current: ArtifactInfo | None = await repo.current_release()
    previous: ArtifactInfo | None = await repo.previous_release()
    return (
        current.release_version if current else None,
        previous.release_version if previous else None,
    )


def steps(events: list[TaskEvent]) -> list[tuple[str, str]]:
    return [(e.step, e.status) for e in events]


def message(events: list[TaskEvent], step: str, status: str) -> str:
    """The message of the one event ``(step, status)``."""
    found = [e.message for e in events if (e.step, e.status) == (step, status)]
    assert len(found) == 1, f"expected one {step}/{status} event, got {steps(events)}"
    return found[0]


def everything_recorded(task: Task, events: list[TaskEvent]) -> str:
    """The task's result, error and events as one text, to look for leaked secrets."""
    parts: list[Any] = [task.result, task.error_message, *(e.message for e in events)]
    return "\n".join(str(p) for p in parts)
