"""End to end with the helm deployer: the agent drives the helm plugin's fake ``helm``
(plugins/helm/tests/fake_helm.py: Helm 3's CLI, a release history in a state file, and
failure injection), found on PATH like the real one. The fake logs every argv, so the
tests assert exactly what the agent ran."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from agent_helpers import agent_env
from e2e_support import (
    agent_log,
    everything_recorded,
    message,
    plugin_test_fixtures,
    release_flags,
    steps,
    wait_for_task,
)

from wrktalk_agent.testing import add_release

_helm = plugin_test_fixtures("helm")
fake_helm = _helm.fake_helm
_clean_env = _helm._clean_env  # autouse: the developer's WRKTALK_AGENT_HELM_* stay out
CHART_YAML = _helm.CHART_YAML
VALUES_YAML = _helm.VALUES_YAML  # holds dbPassword: s3cr3t-do-not-log
SECRET = "s3cr3t-do-not-log"

RELEASE, NAMESPACE, TIMEOUT = "wrktalk-e2e", "wrktalk-e2e-ns", "2m"
#: the helm plugin's settings, as an operator would set them
HELM_ENV = {
    "WRKTALK_AGENT_HELM_RELEASE_NAME": RELEASE,
    "WRKTALK_AGENT_KUBE_NAMESPACE": NAMESPACE,
    "WRKTALK_AGENT_HELM_TIMEOUT": TIMEOUT,
}
TASK_TIMEOUT = 60

VERSION = ["version", "--template", "{{.Version}}"]
STATUS = ["status", RELEASE, "--namespace", NAMESPACE, "--output", "json"]
HISTORY = ["history", RELEASE, "--namespace", NAMESPACE, "--output", "json"]


async def helm_release(repo, version: str):
    return await add_release(
        repo,
        version,
        {"wrktalk/Chart.yaml": CHART_YAML.format(version=version)},
        chart_type="helm",
        values_data=VALUES_YAML,
    )


def upgrade(call: list[str], version: str, *extra: str) -> list[str]:
    """The `helm upgrade --install` the agent must run for ``version``. The chart sits in
    the task's private temp dir, whose name is random: take it from ``call`` and check
    that it is the extracted release's chart, and the values file beside it."""
    chart = Path(call[3])
    assert (chart.name, chart.parent.name) == ("wrktalk", "release"), call
    return [
        "upgrade", "--install", RELEASE, str(chart),
        "--namespace", NAMESPACE, "--create-namespace",
        "-f", str(chart.parent / "values.yaml"),
        "--wait", "--timeout", TIMEOUT, "--history-max", "10", "--atomic",
        "--description", f"wrktalk-agent release {version}",
        *extra,
    ]  # fmt: skip


def rollback(revision: int) -> list[str]:
    return [
        "rollback", RELEASE, str(revision),
        "--namespace", NAMESPACE, "--wait", "--timeout", TIMEOUT, "--history-max", "10",
    ]  # fmt: skip


def history(fake) -> list[tuple[int, str, str, str]]:
    """(revision, status, app version, description) of the fake cluster's release."""
    return [
        (r["revision"], r["status"], r["app_version"], r["description"])
        for r in fake.revisions(RELEASE, NAMESPACE)
    ]


async def test_deploy_upgrade_and_rollback_run_the_right_helm_commands(
    agent_settings, recording, repo, spawn_agent, fake_helm
):
    v1 = await helm_release(repo, "1.0.0")
    v2 = await helm_release(repo, "1.1.0")
    env = agent_env(
        agent_settings,
        recording,
        **HELM_ENV,
        WRKTALK_AGENT_DEPLOYER="helm",
        WRKTALK_AGENT_MAINTENANCE_MODE_HANDLER="none",
        WRKTALK_AGENT_NOTIFIERS="recording",
        # the fake helm, for an agent in another process: PATH and the fake's own files
        PATH=os.environ["PATH"],
        FAKE_HELM_STATE=str(fake_helm.state_path),
        FAKE_HELM_LOG=str(fake_helm.log_path),
    )
    assert env["PATH"].split(os.pathsep)[0] == str(fake_helm.bin_dir)
    agent = spawn_agent(env)

    first = await repo.create_task("deploy", v1.id)
    done = await wait_for_task(repo, first.id, timeout=TASK_TIMEOUT, agent=agent)
    assert done.status == "completed", done.error_message
    calls = fake_helm.calls()
    assert calls == [VERSION, STATUS, upgrade(calls[2], "1.0.0"), HISTORY]
    assert done.result["deployer"]["details"]["revision"] == 1
    assert await release_flags(repo) == ("1.0.0", None)

    fake_helm.clear_log()
    second = await repo.create_task("deploy", v2.id)
    done = await wait_for_task(repo, second.id, timeout=TASK_TIMEOUT, agent=agent)
    assert done.status == "completed", done.error_message
    calls = fake_helm.calls()
    # the Helm version was asked once, at the first deploy
    assert calls == [STATUS, upgrade(calls[1], "1.1.0"), HISTORY]
    assert 'Release "wrktalk-e2e" has been upgraded' in done.result["deployer"]["output"]
    assert await release_flags(repo) == ("1.1.0", "1.0.0")

    fake_helm.clear_log()
    back = await repo.create_task("rollback", None)
    done = await wait_for_task(repo, back.id, timeout=TASK_TIMEOUT, agent=agent)
    assert done.status == "completed", done.error_message
    # revision 1 is the one the agent created for 1.0.0
    assert fake_helm.calls() == [STATUS, HISTORY, rollback(1), HISTORY]
    assert done.result["deployer"]["details"]["rolled_back_to"] == 1
    assert "Rollback was a success!" in done.result["deployer"]["output"]
    assert history(fake_helm) == [
        (1, "superseded", "1.0.0", "wrktalk-agent release 1.0.0"),
        (2, "superseded", "1.1.0", "wrktalk-agent release 1.1.0"),
        (3, "deployed", "1.0.0", "Rollback to 1"),
    ]
    assert await release_flags(repo) == ("1.0.0", "1.1.0")
    events = await repo.task_events(back.id)
    assert "to revision 1 (release 1.0.0)" in message(events, "rollback", "info")

    kinds = [n["kind"] for n in recording.records("notify")]
    assert kinds == ["deploy_succeeded", "deploy_succeeded", "rollback_succeeded"]
    for task in (first, second, back):  # values_data is passed as a file, never shown
        recorded = await repo.get_task(task.id)
        assert SECRET not in everything_recorded(recorded, await repo.task_events(task.id))
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(30) == 0
    assert SECRET not in agent_log(agent)


