"""Maintenance mode end to end: the agent with a real nginx or HAProxy in front of a
loopback upstream (the plugins' ``testing`` fixtures, configured with the shipped
snippets). The recording test deployer holds a deploy open until the test lets it go,
so the tests see the site from outside before, during and after.

HAProxy is driven through its Runtime API on a unix socket and on TCP. Tests are skipped
when nginx or haproxy is not installed.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from agent_helpers import agent_env
from e2e_support import agent_log, eventually, message, running, steps

from wrktalk_agent import maintenance as maint
from wrktalk_agent import metrics
from wrktalk_agent.interfaces import MaintenanceHandler
from wrktalk_agent.testing import add_release
from wrktalk_agent_haproxy import HaproxyMaintenance
from wrktalk_agent_haproxy import maintenance_page as haproxy_page
from wrktalk_agent_haproxy.testing import haproxy_proxy
from wrktalk_agent_nginx import NginxMaintenance
from wrktalk_agent_nginx import maintenance_page as nginx_page
from wrktalk_agent_nginx.testing import UPSTREAM_BODY, nginx_proxy, plugin_context

__all__ = ["haproxy_proxy", "nginx_proxy"]  # fixtures

TASK_TIMEOUT = 30
RETRY_AFTER = "300"  # the shipped snippets' default


@dataclass
class Site:
    """A proxy in front of the upstream, and how the agent's handler reaches it."""

    handler: str  # WRKTALK_AGENT_MAINTENANCE_MODE_HANDLER
    env: dict[str, str]  # the handler's settings
    page: str  # the maintenance page it serves with the 503
    fetch: Callable[[], Any]  # GET / through the proxy
    backend: Callable[[], MaintenanceHandler]  # the handler, built by hand
    #: while this is entered, switching maintenance off fails the way a proxy being
    #: restarted makes it fail (None: not possible with this transport)
    switch_off_broken: Callable[[], Any] | None = None
    #: the proxy's own log, shown when the site does not answer as expected
    proxy_log: Path | None = None

    async def get(self) -> Any:
        return await asyncio.to_thread(self.fetch)

    def _log_tail(self) -> str:
        if self.proxy_log is None or not self.proxy_log.exists():
            return "(no proxy log)"
        return "\n".join(self.proxy_log.read_text(errors="replace").splitlines()[-20:])

    async def assert_up(self) -> None:
        response = await self.get()
        # 502/504 come from the test's own upstream (a thread in this process), never from
        # the agent: the proxy is forwarding, which is what this checks. It is asked again
        # (a CI run under load once saw one 502); a 503 is never retried.
        for _ in range(3):
            if response.status not in (502, 504):
                break
            print(f"upstream answered {response.status} through the proxy; asking again")
            await asyncio.sleep(0.5)
            response = await self.get()
        assert (response.status, response.body) == (200, UPSTREAM_BODY), (
            f"the site answered {response.status}; the proxy's log:\n{self._log_tail()}"
        )

    async def assert_maintenance(self) -> None:
        response = await self.get()
        assert response.status == 503
        assert response.body.strip() == self.page.strip()
        assert "WrkTalk is being updated" in response.body
        assert response.headers["retry-after"] == RETRY_AFTER


@pytest.fixture(params=["nginx", "haproxy-unix", "haproxy-tcp"])
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Site:
    return _make_site(request, tmp_path)


def _make_site(request: pytest.FixtureRequest, tmp_path: Path) -> Site:
    context = plugin_context(tmp_path)
    if request.param == "nginx":
        nginx = request.getfixturevalue("nginx_proxy")
        return Site(
            "nginx",
            nginx.env,
            nginx_page(),
            nginx.get,
            lambda: NginxMaintenance(nginx.settings, context),
            lambda: _immutable(nginx.flag_file.parent),
            nginx.prefix / "error.log",
        )
    haproxy = request.getfixturevalue("haproxy_proxy")
    tcp = request.param == "haproxy-tcp"
    settings = haproxy.tcp_settings if tcp else haproxy.settings
    return Site(
        "haproxy",
        haproxy.tcp_env if tcp else haproxy.env,
        haproxy_page(),
        haproxy.get,
        lambda: HaproxyMaintenance(settings, context),
        None if tcp else lambda: _moved_away(haproxy.admin_socket),
        haproxy.directory / "haproxy.log",
    )


