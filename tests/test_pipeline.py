"""One task through the pipeline, in process, against a real database."""

from __future__ import annotations

import json

from wrktalk_agent.testing import add_release, make_tarball


async def test_deploy_completes_and_promotes(make_agent, recording_settings, recording, repo):
    first = await add_release(repo, "1.0.0", env_data="SECRET=hunter2\n", values_data="a: 1\n")
    task = await repo.create_task("deploy", first.id)
    agent = await make_agent(recording_settings)

    assert await agent.run(once=True) == 0

    done = await repo.get_task(task.id)
    assert done.status == "completed"
    assert done.claimed_by == "test-agent"
    assert done.picked_up_at is not None and done.completed_at is not None
    assert (await repo.current_release()).release_version == "1.0.0"
    assert await repo.previous_release() is None
    steps = [(e.step, e.status) for e in await repo.task_events(task.id)]
    assert steps[0] == ("claimed", "info")
    for expected in [
        ("artifact", "succeeded"),
        ("maintenance-on", "succeeded"),
        ("deploy", "succeeded"),
        ("maintenance-off", "succeeded"),
        ("notify", "info"),
    ]:
        assert expected in steps
    assert steps.index(("maintenance-on", "succeeded")) < steps.index(("deploy", "succeeded"))
    assert steps.index(("deploy", "succeeded")) < steps.index(("maintenance-off", "succeeded"))
    [start] = recording.records("start")
    assert start["env"] == "SECRET=hunter2\n" and start["env_mode"] == "0o600"
    assert start["current"] is None
    result = done.result
    assert result["deployer"]["output"] == "deploy 1.0.0 ok"
    assert {s["step"] for s in result["steps"]} >= {"resolve", "artifact", "deploy"}
    assert "hunter2" not in json.dumps(result)
    assert not recording.flag.exists()  # maintenance off again
    assert await repo.maintenance_flag() is False
    [note] = recording.records("notify")
    assert note["kind"] == "deploy_succeeded"
    # the work dir is gone: secure delete after success
    assert list(recording_settings.work_dir.iterdir()) == []


async def test_deploy_then_rollback_swaps_flags(make_agent, recording_settings, repo):
    v1 = await add_release(repo, "1.0.0")
    v2 = await add_release(repo, "1.1.0")
    agent = await make_agent(recording_settings)
    await repo.create_task("deploy", v1.id)
    assert await agent.run(once=True) == 0
    await repo.create_task("deploy", v2.id)
    assert await agent.run(once=True) == 0
    assert (await repo.current_release()).release_version == "1.1.0"
    assert (await repo.previous_release()).release_version == "1.0.0"

    rollback = await repo.create_task("rollback", None)
    assert await agent.run(once=True) == 0
    assert (await repo.get_task(rollback.id)).status == "completed"
    assert (await repo.current_release()).release_version == "1.0.0"
    assert (await repo.previous_release()).release_version == "1.1.0"


async def test_rollback_without_previous_fails_before_touching_anything(
    make_agent, recording_settings, recording, repo
):
    task = await repo.create_task("rollback", None)
    agent = await make_agent(recording_settings)
    assert await agent.run(once=True) == 1
    failed = await repo.get_task(task.id)
    assert failed.status == "failed"
    assert failed.error_message == "no previous release to roll back to"
    assert recording.records("start") == []
    assert recording.records("maintenance") == []


async def test_sha256_mismatch_fails_and_deployer_never_runs(
    make_agent, recording_settings, recording, repo
):
    bad = await add_release(repo, "1.0.0", sha256="AB" * 32)
    task = await repo.create_task("deploy", bad.id)
    agent = await make_agent(recording_settings)
    assert await agent.run(once=True) == 1
    failed = await repo.get_task(task.id)
    assert failed.error_message.startswith("sha256 mismatch: expected " + "ab" * 32 + ", got ")
    assert recording.records("start") == []
    assert list(recording_settings.work_dir.iterdir()) == []


async def test_chart_type_not_accepted_by_deployer(make_agent, recording_settings, repo):
    settings = recording_settings.model_copy(update={"deployer": "script"})
    helm = await add_release(repo, "2.0.0", chart_type="helm")
    task = await repo.create_task("deploy", helm.id)
    agent = await make_agent(settings)
    # the script deployer takes any chart type: make it refuse through the real check
    agent.services.deployer.chart_types = ("compose",)  # type: ignore[misc]
    assert await agent.run(once=True) == 1
    assert (await repo.get_task(task.id)).error_message == (
        "release 2.0.0 has chart_type 'helm', but deployer 'script' accepts compose"
    )