async def test_failed_upgrade_fails_the_task_with_helms_error_and_is_rolled_back(
    agent_settings, recording, repo, make_agent, fake_helm, monkeypatch
):
    for name, value in HELM_ENV.items():  # plugin settings come from the environment
        monkeypatch.setenv(name, value)
    # --debug makes the fake print a long wait log, so the output tail must be cut
    monkeypatch.setenv("WRKTALK_AGENT_HELM_EXTRA_ARGS", '["--debug"]')
    settings = agent_settings.model_copy(
        update={
            "deployer": "helm",
            "notifiers": ["recording"],
            "extra_plugins": ["wrktalk_test_plugin"],
        }
    )
    agent = await make_agent(settings)
    await repo.create_task("deploy", (await helm_release(repo, "1.0.0")).id)
    assert await agent.run(once=True) == 0

    fake_helm.configure(inject={"upgrade": "timeout"})  # pods never get ready
    fake_helm.clear_log()
    task = await repo.create_task("deploy", (await helm_release(repo, "1.1.0")).id)
    assert await agent.run(once=True) == 1

    failed = await repo.get_task(task.id)
    assert failed.status == "failed"
    assert failed.error_message == (
        "helm upgrade to release 1.1.0 failed: Error: UPGRADE FAILED: release wrktalk-e2e "
        "failed, and has been rolled back due to atomic being set: context deadline exceeded"
    )
    output = failed.result["deployer"]["output"]
    lines = output.splitlines()
    assert lines[-1].startswith("Error: UPGRADE FAILED:")
    assert "0 out of 1 expected pods are ready" in output
    assert len(lines) <= 100  # the fake printed 300 lines of waiting
    # the core's automatic rollback: `helm rollback` to 1.0.0's revision
    calls = fake_helm.calls()
    assert calls == [
        STATUS, upgrade(calls[1], "1.1.0", "--debug"), STATUS, HISTORY, rollback(1), HISTORY,
    ]  # fmt: skip
    assert failed.result["auto_rollback"]["to"] == "1.0.0"
    assert failed.result["auto_rollback"]["ok"] is True
    assert "Rollback was a success!" in failed.result["auto_rollback"]["output"]
    events = await repo.task_events(task.id)
    timeline = steps(events)
    assert message(events, "deploy", "failed") == failed.error_message
    assert message(events, "auto-rollback", "succeeded") == "1.0.0 restored"
    assert timeline.index(("deploy", "failed")) < timeline.index(("auto-rollback", "succeeded"))
    # Helm's own atomic rollback (revision 3), then the agent's (revision 4): 1.0.0 runs
    assert history(fake_helm)[1:] == [
        (2, "failed", "1.1.0", 'Upgrade "wrktalk-e2e" failed: context deadline exceeded'),
        (3, "superseded", "1.0.0", "Rollback to 1"),
        (4, "deployed", "1.0.0", "Rollback to 1"),
    ]
    assert await release_flags(repo) == ("1.0.0", None)
    note = recording.records("notify")[-1]
    assert note["kind"] == "auto_rollback"
    assert (note["error"], note["rollback_error"]) == (failed.error_message, None)
    assert SECRET not in everything_recorded(failed, events)
    assert SECRET not in json.dumps(recording.records())