@contextmanager
def _immutable(directory: Path) -> Iterator[None]:
    """The nginx flag's directory cannot change (chattr +i): the flag cannot be removed,
    not even by root, and nginx goes on answering 503."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    made = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"chattr +i is not possible here: {made.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


@contextmanager
def _moved_away(admin_socket: Path) -> Iterator[None]:
    """HAProxy's Runtime API socket is gone, as while HAProxy restarts; its servers stay
    in maintenance."""
    away = admin_socket.with_name(admin_socket.name + ".away")
    admin_socket.rename(away)
    try:
        yield
    finally:
        away.rename(admin_socket)


@pytest.fixture(params=["nginx", "haproxy-unix"])
def breakable_site(request: pytest.FixtureRequest, tmp_path: Path) -> Site:
    """A site whose switch-off can be made to fail."""
    return _make_site(request, tmp_path)


@pytest.fixture(autouse=True)
async def deployment_config(repo) -> None:
    """The backend's configuration row, where maintenance_mode_enabled is mirrored."""
    await repo.pool.execute("INSERT INTO deployment_config (deployment_type) VALUES ('docker')")


@pytest.fixture
def in_process(recording_settings, site, monkeypatch) -> Any:
    """Settings of an in-process agent using the recording deployer and ``site``."""
    for name, value in site.env.items():  # plugin settings come from the environment
        monkeypatch.setenv(name, value)
    return recording_settings.model_copy(update={"maintenance_mode_handler": site.handler})


def held_release(tmp_path: Path, **behaviour: Any) -> tuple[dict[str, str], Path, Path]:
    """A release whose deploy signals ``started`` and then waits for ``go``."""
    started, go = tmp_path / "deploy-started", tmp_path / "deploy-go"
    files = {
        "behaviour.json": json.dumps({"started": str(started), "wait_for": str(go), **behaviour})
    }
    return files, started, go


async def deploy_started(started: Path, runner: asyncio.Task[int]) -> None:
    def check() -> bool:
        if runner.done():  # finished (or crashed) without ever reaching the deployer
            raise AssertionError(f"the agent returned {runner.result()} before deploying")
        return started.exists()

    await eventually(check, timeout=TASK_TIMEOUT, what="the deploy started")


def assert_maintenance_around_deployer(events) -> None:
    timeline = steps(events)
    on = timeline.index(("maintenance-on", "succeeded"))
    deploy = timeline.index(("deploy", "started"))
    off = timeline.index(("maintenance-off", "succeeded"))
    assert on < deploy < off


async def test_site_answers_503_only_while_the_agent_deploys(
    site, in_process, make_agent, recording, repo, tmp_path
):
    files, started, go = held_release(tmp_path)
    task = await repo.create_task("deploy", (await add_release(repo, "1.0.0", files)).id)
    await site.assert_up()
    agent = await make_agent(in_process)
    async with running(agent) as runner:
        await deploy_started(started, runner)
        await site.assert_maintenance()
        assert await repo.maintenance_flag() is True
        assert await site.backend().status() is True

        go.touch()
        assert await asyncio.wait_for(runner, TASK_TIMEOUT) == 0
    assert (await repo.get_task(task.id)).status == "completed"
    await site.assert_up()
    assert await repo.maintenance_flag() is False
    assert await site.backend().status() is False
    assert_maintenance_around_deployer(await repo.task_events(task.id))


async def test_site_is_back_after_a_failed_deploy(
    site, in_process, make_agent, recording, repo, tmp_path
):
    files, started, go = held_release(tmp_path, fail="pods crashlooping")
    task = await repo.create_task("deploy", (await add_release(repo, "1.0.0", files)).id)
    await site.assert_up()
    agent = await make_agent(in_process)
    async with running(agent) as runner:
        await deploy_started(started, runner)
        await site.assert_maintenance()

        go.touch()
        assert await asyncio.wait_for(runner, TASK_TIMEOUT) == 1
    failed = await repo.get_task(task.id)
    assert (failed.status, failed.error_message) == ("failed", "pods crashlooping")
    await site.assert_up()
    assert await repo.maintenance_flag() is False
    assert await site.backend().status() is False
    assert_maintenance_around_deployer(await repo.task_events(task.id))


