"""End to end with the helm deployer: the agent drives the helm plugin's fake ``helm``
(plugins/helm/tests/fake_helm.py: Helm 3's CLI, a release history in a state file, and
failure injection), found on PATH like the real one. The fake logs every argv, so the
tests assert exactly what the agent ran."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from agent_helpers import agent_env, wait_until
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
helm_version = _helm.helm_version  # every test runs as Helm 3.16 and as Helm 4.2
_clean_env = _helm._clean_env  # autouse: the developer's WRKTALK_AGENT_HELM_* stay out
CHART_YAML = _helm.CHART_YAML
VALUES_YAML = _helm.VALUES_YAML  # holds dbPassword: s3cr3t-do-not-log
SECRET = "s3cr3t-do-not-log"
#: one harmless resource, so that `helm lint --strict` (the validate step) has a chart
TEMPLATE = """apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-web
data:
  version: {{ .Chart.AppVersion | quote }}
"""

RELEASE, NAMESPACE, TIMEOUT = "wrktalk-e2e", "wrktalk-e2e-ns", "2m"
#: the helm plugin's settings, as an operator would set them
HELM_ENV = {
    "WRKTALK_AGENT_HELM_RELEASE_NAME": RELEASE,
    "WRKTALK_AGENT_KUBE_NAMESPACE": NAMESPACE,
    "WRKTALK_AGENT_HELM_TIMEOUT": TIMEOUT,
}
TASK_TIMEOUT = 60

#: reads of Helm's own storage (never the cluster): the release's state, its history
STATE = ["history", RELEASE, "--max", "1", "--namespace", NAMESPACE, "--output", "json"]
HISTORY = ["history", RELEASE, "--max", "1000000", "--namespace", NAMESPACE, "--output", "json"]


async def helm_release(repo, version: str):
    return await add_release(
        repo,
        version,
        {
            "wrktalk/Chart.yaml": CHART_YAML.format(version=version),
            "wrktalk/templates/configmap.yaml": TEMPLATE,
        },
        chart_type="helm",
        values_data=VALUES_YAML,
    )


def actions(calls: list[list[str]]) -> list[list[str]]:
    """The calls that change the cluster (a server-side dry run changes nothing)."""
    return [
        c for c in calls
        if c[0] in ("upgrade", "rollback", "uninstall") and "--dry-run=server" not in c
    ]  # fmt: skip


def values(chart: Path) -> list[str]:
    return ["-f", str(chart.parent / "values.yaml")]


def upgrade(call: list[str], version: str, *extra: str, major: int = 3) -> list[str]:
    """The `helm upgrade --install` the agent must run for ``version``. The chart sits in
    the task's private temp dir, whose name is random: take it from ``call`` and check
    that it is the extracted release's chart, and the values file beside it."""
    chart = Path(call[3])
    assert (chart.name, chart.parent.name) == ("wrktalk", "release"), call
    return [
        "upgrade", "--install", RELEASE, str(chart),
        "--namespace", NAMESPACE, "--create-namespace", *values(chart), "--reset-values",
        wait(major), "--timeout", TIMEOUT, "--history-max", "10",
        "--atomic" if major == 3 else "--rollback-on-failure",
        "--description", f"wrktalk-agent release {version}",
        *extra,
    ]  # fmt: skip


#: a harmless WRKTALK_AGENT_HELM_EXTRA_ARGS
EXTRA = ["--set-string", "image.registry=registry.local"]


def wait_error(major: int, joined: str = "\n") -> str:
    """What the fake's Helm says when resources never get ready: Helm 4's watcher names
    each resource it gave up on (a Deployment named after the release), one per line."""
    if major == 3:
        return "context deadline exceeded"
    return (
        f"resource Deployment/{NAMESPACE}/{RELEASE} not ready. status: InProgress, "
        f"message: Available: 0/1{joined}context deadline exceeded"
    )


def wait(major: int) -> str:
    """Helm 4's bare --wait means the watcher strategy; the agent names it."""
    return "--wait" if major == 3 else "--wait=watcher"


def major_of(fake) -> int:
    return int(fake.version.lstrip("v").split(".")[0])


def validation(chart: Path, version: str, *extra: str) -> list[list[str]]:
    """What the validate step runs, before maintenance: lint, template, a server-side
    dry run of the same upgrade."""
    return [
        ["lint", "--strict", str(chart), "--namespace", NAMESPACE, *values(chart)],
        ["template", RELEASE, str(chart), "--namespace", NAMESPACE, *values(chart)],
        STATE,
        ["upgrade", "--install", RELEASE, str(chart), "--namespace", NAMESPACE,
         *values(chart), "--reset-values", "--dry-run=server",
         "--description", f"wrktalk-agent release {version}", *extra],
    ]  # fmt: skip