async def test_failed_deploy_is_rolled_back_automatically(
    make_agent, recording_settings, recording, repo
):
    good = await add_release(repo, "1.0.0")
    bad = await add_release(
        repo, "1.1.0", {"behaviour.json": json.dumps({"fail": "pods crashlooping"})}
    )
    agent = await make_agent(recording_settings)
    await repo.create_task("deploy", good.id)
    assert await agent.run(once=True) == 0
    task = await repo.create_task("deploy", bad.id)
    assert await agent.run(once=True) == 1

    failed = await repo.get_task(task.id)
    assert failed.status == "failed"
    assert failed.error_message == "pods crashlooping"
    assert failed.result["auto_rollback"]["ok"] is True
    assert failed.result["auto_rollback"]["to"] == "1.0.0"
    assert "the tool said: pods crashlooping" in failed.result["deployer"]["output"]
    actions = [(r["action"], r["version"]) for r in recording.records("start")]
    assert actions[-2:] == [("deploy", "1.1.0"), ("auto-rollback", "1.0.0")]
    # flags untouched: 1.0.0 is still current, nothing previous
    assert (await repo.current_release()).release_version == "1.0.0"
    assert await repo.previous_release() is None
    note = recording.records("notify")[-1]
    assert note["kind"] == "auto_rollback"
    assert note["error"] == "pods crashlooping" and note["rollback_error"] is None


async def test_auto_rollback_off(make_agent, recording_settings, recording, repo):
    settings = recording_settings.model_copy(update={"auto_rollback": False})
    good = await add_release(repo, "1.0.0")
    bad = await add_release(repo, "1.1.0", {"behaviour.json": json.dumps({"fail": "boom"})})
    agent = await make_agent(settings)
    await repo.create_task("deploy", good.id)
    await agent.run(once=True)
    await repo.create_task("deploy", bad.id)
    assert await agent.run(once=True) == 1
    assert [r["action"] for r in recording.records("start")] == ["deploy", "deploy"]
    assert recording.records("notify")[-1]["kind"] == "deploy_failed"


async def test_health_check_failure_triggers_rollback(
    make_agent, recording_settings, recording, repo
):
    settings = recording_settings.model_copy(
        update={
            "healthcheck_url": "http://127.0.0.1:9/health",
            "healthcheck_retries": 2,
            "healthcheck_timeout": 0.5,
        }
    )
    await repo.create_task("deploy", (await add_release(repo, "1.0.0")).id)
    agent = await make_agent(recording_settings)
    await agent.run(once=True)
    task = await repo.create_task("deploy", (await add_release(repo, "1.1.0")).id)
    agent2 = await make_agent(settings)
    assert await agent2.run(once=True) == 1
    failed = await repo.get_task(task.id)
    assert failed.error_message.startswith("health check failed: http://127.0.0.1:9/health")
    assert failed.result["health"]["attempts"] == 2
    assert failed.result["auto_rollback"]["to"] == "1.0.0"


async def test_maintenance_enable_failure_stops_before_deployer(
    make_agent, recording_settings, recording, repo, monkeypatch
):
    monkeypatch.setenv("WRKTALK_AGENT_RECORDING_FAIL_ENABLE", "true")
    task = await repo.create_task("deploy", (await add_release(repo, "1.0.0")).id)
    agent = await make_agent(recording_settings)
    assert await agent.run(once=True) == 1
    failed = await repo.get_task(task.id)
    assert failed.error_message == (
        "maintenance mode could not be enabled: no such backend 'wrong' (test)"
    )
    assert recording.records("start") == []


async def test_notifier_crash_never_fails_the_task(make_agent, recording_settings, repo):
    settings = recording_settings.model_copy(update={"notifiers": ["exploding", "recording"]})
    task = await repo.create_task("deploy", (await add_release(repo, "1.0.0")).id)
    agent = await make_agent(settings)
    assert await agent.run(once=True) == 0
    done = await repo.get_task(task.id)
    assert done.status == "completed"
    assert done.result["notifications"]["exploding"][0]["ok"] is False
    assert "notifier bug" in done.result["notifications"]["exploding"][0]["detail"]


async def test_cancelled_task_is_never_claimed(make_agent, recording_settings, recording, repo):
    task = await repo.create_task("deploy", (await add_release(repo, "1.0.0")).id)
    assert await repo.cancel_task(task.id, by="test", via="test") is not None
    agent = await make_agent(recording_settings)
    assert await agent.run(once=True) == 0
    cancelled = await repo.get_task(task.id)
    assert cancelled.error_message == "cancelled by test (test)"
    assert cancelled.result == {"cancelled": True, "by": "test"}
    assert recording.records("start") == []