async def test_sigterm_twice_during_a_deploy_interrupts_it_and_ends_maintenance(
    site, recording_settings, recording, repo, spawn_agent, tmp_path
):
    files, started, _ = held_release(tmp_path)  # never let go: only a signal ends it
    task = await repo.create_task("deploy", (await add_release(repo, "1.0.0", files)).id)
    env = agent_env(
        recording_settings,
        recording,
        **site.env,
        WRKTALK_AGENT_SHUTDOWN_GRACE="60",
        WRKTALK_AGENT_NOTIFIERS="",
    )
    await site.assert_up()
    agent = spawn_agent(env)
    await eventually(started.exists, timeout=TASK_TIMEOUT, what="the deploy started")
    await site.assert_maintenance()
    assert await repo.maintenance_flag() is True

    agent.send_signal(signal.SIGTERM)  # drain: the deploy may still finish
    await eventually(
        lambda: "task.draining" in agent_log(agent), timeout=10, what="the agent drains"
    )
    assert agent.poll() is None
    await site.assert_maintenance()
    agent.send_signal(signal.SIGTERM)  # abort
    assert await asyncio.to_thread(agent.wait, 30) == 0

    interrupted = await repo.get_task(task.id)
    # what is live was asked before maintenance went off: nothing (the deploy never applied)
    assert interrupted.status == "failed"
    assert interrupted.error_message == (
        "interrupted by shutdown; found nothing deployed (recording: nothing deployed yet); "
        "next: check the site, then deploy 1.0.0 again or roll back"
    )
    events = await repo.task_events(task.id)
    assert message(events, "deploy", "failed") == "interrupted by shutdown"
    timeline = steps(events)
    assert timeline.index(("interrupted", "info")) < timeline.index(
        ("maintenance-off", "succeeded")
    )
    assert_maintenance_around_deployer(events)
    await site.assert_up()
    assert await repo.maintenance_flag() is False
    assert await site.backend().status() is False


@pytest.mark.parametrize("transport", ["unix", "tcp"])
async def test_wrong_haproxy_backend_fails_the_task_before_the_deployer(
    haproxy_proxy, transport, recording_settings, recording, make_agent, repo, monkeypatch
):
    env = haproxy_proxy.env if transport == "unix" else haproxy_proxy.tcp_env
    for name, value in {**env, "WRKTALK_AGENT_HAPROXY_SERVERS": "nosuch"}.items():
        monkeypatch.setenv(name, value)
    task = await repo.create_task("deploy", (await add_release(repo, "1.0.0")).id)
    agent = await make_agent(
        recording_settings.model_copy(update={"maintenance_mode_handler": "haproxy"})
    )
    assert await agent.run(once=True) == 1

    failed = await repo.get_task(task.id)
    assert failed.status == "failed"
    assert failed.error_message == (
        "maintenance mode could not be enabled: HAProxy has no backend 'nosuch' "
        "(check WRKTALK_AGENT_HAPROXY_SERVERS)"
    )
    assert recording.records("start") == []  # the deployer never ran
    timeline = steps(await repo.task_events(task.id))
    assert ("maintenance-on", "failed") in timeline
    assert not any(step == "deploy" for step, _ in timeline)
    assert "deployer" not in failed.result
    assert await repo.maintenance_flag() is False
    response = haproxy_proxy.get()
    assert (response.status, response.body) == (200, UPSTREAM_BODY)
    # the real backend's servers were never touched
    assert (
        await HaproxyMaintenance(haproxy_proxy.settings, plugin_context(Path())).status() is False
    )