def assert_validated_first(calls: list[list[str]], chart: Path, version: str, *extra: str):
    """The validation calls appear in order, all before anything changes the cluster."""
    first_action = calls.index(actions(calls)[0])
    position = -1
    for expected in validation(chart, version, *extra):
        position = calls.index(expected, position + 1)
    assert position < first_action, calls


def rollback(revision: int, major: int = 3) -> list[str]:
    return [
        "rollback", RELEASE, str(revision),
        "--namespace", NAMESPACE, wait(major), "--timeout", TIMEOUT, "--history-max", "10",
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
    [action] = actions(calls)
    chart = Path(action[3])
    major = major_of(fake_helm)
    assert action == upgrade(action, "1.0.0", major=major)
    assert_validated_first(calls, chart, "1.0.0")
    assert calls[-1] == HISTORY  # the revision, from Helm's storage
    assert done.result["deployer"]["details"]["revision"] == 1
    assert await release_flags(repo) == ("1.0.0", None)

    fake_helm.clear_log()
    second = await repo.create_task("deploy", v2.id)
    done = await wait_for_task(repo, second.id, timeout=TASK_TIMEOUT, agent=agent)
    assert done.status == "completed", done.error_message
    calls = fake_helm.calls()
    assert ["version", "--template", "{{.Version}}"] not in calls  # asked once, at the first
    [action] = actions(calls)
    assert action == upgrade(action, "1.1.0", major=major)
    assert_validated_first(calls, Path(action[3]), "1.1.0")
    assert 'Release "wrktalk-e2e" has been upgraded' in done.result["deployer"]["output"]
    assert done.result["changes"] == ["changed ConfigMap/wrktalk-e2e-web"]
    assert await release_flags(repo) == ("1.1.0", "1.0.0")

    fake_helm.clear_log()
    back = await repo.create_task("rollback", None)
    done = await wait_for_task(repo, back.id, timeout=TASK_TIMEOUT, agent=agent)
    assert done.status == "completed", done.error_message
    # revision 1 is the one the agent created for 1.0.0
    calls = fake_helm.calls()
    assert actions(calls) == [rollback(1, major)]
    assert calls.index(STATE) < calls.index(rollback(1, major))
    assert done.result["deployer"]["details"]["rolled_back_to"] == 1
    assert "Rollback was a success!" in done.result["deployer"]["output"]
    assert history(fake_helm) == [
        (1, "superseded", "1.0.0", "wrktalk-agent release 1.0.0"),
        (2, "superseded", "1.1.0", "wrktalk-agent release 1.1.0"),
        (3, "deployed", "1.0.0", "Rollback to 1"),
    ]
    assert await release_flags(repo) == ("1.0.0", "1.1.0")
    events = await repo.task_events(back.id)
    notes = [e.message for e in events if (e.step, e.status) == ("rollback", "info")]
    assert any("to revision 1 (release 1.0.0)" in note for note in notes), notes

    # notifications go out from the outbox beside the agent's loop: wait for the third
    wait_until(lambda: len(recording.records("notify")) >= 3, 30)
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
    # a harmless extra argument: it reaches the upgrade, and only the upgrade
    monkeypatch.setenv("WRKTALK_AGENT_HELM_EXTRA_ARGS", json.dumps(EXTRA))
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
    why = "atomic" if major_of(fake_helm) == 3 else "rollback-on-failure"
    assert failed.error_message == (
        "helm upgrade to release 1.1.0 failed: Error: UPGRADE FAILED: release wrktalk-e2e "
        f"failed, and has been rolled back due to {why} being set: "
        + wait_error(major_of(fake_helm), joined="; ")
    )
    output = failed.result["deployer"]["output"]
    assert output.endswith(
        f"{why} being set: {wait_error(major_of(fake_helm))}"
    )  # Helm's error, whole, at the end of the kept output
    # the core's automatic rollback: `helm rollback` to 1.0.0's revision
    calls = fake_helm.calls()
    upgrade_call, back = actions(calls)
    major = major_of(fake_helm)
    assert upgrade_call == upgrade(upgrade_call, "1.1.0", *EXTRA, major=major)
    assert back == rollback(1, major)
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
        (2, "failed", "1.1.0", f'Upgrade "wrktalk-e2e" failed: {wait_error(major)}'),
        (3, "superseded", "1.0.0", "Rollback to 1"),
        (4, "deployed", "1.0.0", "Rollback to 1"),
    ]
    assert await release_flags(repo) == ("1.0.0", None)
    note = recording.records("notify")[-1]
    assert note["kind"] == "auto_rollback"
    assert (note["error"], note["rollback_error"]) == (failed.error_message, None)
    assert SECRET not in everything_recorded(failed, events)
    assert SECRET not in json.dumps(recording.records())
