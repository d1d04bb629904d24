"""End to end on a real Docker engine: the agent with the compose deployer.

Each release bundles the app image (``images/app.tar``, from ``docker save`` of a
busybox-static image built locally), a compose file publishing busybox httpd on a
loopback port, and ``www/index.html`` holding its version; ``env_data`` names the port.
What a release serves therefore tells which release is live.

No Docker engine: skipped with the reason, or failed when ``WRKTALK_E2E=1`` (the compose
plugin's ``docker_engine`` fixture decides).
"""

from __future__ import annotations

import json
import signal

import pytest
from agent_helpers import agent_env, wait_until
from e2e_support import (
    agent_log,
    everything_recorded,
    message,
    plugin_test_fixtures,
    plugin_test_module,
    release_flags,
    steps,
    wait_for_task,
)

from wrktalk_agent.testing import add_release

pytestmark = pytest.mark.e2e

# The compose plugin's Docker fixtures and helpers, from its own test suite.
_compose = plugin_test_fixtures("compose")
docker_engine = _compose.docker_engine
app_image = _compose.app_image
compose_project = _compose.compose_project
compose_variant = _compose.compose_variant  # each test runs under Compose v1 and v2
support = plugin_test_module("compose", "compose_support")

#: a deploy loads an image and waits for a health check: seconds, not minutes
TASK_TIMEOUT = 120
SECRET = "s3cr3t-api-token-do-not-log"


def bundle(image, version: str, compose: str | None = None) -> dict[str, bytes | str]:
    return {
        "docker-compose.yml": compose if compose is not None else support.compose_file(image.tag),
        "www/index.html": f"{version}\n",
        "images/app.tar": image.saved,
    }


def env_data(port: int, version: str) -> str:
    return f"APP_PORT={port}\nAPP_VERSION={version}\nAPI_TOKEN={SECRET}\n"


@pytest.fixture
def port() -> int:
    return support.free_loopback_port()


@pytest.fixture
def compose_env(compose_project, compose_variant, tmp_path) -> dict[str, str]:
    """The compose plugin's settings: this test's project and compose variant, a working
    dir in tmp."""
    return {
        "WRKTALK_AGENT_COMPOSE_COMMAND": compose_variant,
        "WRKTALK_AGENT_COMPOSE_PROJECT_NAME": compose_project.name,
        "WRKTALK_AGENT_COMPOSE_WORKING_DIR": str(tmp_path / "compose"),
        "WRKTALK_AGENT_COMPOSE_WAIT_TIMEOUT": "60",
    }


def container_env(project) -> list[list[str]]:
    return [c["Config"]["Env"] for c in project.inspect()]


async def test_deploy_upgrade_and_rollback_serve_each_release(
    agent_settings, recording, repo, spawn_agent, app_image, compose_project, compose_env, port
):
    app_image.remove()  # the engine can only get it from the bundle
    v1 = await add_release(
        repo, "1.0.0", bundle(app_image, "1.0.0"), env_data=env_data(port, "1.0.0")
    )
    v2 = await add_release(
        repo, "1.1.0", bundle(app_image, "1.1.0"), env_data=env_data(port, "1.1.0")
    )
    env = agent_env(
        agent_settings,
        recording,
        **compose_env,
        WRKTALK_AGENT_DEPLOYER="compose",
        WRKTALK_AGENT_MAINTENANCE_MODE_HANDLER="none",
        WRKTALK_AGENT_NOTIFIERS="recording",
        WRKTALK_AGENT_HEALTHCHECK_URL=f"http://127.0.0.1:{port}/",
        WRKTALK_AGENT_HEALTHCHECK_INTERVAL="0.5",
        WRKTALK_AGENT_HEALTHCHECK_RETRIES="20",
    )
    agent = spawn_agent(env)  # a daemon: it picks up each task as it is inserted

    first = await repo.create_task("deploy", v1.id)
    done = await wait_for_task(repo, first.id, timeout=TASK_TIMEOUT, agent=agent)
    assert done.status == "completed", done.error_message
    assert done.result["deployer"]["details"]["images_loaded"] == ["images/app.tar"]
    assert app_image.present()
    assert done.result["health"]["status"] == 200
    assert support.http_get(port) == "1.0.0\n"
    assert await release_flags(repo) == ("1.0.0", None)

    second = await repo.create_task("deploy", v2.id)
    done = await wait_for_task(repo, second.id, timeout=TASK_TIMEOUT, agent=agent)
    assert done.status == "completed", done.error_message
    assert done.result["release"] == {"version": "1.1.0", "from": "1.0.0"}
    assert support.http_get(port) == "1.1.0\n"
    assert await release_flags(repo) == ("1.1.0", "1.0.0")

    rollback = await repo.create_task("rollback", None)
    done = await wait_for_task(repo, rollback.id, timeout=TASK_TIMEOUT, agent=agent)
    assert done.status == "completed", done.error_message
    assert done.result["release"] == {"version": "1.0.0", "from": "1.1.0"}
    events = await repo.task_events(rollback.id)
    assert ("rollback", "succeeded") in steps(events)
    assert support.http_get(port) == "1.0.0\n"
    assert await release_flags(repo) == ("1.0.0", "1.1.0")
    # one container, running the 1.0.0 release's environment
    [environment] = container_env(compose_project)
    assert "APP_VERSION=1.0.0" in environment

    # notifications go out from the outbox beside the agent's loop: wait for the third
    wait_until(lambda: len(recording.records("notify")) >= 3, 30)
    kinds = [n["kind"] for n in recording.records("notify")]
    assert kinds == ["deploy_succeeded", "deploy_succeeded", "rollback_succeeded"]
    for task in (first, second, rollback):
        recorded = await repo.get_task(task.id)
        assert SECRET not in everything_recorded(recorded, await repo.task_events(task.id))
    assert list(agent_settings.work_dir.iterdir()) == []  # temp dirs securely deleted

    agent.send_signal(signal.SIGTERM)
    assert agent.wait(30) == 0
    assert SECRET not in agent_log(agent)