async def test_maintenance_left_by_an_ended_task_is_cleared_when_the_agent_starts(
    site, recording_settings, recording, repo, spawn_agent
):
    # what a task whose switch-off failed leaves behind: on, owned by a task that ended
    release = await add_release(repo, "1.0.0")
    task = await repo.create_task("deploy", release.id)
    await repo.pool.execute("UPDATE agent_task SET status = 'failed' WHERE id = $1", task.id)
    await repo.hold_maintenance(f"task:{task.id}", "deploy 1.0.0")
    await site.backend().enable("deploy 1.0.0")
    await site.assert_maintenance()

    env = agent_env(recording_settings, recording, **site.env, WRKTALK_AGENT_NOTIFIERS="")
    agent = spawn_agent(env, "--once")  # no task waits: start, reconcile, exit
    assert await asyncio.to_thread(agent.wait, 30) == 0

    await site.assert_up()
    assert await repo.maintenance_flag() is False
    assert await site.backend().status() is False
    log = agent_log(agent)
    assert "maintenance.cleared" in log and f"left on by task {task.id}" in log
    assert recording.records("start") == []


async def test_an_operators_window_survives_an_agent_start(
    site, recording_settings, recording, repo, spawn_agent
):
    await site.backend().enable("db migration")
    await repo.hold_maintenance("operator:alice", "db migration")
    env = agent_env(recording_settings, recording, **site.env, WRKTALK_AGENT_NOTIFIERS="")
    agent = spawn_agent(env, "--once")
    assert await asyncio.to_thread(agent.wait, 30) == 0
    await site.assert_maintenance()
    assert [h.holder for h in (await repo.maintenance_state()).holds] == ["operator:alice"]


async def test_a_release_the_deployer_refuses_never_takes_the_site_down(
    site, in_process, make_agent, recording, repo, tmp_path, monkeypatch
):
    """A release the deployer's validate step refuses (here: a `script` release without
    its deploy script) fails before maintenance: the site answers 200 throughout, the
    flags stay, the admins are told it was rejected before deploy."""
    monkeypatch.setenv("WRKTALK_AGENT_SCRIPT_WORKING_DIR", str(tmp_path / "script-site"))
    live = await add_release(repo, "1.0.0", {"deploy": "#!/bin/sh\nexit 0\n"})
    await repo.pool.execute("UPDATE release_artifact SET is_current = true WHERE id=$1", live.id)
    broken = await add_release(repo, "1.1.0", {"README": "the deploy script was forgotten"})
    task = await repo.create_task("deploy", broken.id)
    agent = await make_agent(in_process.model_copy(update={"deployer": "script"}))
    samples: list[int] = []
    runner = asyncio.create_task(agent.run(once=True))
    while not runner.done():
        samples.append((await site.get()).status)
        await asyncio.sleep(0.01)
    assert await runner == 1
    samples.append((await site.get()).status)
    assert set(samples) == {200}, samples
    failed = await repo.get_task(task.id)
    assert failed.status == "failed"
    assert failed.error_message.startswith("rejected before deploy: ")
    assert "deploy" in failed.error_message
    assert failed.result["rejected_before_deploy"] is True
    events = await repo.task_events(task.id)
    assert ("validate", "failed") in steps(events)
    assert "maintenance-on" not in {step for step, _ in steps(events)}
    assert (await repo.current_release()).release_version == "1.0.0"
    [mail] = recording.records("notify")
    assert mail["error"].startswith("rejected before deploy: ")


@pytest.fixture
def in_process_breakable(recording_settings, breakable_site, monkeypatch) -> Any:
    for name, value in breakable_site.env.items():
        monkeypatch.setenv(name, value)
    return recording_settings.model_copy(
        update={"maintenance_mode_handler": breakable_site.handler}
    )


def _switch_off_failures() -> float:
    return (
        metrics.REGISTRY.get_sample_value("wrktalk_agent_maintenance_switch_off_failures_total")
        or 0.0
    )


