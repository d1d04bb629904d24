"""Live output: what a deploy's commands print reaches the task's timeline while the task
runs — line by line, masked, bounded — through ``process.output_sink``."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from wrktalk_agent import live_output, process
from wrktalk_agent.builtins import script
from wrktalk_agent.live_output import LiveOutput, is_output, output_text
from wrktalk_agent.log import get_logger
from wrktalk_agent.pipeline import Secrets, Timeline
from wrktalk_agent.testing import TaskHarness, add_release

pytestmark = pytest.mark.timeout(120)

SECRET = "s3cr3t-value-4711"


async def _lines_of(args: list[str], **kwargs: object) -> tuple[list[str], process.CommandResult]:
    seen: list[str] = []
    with process.streaming_output(seen.append):
        result = await process.run(args, **kwargs)  # type: ignore[arg-type]
    return seen, result


async def test_commands_stream_lines_to_the_sink_of_their_context() -> None:
    program = (
        "import sys\n"
        "print('one'); print(); sys.stdout.write('progress 10%\\rprogress 90%\\r'); "
        "print('two', flush=True); print('no end'); sys.stdout.write('x' * 10000)"
    )
    seen, result = await _lines_of([sys.executable, "-c", program])
    assert result.ok
    assert seen[:4] == ["one", "progress 10%", "progress 90%", "two"]
    assert seen[4] == "no end"
    pieces = seen[5:]  # a line without end is cut into pieces, not buffered forever
    assert [len(p) for p in pieces] == [process.SINK_LINE_BYTES, process.SINK_LINE_BYTES, 1808]
    # outside the context nothing streams
    assert process.output_sink.get() is None


async def test_parsed_stdout_does_not_stream_but_stderr_does() -> None:
    program = "import sys; print('{\"json\": 1}'); print('warning: slow', file=sys.stderr)"
    seen, result = await _lines_of([sys.executable, "-c", program], capture_stdout=True)
    assert result.stdout == '{"json": 1}\n'
    assert seen == ["warning: slow"]


async def test_a_question_a_plugin_asks_stays_out_of_the_stream() -> None:
    program = "import sys; print('Docker Compose 2.26'); print('no such image', file=sys.stderr)"
    seen, result = await _lines_of([sys.executable, "-c", program], stream=False)
    assert seen == []
    assert result.ok and result.output == "Docker Compose 2.26\nno such image\n"


async def test_a_failing_sink_never_fails_the_command() -> None:
    calls: list[str] = []

    def broken(line: str) -> None:
        calls.append(line)
        raise RuntimeError("sink bug")

    with process.streaming_output(broken):
        result = await process.run([sys.executable, "-c", "print('a'); print('b')"])
    assert result.ok and result.output == "a\nb\n"
    assert calls == ["a"]  # dropped after its first error


async def test_output_is_masked_cut_and_capped(repo, task_harness: TaskHarness) -> None:
    release = await task_harness.add_release("1.0.0", {"a": "a"})
    task = await repo.create_task("deploy", release.id)
    secrets = Secrets()
    secrets.add(SECRET)
    timeline = Timeline(repo, task.id, "test-agent", get_logger(), secrets)
    output = LiveOutput(timeline, secrets, get_logger(), lambda: "deploy")
    output.line(f"password={SECRET} " + "y" * 1000)
    for n in range(live_output.MAX_LINES + 50):
        output.line(f"line {n}")
    output._hand_over()
    await timeline.flush()
    events = await repo.task_events(task.id)
    lines = [output_text(e.message) for e in events if is_output(e.message)]
    assert len(lines) == live_output.MAX_LINES
    assert SECRET not in lines[0] and lines[0].endswith("…")
    assert len(lines[0]) == live_output.LINE_CHARS
    assert events[-1].message.startswith(f"output cut after {live_output.MAX_LINES} lines")
    assert {(e.step, e.status) for e in events} == {("deploy", "info")}


async def test_a_deploy_shows_its_output_while_it_runs(
    repo, task_harness: TaskHarness, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    deploy_script = (
        "#!/bin/sh\n"
        "i=1\n"
        'while [ $i -le 5 ]; do echo "tick $i of $WRKTALK_RELEASE_VERSION"; i=$((i+1)); '
        "sleep 0.5; done\n"
        f'echo "connecting with {SECRET}"\n'
        f"while [ ! -e {go} ]; do sleep 0.1; done\n"
        "echo done\n"
    )
    task_harness.use(script, name="script").select(
        deployer="script", settings={"script": {"working_dir": str(tmp_path / "site")}}
    )
    release = await task_harness.add_release(
        "2.0.0", {"deploy": deploy_script}, env_data=f"API_TOKEN={SECRET}\n"
    )
    running = asyncio.create_task(task_harness.run("deploy", release.id))
    try:
        seen_live: list[str] = []
        while not any("connecting with" in line for line in seen_live):
            await asyncio.sleep(0.1)
            assert not running.done(), running.result()
            [task] = await repo.list_tasks()
            events = await repo.task_events(task.id)
            if task.status == "inProgress":
                seen_live = [output_text(e.message) for e in events if is_output(e.message)]
        # all of this was in the timeline while the task was still inProgress
        assert seen_live[:5] == [f"tick {i} of 2.0.0" for i in range(1, 6)]
        assert seen_live[5] == "connecting with ***"
        assert (await repo.get_task(task.id)).status == "inProgress"
        go.touch()
        report = await running
    finally:
        go.touch()
        await asyncio.wait({running}, timeout=60)
    assert report.status == "completed", report.error
    output = [e for e in report.timeline if is_output(e.message)]
    assert [output_text(e.message) for e in output][-1] == "done"
    assert {(e.step, e.status) for e in output} == {("deploy", "info")}
    assert all(SECRET not in e.message for e in report.timeline)
    # each line kept its own time, in order
    assert [e.created_at for e in output] == sorted(e.created_at for e in output)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "wrktalk_agent.cli", *args]


async def test_task_show_follow_prints_output_as_it_comes_and_exits_with_the_outcome(
    repo, database_url: str, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    deploy_script = (
        "#!/bin/sh\n"
        'for i in 1 2 3; do echo "tick $i"; sleep 0.5; done\n'
        f"while [ ! -e {go} ]; do sleep 0.1; done\n"
        "echo done\n"
    )
    release = await add_release(repo, "3.0.0", {"deploy": deploy_script})
    task = await repo.create_task("deploy", release.id)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRKTALK_AGENT_")}
    env.update(
        {
            "WRKTALK_AGENT_DATABASE_URL": database_url,
            "WRKTALK_AGENT_DEPLOYER": "script",
            "WRKTALK_AGENT_SCRIPT_WORKING_DIR": str(tmp_path / "site"),
            "WRKTALK_AGENT_WORK_DIR": str(tmp_path / "work"),
            "WRKTALK_AGENT_NOTIFIERS": "",
            "WRKTALK_AGENT_LOG_FORMAT": "json",
        }
    )
    agent_log = tmp_path / "agent.log"
    with agent_log.open("wb") as log_file:
        agent = await asyncio.create_subprocess_exec(
            *_cli("run", "--once"), env=env, stdout=log_file, stderr=log_file
        )
    follow = await asyncio.create_subprocess_exec(
        *_cli("task", "show", str(task.id), "--follow"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert follow.stdout is not None
    try:
        printed: list[str] = []
        while not any("│ tick 3" in line for line in printed):
            line = await asyncio.wait_for(follow.stdout.readline(), 60)
            assert line, f"follow ended early: {printed}"
            printed.append(line.decode())
        # printed while the deploy was still running
        assert (await repo.get_task(task.id)).status == "inProgress"
        assert any("inProgress" in line for line in printed)
        go.touch()
        rest = (await asyncio.wait_for(follow.stdout.read(), 60)).decode()
        assert await asyncio.wait_for(follow.wait(), 30) == 0
        assert await asyncio.wait_for(agent.wait(), 60) == 0
    finally:
        go.touch()
        for proc in (follow, agent):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert "│ done" in rest and "completed" in rest
    logs = agent_log.read_text().splitlines()
    logged = [json.loads(line) for line in logs if line.startswith("{")]
    outputs = [entry for entry in logged if entry.get("event") == "deploy.output"]
    assert outputs and all(entry["task_id"] == str(task.id) for entry in outputs)


async def test_task_show_follow_on_a_failed_task_exits_1(repo, database_url: str) -> None:
    release = await add_release(repo, "4.0.0", {"a": "a"})
    task = await repo.create_task("deploy", release.id)
    await repo.cancel_task(task.id, by="a test", via="test")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRKTALK_AGENT_")}
    env["WRKTALK_AGENT_DATABASE_URL"] = database_url
    proc = await asyncio.create_subprocess_exec(
        *_cli("task", "show", str(task.id), "--follow"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1, output
    assert "error: cancelled by a test" in output.decode()


async def test_a_timeline_is_one_order_by_id_and_time_and_show_and_follow_agree(
    repo, task_harness: TaskHarness, tmp_path: Path, database_url: str
) -> None:
    """A deploy prints and fails, the automatic rollback prints too. Every output line is
    stored inside its own step (before the entry that closes it), times never go back in
    id order, and `task show` and `task show --follow` print the same entries in the same
    order."""
    task_harness.use(script, name="script").select(
        deployer="script", settings={"script": {"working_dir": str(tmp_path / "site")}}
    )
    good = '#!/bin/sh\necho "installing $WRKTALK_RELEASE_VERSION"\necho ok\n'
    bad = (
        "#!/bin/sh\n"
        'for i in 1 2 3 4 5 6; do echo "step $i"; done\n'
        "echo 'the last words' >&2\nexit 3\n"
    )
    first = await task_harness.add_release("1.0.0", {"deploy": good})
    assert (await task_harness.run("deploy", first.id)).status == "completed"
    broken = await task_harness.add_release("2.0.0", {"deploy": bad})
    report = await task_harness.run("deploy", broken.id)
    assert report.status == "failed"
    [task] = [t for t in await repo.list_tasks() if t.release_artifact_id == broken.id]
    events = await repo.task_events(task.id)
    assert [e.created_at for e in events] == sorted(e.created_at for e in events)
    steps = [(e.step, e.status, output_text(e.message)) for e in events]
    deploy_closed = steps.index(("deploy", "failed", next(
        e.message for e in events if (e.step, e.status) == ("deploy", "failed")
    )))  # fmt: skip
    deploy_lines = [i for i, (step, _, _) in enumerate(steps) if step == "deploy"]
    assert max(deploy_lines) == deploy_closed  # nothing of the deploy after it closed
    assert steps[deploy_closed - 1] == ("deploy", "info", "the last words")
    rollback = [m for step, status, m in steps if step == "auto-rollback" and status == "info"]
    assert "installing 1.0.0" in rollback

    env = {k: v for k, v in os.environ.items() if not k.startswith("WRKTALK_AGENT_")}
    env["WRKTALK_AGENT_DATABASE_URL"] = database_url

    async def cli(*args: str) -> list[str]:
        proc = await asyncio.create_subprocess_exec(
            *_cli(*args), env=env, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        return [" ".join(line.split()) for line in out.decode().splitlines()]

    shown = await cli("task", "show", str(task.id))
    followed = await cli("task", "show", str(task.id), "--follow")
    table = shown[shown.index(next(line for line in shown if line.startswith("TIME"))) + 1 :]
    entries = [line for line in followed if line[:4].isdigit()]
    assert entries == table and len(entries) == len(events)
