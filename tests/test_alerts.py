"""The documented alert rules, checked with promtool against a live agent's /metrics."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from agent_helpers import agent_env, blocking_release, wait_until
from prometheus_client.parser import text_string_to_metric_families

from wrktalk_agent.testing import add_release

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "wrktalk-agent.rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "wrktalk-agent.rules.test.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian: prometheus)")


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, cwd=cwd, timeout=60, check=False
    )


@needs_promtool
def test_rules_are_valid_and_their_unit_tests_pass():
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_docs_show_the_rules_file():
    doc = (ROOT / "docs" / "operator.md").read_text()
    assert "deploy/prometheus/wrktalk-agent.rules.yml" in doc
    for rule in yaml.safe_load(RULES.read_text())["groups"][0]["rules"]:
        assert f"`{rule['alert']}`" in doc, f"{rule['alert']} is not documented"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            return r.read().decode()
    except OSError:
        return ""


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


def _value(samples, name: str, **labels: str) -> float:
    for got, value in samples[name]:
        if all(got.get(k) == v for k, v in labels.items()):
            return value
    raise AssertionError(f"no {name}{labels}")


@needs_promtool
async def test_a_live_agent_during_a_deploy_feeds_every_rule(
    recording_settings, recording, repo, spawn_agent, tmp_path
):
    release, started, go = await blocking_release(repo, tmp_path)
    task = await repo.create_task("deploy", release.id)
    port = _free_port()
    env = agent_env(
        recording_settings,
        recording,
        WRKTALK_AGENT_HTTP_PORT=str(port),
        WRKTALK_AGENT_HTTP_HOST="127.0.0.1",
    )
    proc = spawn_agent(env)
    wait_until(started.exists, 60)
    first = _samples(wait_until(lambda: _scrape(port), 20))
    beat = _value(first, "wrktalk_agent_last_heartbeat_timestamp_seconds")
    # the lease is renewed every 0.5 s here: the liveness clock moves during the deploy
    later = wait_until(
        lambda: (
            (s := _samples(_scrape(port)))
            and _value(s, "wrktalk_agent_last_heartbeat_timestamp_seconds") > beat
            and s
        ),
        20,
    )
    text = _scrape(port)
    go.touch()
    while (await repo.get_task(task.id)).status == "inProgress":
        time.sleep(0.05)

    checked = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    assert _value(later, "wrktalk_agent_running_tasks") == 1
    assert _value(later, "wrktalk_agent_running_task_started_timestamp_seconds") > 0
    assert _value(later, "wrktalk_agent_pending_tasks") == 0
    assert "process_resident_memory_bytes" in later and "process_cpu_seconds_total" in later
    assert not any(name.endswith("_created") for name in later), "the _created series are back"
    for task_type in ("deploy", "rollback"):  # counters exist before anything happened
        for outcome in ("completed", "failed", "taken away", "fenced"):
            _value(later, "wrktalk_agent_tasks_total", type=task_type, outcome=outcome)

    # every metric a rule reads exists in the agent's output
    referenced = set(re.findall(r"wrktalk_agent_\w+", RULES.read_text()))
    referenced |= {
        f"wrktalk_agent_last_{kind}_timestamp_seconds" for kind in ("successful_poll", "heartbeat")
    }
    referenced.discard("wrktalk_agent_last_")
    missing = referenced - set(later)
    assert not missing, f"rules read metrics the agent does not export: {missing}"

    # Replay the live values through promtool: ten minutes into this deploy (the poll
    # clock still, the heartbeat moving as measured) the database alert stays quiet.
    now = time.time()
    poll_age = now - _value(later, "wrktalk_agent_last_successful_poll_timestamp_seconds")
    beat_age = now - _value(later, "wrktalk_agent_last_heartbeat_timestamp_seconds")
    labels = 'job="wrktalk-agent",instance="live"'
    start_poll = -poll_age  # at t=10m its age is poll_age + 10 minutes
    start_beat = -beat_age  # renewed every minute from then on
    replay = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": "wrktalk_agent_last_successful_poll_timestamp_seconds"
                        f"{{{labels}}}",
                        "values": f"{start_poll:.3f}x15",
                    },
                    {
                        "series": f"wrktalk_agent_last_heartbeat_timestamp_seconds{{{labels}}}",
                        "values": f"{start_beat:.3f}+60x15",
                    },
                    {
                        "series": f"wrktalk_agent_running_tasks{{{labels}}}",
                        "values": f"{_value(later, 'wrktalk_agent_running_tasks'):g}x15",
                    },
                    {
                        "series": f"wrktalk_agent_maintenance_mode{{{labels}}}",
                        "values": f"{_value(later, 'wrktalk_agent_maintenance_mode'):g}x15",
                    },
                ],
                "alert_rule_test": [
                    {"eval_time": "10m", "alertname": name, "exp_alerts": []}
                    for name in ("WrkTalkAgentCannotReachDatabase", "WrkTalkMaintenanceLeftOn")
                ],
            }
        ],
    }
    replay_file = tmp_path / "replay.test.yml"
    replay_file.write_text(yaml.safe_dump(replay))
    replayed = promtool("test", "rules", str(replay_file))
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr

    # and once the task ended: idle again, the counter moved, the live release is known
    after = _samples(
        wait_until(
            lambda: (
                (t := _scrape(port))
                and 'wrktalk_agent_live_release_info{chart_type="compose",version="1.0.0"}' in t
                and t
            ),
            30,
        )
    )
    assert _value(after, "wrktalk_agent_running_tasks") == 0
    assert _value(after, "wrktalk_agent_tasks_total", type="deploy", outcome="completed") == 1
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


def _series(name: str, labels: str, values: str) -> dict[str, str]:
    return {"series": f"{name}{{{labels}}}", "values": values}


@needs_promtool
async def test_a_live_agent_after_a_recovery_with_an_operators_window_feeds_the_rules(
    recording_settings, recording, repo, spawn_agent, tmp_path
):
    """What a real agent exports when the database holds an operator's window, a task
    whose agent died, and a task scheduled two hours ahead — replayed through promtool:
    the window wakes someone after two hours, the recovered failure and the abandonment
    at once, and the scheduled task never counts as not picked up."""
    await repo.hold_maintenance("operator:alice", "db migration")
    await repo.pool.execute(
        "UPDATE agent_maintenance_hold SET since = now() - interval '30 minutes'"
    )
    recording.flag.write_text("alice's window")
    dead = await repo.create_task("deploy", (await add_release(repo, "1.0.0")).id)
    await repo.pool.execute(
        "UPDATE agent_task SET status='inProgress', claimed_by='gone', picked_up_at=now(),"
        " last_heartbeat=now() - interval '1 minute', lease_seconds=2 WHERE id=$1",
        dead.id,
    )
    await repo.pool.execute(
        "INSERT INTO agent_task (type, status, release_artifact_id, execute_after)"
        " SELECT 'deploy', 'pending', id, now() + interval '2 hours' FROM release_artifact"
    )
    port = _free_port()
    env = agent_env(
        recording_settings,
        recording,
        WRKTALK_AGENT_HTTP_PORT=str(port),
        WRKTALK_AGENT_HTTP_HOST="127.0.0.1",
    )
    proc = spawn_agent(env)
    try:
        scraped = _samples(
            wait_until(
                lambda: (
                    (t := _scrape(port))
                    and 'wrktalk_agent_tasks_total{outcome="failed",type="deploy"} 1.0' in t
                    and "wrktalk_agent_pending_tasks 1.0" in t
                    and t
                ),
                30,
            )
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0
    assert (await repo.get_task(dead.id)).status == "failed"
    now = time.time()
    assert _value(scraped, "wrktalk_agent_maintenance_mode") == 1  # the database's truth
    assert _value(scraped, "wrktalk_agent_maintenance_holds", kind="operator") == 1
    assert _value(scraped, "wrktalk_agent_maintenance_holds", kind="task") == 0
    since = _value(
        scraped, "wrktalk_agent_maintenance_hold_since_timestamp_seconds", kind="operator"
    )
    assert 1700 < now - since < 1900
    assert _value(scraped, "wrktalk_agent_due_tasks") == 0
    assert _value(scraped, "wrktalk_agent_abandoned_tasks_total") == 1

    # Replay: promtool's clock starts at 0. The scrape lands at t=`scraped_at` (the
    # window is `age` old then), every value stays as scraped; the counters were 0 before.
    age = round((now - since) / 60) * 60  # rules are evaluated each minute
    scraped_at = (age // 300 + 2) * 300
    labels = 'job="wrktalk-agent",instance="live"'
    steps = 40
    before = scraped_at // 300

    def scraped_series(name: str, extra: str = "", **match: str) -> dict[str, str]:
        value = _value(scraped, name, **match)
        return _series(name, labels + extra, f"{value:g}x{steps}")

    def counter(name: str, extra: str = "", **match: str) -> dict[str, str]:
        value = _value(scraped, name, **match)
        return _series(name, labels + extra, f"0x{before - 1} {value:g}x{steps - before}")

    window_opened = scraped_at - age
    quiet_at = window_opened + 7200 - 300  # the window is 1h55m old
    fires_at = window_opened + 7200 + 300  # 2h05m
    annotations = {
        "WrkTalkTaskFailed": {
            "summary": "a deploy task failed on live in the last hour",
            "description": "wrktalk-agent task list -o wide --status failed",
        },
        "WrkTalkTaskAbandoned": {
            "summary": "live recovered a task whose agent stopped heartbeating",
            "description": "wrktalk-agent task list --status failed; `task show` names the "
            "agent that ran it and what was found live.",
        },
        "WrkTalkMaintenanceWindowOpen": {
            "summary": "an operator's maintenance window has been open for 2h 5m 0s",
            "description": "wrktalk-agent maintenance status names who; "
            "`maintenance off --by <name>` ends it.",
        },
    }
    job = {"severity": "warning", "job": "wrktalk-agent"}

    def fires(name: str, at: int, **labels_: str) -> dict[str, Any]:
        alert = {"exp_labels": {**job, **labels_}, "exp_annotations": annotations[name]}
        return {"eval_time": f"{at}s", "alertname": name, "exp_alerts": [alert]}

    def quiet(name: str, at: int) -> dict[str, Any]:
        return {"eval_time": f"{at}s", "alertname": name, "exp_alerts": []}

    replay = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "5m",
                "input_series": [
                    scraped_series("wrktalk_agent_maintenance_mode"),
                    scraped_series(
                        "wrktalk_agent_maintenance_holds", ',kind="operator"', kind="operator"
                    ),
                    scraped_series("wrktalk_agent_maintenance_holds", ',kind="task"', kind="task"),
                    _series(
                        "wrktalk_agent_maintenance_hold_since_timestamp_seconds",
                        labels + ',kind="operator"',
                        f"{window_opened}x{steps}",
                    ),
                    scraped_series("wrktalk_agent_maintenance_off_pending_since_timestamp_seconds"),
                    scraped_series("wrktalk_agent_pending_tasks"),
                    scraped_series("wrktalk_agent_due_tasks"),
                    scraped_series("wrktalk_agent_running_tasks"),
                    counter(
                        "wrktalk_agent_tasks_total",
                        ',type="deploy",outcome="failed"',
                        type="deploy",
                        outcome="failed",
                    ),
                    counter("wrktalk_agent_abandoned_tasks_total"),
                ],
                "alert_rule_test": [
                    fires(
                        "WrkTalkTaskFailed",
                        scraped_at + 600,
                        instance="live",
                        type="deploy",
                        outcome="failed",
                    ),
                    fires("WrkTalkTaskAbandoned", scraped_at + 600, instance="live"),
                    quiet("WrkTalkMaintenanceWindowOpen", quiet_at),
                    fires("WrkTalkMaintenanceWindowOpen", fires_at),
                    *[
                        quiet(name, fires_at)
                        for name in (
                            "WrkTalkMaintenanceLeftOn",
                            "WrkTalkMaintenanceSwitchOffFailing",
                            "WrkTalkTasksNotPickedUp",
                        )
                    ],
                ],
            }
        ],
    }
    replay_file = tmp_path / "replay.test.yml"
    replay_file.write_text(yaml.safe_dump(replay))
    replayed = promtool("test", "rules", str(replay_file))
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