async def test_a_switch_off_that_fails_once_is_retried_and_the_outcome_says_so(
    breakable_site, in_process_breakable, make_agent, recording, repo, tmp_path
):
    """The proxy refuses the switch-off once (nginx: the flag cannot be removed; HAProxy:
    its Runtime API is away, as during a restart). The agent retries until the site is
    back; the task, its timeline and the admins' mail say for how long it stayed on."""
    site = breakable_site
    files, started, go = held_release(tmp_path)
    task = await repo.create_task("deploy", (await add_release(repo, "1.0.0", files)).id)
    failures_before = _switch_off_failures()
    agent = await make_agent(in_process_breakable)
    async with running(agent) as runner:
        await deploy_started(started, runner)
        with site.switch_off_broken():
            go.touch()

            async def refused() -> bool:
                return ("maintenance-off", "failed") in steps(await repo.task_events(task.id))

            await eventually(refused, timeout=TASK_TIMEOUT, what="the switch-off failed")
            await site.assert_maintenance()  # really still on
            assert (await repo.get_task(task.id)).status == "inProgress"  # not told done yet
            await asyncio.sleep(0.5)
        assert await asyncio.wait_for(runner, TASK_TIMEOUT) == 0
    done = await repo.get_task(task.id)
    assert done.status == "completed" and done.error_message is None
    note = done.result["maintenance"]
    assert (
        note.startswith("stayed on ") and " longer than needed: switching it off failed (" in note
    )
    events = await repo.task_events(task.id)
    timeline = steps(events)
    assert timeline.index(("maintenance-off", "failed")) < timeline.index(
        ("maintenance-off", "succeeded")
    )
    assert message(events, "maintenance-off", "succeeded").startswith("switched off after ")
    [mail] = recording.records("notify")
    assert mail["outcome"] == "completed" and mail["maintenance"] == note
    assert _switch_off_failures() >= failures_before + 1
    await site.assert_up()
    assert await repo.maintenance_flag() is False
    assert await site.backend().status() is False


async def test_a_switch_off_failing_past_the_task_is_retried_by_the_agent(
    breakable_site, in_process_breakable, make_agent, recording, repo, tmp_path, monkeypatch
):
    """Still failing when the task's own retries end: the task fails saying maintenance is
    still on, the database and the metrics say a switch-off is pending, and the agent
    (not the next task) switches it off as soon as the proxy lets it."""
    site = breakable_site
    monkeypatch.setattr(maint, "TASK_RETRY_SECONDS", 1.5)
    monkeypatch.setattr(maint, "RETRY_MAX", 1.0)  # the backoff's ceiling, for the test
    files, started, go = held_release(tmp_path)
    task = await repo.create_task("deploy", (await add_release(repo, "1.0.0", files)).id)
    agent = await make_agent(in_process_breakable)
    runner = asyncio.create_task(agent.run())  # the daemon: its maintenance loop retries
    try:
        await deploy_started(started, runner)
        with site.switch_off_broken():
            go.touch()

            async def ended() -> bool:
                return (await repo.get_task(task.id)).status != "inProgress"

            await eventually(ended, timeout=TASK_TIMEOUT, what="the task ended")
            failed = await repo.get_task(task.id)
            assert failed.status == "failed"
            assert failed.error_message.startswith("maintenance mode still on ")
            assert "the agent keeps retrying" in failed.error_message
            assert (await repo.current_release()).release_version == "1.0.0"  # it is live
            state = await repo.maintenance_state()
            assert state.enabled and state.holds == [] and state.off_pending_since is not None
            await metrics.refresh_from_database(repo)
            pending = metrics.REGISTRY.get_sample_value(
                "wrktalk_agent_maintenance_off_pending_since_timestamp_seconds"
            )
            assert pending is not None and 0 < pending <= time.time()
            await site.assert_maintenance()
        # the proxy is back: the agent's loop switches maintenance off

        async def off() -> bool:
            return not await repo.maintenance_flag()

        await eventually(off, timeout=TASK_TIMEOUT, what="maintenance off")
        await site.assert_up()
        assert (await repo.maintenance_state()).off_pending_since is None
        [mail] = recording.records("notify")
        assert mail["maintenance"].startswith("still on ")
    finally:
        agent.request_stop("test over")
        agent.request_stop("test over")
        await asyncio.wait_for(runner, 30)