async def test_unsafe_tarball_fails_task(make_agent, recording_settings, recording, repo):
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    bad = await add_release(repo, "1.0.0", data=buf.getvalue())
    task = await repo.create_task("deploy", bad.id)
    agent = await make_agent(recording_settings)
    assert await agent.run(once=True) == 1
    failed = await repo.get_task(task.id)
    assert failed.error_message.startswith("unsafe member '../escape.txt'")
    assert recording.records("start") == []
    assert not (recording_settings.work_dir / "escape.txt").exists()


def test_make_tarball_roundtrip():
    assert make_tarball({"a": "b"})[:2] == b"\x1f\x8b"


async def test_release_version_with_flag_characters_never_reaches_a_deployer(
    make_agent, recording_settings, recording, repo
):
    bad = await add_release(repo, "1.0.0")
    await repo.pool.execute(
        "UPDATE release_artifact SET release_version = '--set x=1; rm -rf' WHERE id = $1", bad.id
    )
    task = await repo.create_task("deploy", bad.id)
    agent = await make_agent(recording_settings)
    assert await agent.run(once=True) == 1
    failed = await repo.get_task(task.id)
    # refused by the poll that would have claimed it, column and value named
    assert failed.status == "failed"
    assert "release_version '--set x=1; rm -rf'" in failed.error_message
    assert recording.records("start") == []
    assert recording.records("maintenance") == []


async def test_rollback_refuses_when_previous_changed_since_requested(
    make_agent, recording_settings, recording, repo
):
    agent = await make_agent(recording_settings)
    v1, v2, v3 = [await add_release(repo, v) for v in ("1.0.0", "1.1.0", "1.2.0")]
    for release in (v1, v2):
        await repo.create_task("deploy", release.id)
        assert await agent.run(once=True) == 0
    rollback = await repo.create_task("rollback", v1.id)  # confirmed: back to 1.0.0
    await repo.create_task("deploy", v3.id)  # ...but 1.2.0 was queued earlier and runs first
    await repo.pool.execute(
        "UPDATE agent_task SET created_at = created_at - interval '1 hour' WHERE type='deploy'"
        " AND release_artifact_id = $1",
        v3.id,
    )
    assert await agent.run(once=True) == 0  # 1.2.0 deployed: previous is now 1.1.0
    assert await agent.run(once=True) == 1
    failed = await repo.get_task(rollback.id)
    assert failed.error_message == (
        "rollback to 1.0.0 requested, but the previous release is now 1.1.0"
    )
    assert (await repo.current_release()).release_version == "1.2.0"


async def test_hung_deployer_is_stopped_and_rolled_back(
    make_agent, recording_settings, recording, repo
):
    settings = recording_settings.model_copy(update={"deploy_timeout": 0.5})
    agent = await make_agent(settings)
    await repo.create_task("deploy", (await add_release(repo, "1.0.0")).id)
    assert await agent.run(once=True) == 0
    hung = await add_release(repo, "1.1.0", {"behaviour.json": json.dumps({"sleep": 30})})
    task = await repo.create_task("deploy", hung.id)
    assert await agent.run(once=True) == 1
    failed = await repo.get_task(task.id)
    assert failed.error_message == (
        "deploy did not finish within 0.5s (WRKTALK_AGENT_DEPLOY_TIMEOUT)"
    )
    assert failed.result["auto_rollback"] == {
        "to": "1.0.0",
        "ok": True,
        "output": "auto-rollback 1.0.0 ok",
    }
    assert not recording.flag.exists()


async def test_what_a_deploy_changes_is_in_the_timeline_the_result_and_the_email(
    make_agent, recording_settings, recording, repo
):
    """The deployer's comparison of the live release with the target is made before
    maintenance goes on and reported everywhere an operator or admin looks."""
    await add_release(repo, "1.0.0", {"app.txt": "one", "old.txt": "x"})
    second = await add_release(repo, "2.0.0", {"app.txt": "two", "new.txt": "y"})
    agent = await make_agent(recording_settings)
    await repo.create_task("deploy", (await repo.release_by_version("1.0.0")).id)
    assert await agent.run(once=True) == 0
    task = await repo.create_task("deploy", second.id)
    assert await agent.run(once=True) == 0
    done = await repo.get_task(task.id)
    assert done.result["changes"] == ["added new.txt", "removed old.txt"]
    events = await repo.task_events(task.id)
    steps = [e.step for e in events]
    assert steps.index("changes") < steps.index("maintenance-on")
    assert [e.message for e in events if e.step == "changes" and e.status == "info"] == [
        "added new.txt",
        "removed old.txt",
    ]
    mail = [r for r in recording.records("notify") if r["task"] == str(task.id)]
    assert mail[0]["changes"] == ["added new.txt", "removed old.txt"]