async def test_release_that_never_becomes_healthy_is_rolled_back(
    agent_settings, recording, repo, make_agent, app_image, compose_project, compose_env, port,
    monkeypatch,
):  # fmt: skip
    for name, value in compose_env.items():  # plugin settings come from the environment
        monkeypatch.setenv(name, value)
    settings = agent_settings.model_copy(
        update={
            "deployer": "compose",
            "notifiers": ["recording"],
            "extra_plugins": ["wrktalk_test_plugin"],
            "healthcheck_url": f"http://127.0.0.1:{port}/",
            "healthcheck_interval": 0.5,
            "healthcheck_retries": 20,
        }
    )
    good = await add_release(
        repo, "1.0.0", bundle(app_image, "1.0.0"), env_data=env_data(port, "1.0.0")
    )
    sick = support.compose_file(app_image.tag, healthcheck=support.NEVER_HEALTHY)
    bad = await add_release(
        repo, "1.1.0", bundle(app_image, "1.1.0", sick), env_data=env_data(port, "1.1.0")
    )
    agent = await make_agent(settings)
    await repo.create_task("deploy", good.id)
    assert await agent.run(once=True) == 0
    assert support.http_get(port) == "1.0.0\n"

    task = await repo.create_task("deploy", bad.id)
    assert await agent.run(once=True) == 1

    failed = await repo.get_task(task.id)
    assert failed.status == "failed"
    # the deploy failure: which container, in what state, and its own log lines
    assert "(running, unhealthy)" in failed.error_message
    assert "booting web 1.1.0" in failed.result["deployer"]["output"]
    # the automatic rollback, and that it brought 1.0.0 back
    assert failed.result["auto_rollback"]["to"] == "1.0.0"
    assert failed.result["auto_rollback"]["ok"] is True
    events = await repo.task_events(task.id)
    timeline = steps(events)
    assert message(events, "deploy", "failed") == failed.error_message
    assert message(events, "auto-rollback", "succeeded") == "1.0.0 restored"
    assert timeline.index(("deploy", "failed")) < timeline.index(("auto-rollback", "succeeded"))
    assert ("health", "succeeded") in timeline[timeline.index(("deploy", "failed")) :]
    assert support.http_get(port) == "1.0.0\n"
    [environment] = container_env(compose_project)
    assert "APP_VERSION=1.0.0" in environment
    # the failed release never became current
    assert await release_flags(repo) == ("1.0.0", None)
    note = recording.records("notify")[-1]
    assert note["kind"] == "auto_rollback"
    assert (note["error"], note["rollback_error"]) == (failed.error_message, None)
    assert SECRET not in json.dumps(failed.result)