async def test_an_operators_window_during_a_task_is_a_hold_of_its_own(
    site, in_process, make_agent, recording, repo, tmp_path
):
    """bob opens and closes a window while a deploy runs: the site stays in maintenance
    for the deploy. alice's window, opened during the deploy, keeps it on after the task;
    the task says so; alice's `off` ends it."""
    files, started, go = held_release(tmp_path)
    task = await repo.create_task("deploy", (await add_release(repo, "1.0.0", files)).id)
    agent = await make_agent(in_process)
    handler = site.backend()
    async with running(agent) as runner:
        await deploy_started(started, runner)
        # /metrics says what the database says, at once (not only at the next refresh)
        assert _gauge("wrktalk_agent_maintenance_mode") == 1
        assert _gauge("wrktalk_agent_maintenance_holds", kind="task") == 1
        await maint.operator_on(repo, handler, who="bob", reason="look", timeout=10)
        bob_off = await maint.operator_off(repo, handler, who="bob", timeout=10)
        assert bob_off.released is not None and not bob_off.released.switched_off
        assert [h.holder for h in bob_off.state.holds] == [f"task:{task.id}"]
        await site.assert_maintenance()  # the deploy still holds it
        await maint.operator_on(repo, handler, who="alice", reason="db migration", timeout=10)
        go.touch()
        assert await asyncio.wait_for(runner, TASK_TIMEOUT) == 0
    done = await repo.get_task(task.id)
    assert done.status == "completed"
    events = await repo.task_events(task.id)
    assert message(events, "maintenance-off", "info") == (
        "stays on: held by operator alice (db migration)"
    )
    await site.assert_maintenance()
    state = await repo.maintenance_state()
    assert [h.holder for h in state.holds] == ["operator:alice"]
    assert _gauge("wrktalk_agent_maintenance_holds", kind="operator") == 1
    assert _gauge("wrktalk_agent_maintenance_holds", kind="task") == 0
    await maint.operator_off(repo, handler, who="alice", timeout=10)
    await site.assert_up()
    assert await repo.maintenance_flag() is False
    assert _gauge("wrktalk_agent_maintenance_mode") == 0


def _gauge(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)


async def test_off_force_ends_a_tasks_hold_and_says_so_in_its_timeline(nginx_proxy, repo, tmp_path):
    """The override: carol's `off --force` ends every hold, a running task's included,
    switches nginx off, and the task's timeline records who did it."""
    handler = NginxMaintenance(nginx_proxy.settings, plugin_context(tmp_path))
    task = await repo.create_task("deploy", (await add_release(repo, "1.0.0")).id)
    await repo.hold_maintenance(f"task:{task.id}", "deploy 1.0.0")
    await handler.enable("deploy 1.0.0")
    refused = maint.operator_off(repo, handler, who="carol", timeout=10)
    with pytest.raises(maint.BackendError, match="carol holds no maintenance window"):
        await refused
    assert nginx_proxy.get().status == 503
    forced = await maint.operator_off(repo, handler, who="carol", timeout=10, force=True)
    assert forced.released is not None and forced.released.switched_off
    assert [h.holder for h in forced.released.holds] == [f"task:{task.id}"]
    assert nginx_proxy.get().status == 200
    assert await repo.maintenance_flag() is False
    events = await repo.task_events(task.id)
    assert message(events, "maintenance-off", "info") == (
        "maintenance switched off by operator carol with --force"
    )


async def test_a_slow_proxy_never_delays_a_claim(nginx_proxy, repo, tmp_path):
    """An operator's `on` whose proxy takes 3 s (a reload command that sleeps) holds no
    lock a claim needs: a task is claimed meanwhile in well under a second."""
    settings = nginx_proxy.settings.model_copy(update={"reload_command": ["sleep", "3"]})
    handler = NginxMaintenance(settings, plugin_context(tmp_path))
    task = await repo.create_task("deploy", (await add_release(repo, "1.0.0")).id)
    switching = asyncio.create_task(
        maint.operator_on(repo, handler, who="alice", reason="slow proxy", timeout=10)
    )
    await eventually(nginx_proxy.flag_file.exists, timeout=5, what="the enable started")
    began = time.monotonic()
    polled = await repo.poll("claimer", 30, claim_token=uuid.uuid4(), instance_id=uuid.uuid4())
    claimed_in = time.monotonic() - began
    assert polled.claimed is not None and polled.claimed.id == task.id
    assert not switching.done()  # the proxy call was still running
    assert claimed_in < 1.0, claimed_in
    await switching
