"""What the dashboard writes: masking, times, durations, the deploy time field, results."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest

from wrktalk_agent.db.models import Task, TaskEvent
from wrktalk_agent.tui import format as fmt
from wrktalk_agent.tui.screens import result_text, step_durations

NOW = datetime(2025, 3, 14, 2, 30, tzinfo=UTC)


def test_mask_secrets_masks_keys_at_any_depth_and_credentials_inside_text() -> None:
    result = {
        "smtp_password": "p1",
        "deployer": {
            "details": {"API_KEY": "p2", "auth_token": "p3", "revision": 7, "token_count": None},
            "output": "ok\nconnect postgresql://app:p4@db/app\nexport DB_PASSWORD='p5'\n"
            'secret: "p 6"\n',
        },
        "items": [{"client_secret": "p7"}, "plain"],
    }
    masked = fmt.mask_secrets(result)
    assert masked == {
        "smtp_password": "***",
        "deployer": {
            "details": {"API_KEY": "***", "auth_token": "***", "revision": 7, "token_count": None},
            "output": "ok\nconnect postgresql://app:***@db/app\nexport DB_PASSWORD=***\n"
            "secret: ***\n",
        },
        "items": [{"client_secret": "***"}, "plain"],
    }
    assert result["smtp_password"] == "p1", "the input is left alone"


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(-3, "0ms"), (0.25, "250ms"), (4.25, "4.2s"), (4, "4s"), (42, "42s"), (185, "3m05s"),
     (7260, "2h01m"), (3 * 86400 + 4 * 3600, "3d4h")],
)  # fmt: skip
def test_span(seconds: float, shown: str) -> None:
    assert fmt.span(seconds) == shown


def test_clock_time_adds_the_date_only_when_needed() -> None:
    assert fmt.clock_time(NOW - timedelta(hours=1), NOW) == "01:30:00"
    assert fmt.clock_time(NOW - timedelta(days=2), NOW) == "03-12 02:30"
    assert fmt.clock_time(datetime(2024, 12, 31, tzinfo=UTC), NOW) == "2024-12-31"
    # shown in UTC whatever the offset the driver returned
    plus_two = timezone(timedelta(hours=2))
    assert fmt.clock_time(datetime(2025, 3, 14, 4, 0, tzinfo=plus_two), NOW) == "02:00:00"
    assert fmt.clock_time(None, NOW) == "—"


def test_staleness_and_sizes() -> None:
    assert not fmt.is_stale(NOW - timedelta(seconds=179), NOW, 180)
    assert fmt.is_stale(NOW - timedelta(seconds=181), NOW, 180)
    assert fmt.is_stale(None, NOW, 180)
    assert [fmt.human_size(n) for n in (999, 1000, 1_048_576, 2_500_000_000)] == [
        "999 B",
        "1.0 kB",
        "1.0 MB",
        "2.5 GB",
    ]


def test_parse_when() -> None:
    assert fmt.parse_when("  ", NOW) is None
    assert fmt.parse_when("2025-03-14T22:00", NOW) == datetime(2025, 3, 14, 22, tzinfo=UTC)
    assert fmt.parse_when("2025-03-14T22:00+02:00", NOW) == datetime(2025, 3, 14, 20, tzinfo=UTC)
    with pytest.raises(ValueError, match="in the past"):
        fmt.parse_when("2025-03-14T02:29", NOW)
    with pytest.raises(ValueError, match="not an ISO 8601 time"):
        fmt.parse_when("tonight", NOW)


def _event(n: int, seconds: int, step: str, status: str) -> TaskEvent:
    return TaskEvent(
        id=n,
        task_id=uuid.uuid4(),
        created_at=NOW + timedelta(seconds=seconds),
        step=step,
        status=status,
        message="",
    )


def _task(status: str, completed: datetime | None = None) -> Task:
    return Task(id=uuid.uuid4(), type="deploy", status=status, completed_at=completed)  # type: ignore[arg-type]


def test_step_durations_pair_starts_with_their_end() -> None:
    events = [
        _event(1, 0, "claim", "info"),
        _event(2, 1, "artifact", "started"),
        _event(3, 2, "health", "info"),  # another step's event in between
        _event(4, 9, "artifact", "succeeded"),
        _event(5, 10, "deploy", "started"),
    ]
    running = step_durations(events, _task("inProgress"), NOW + timedelta(seconds=70))
    assert running == ["", "8s", "", "", "1m00s…"]
    ended = step_durations(events, _task("failed", NOW + timedelta(seconds=40)), NOW)
    assert ended[4] == "30s"


def test_result_text_flattens_masks_and_keeps_the_output_tail() -> None:
    output = "\n".join(f"line {i}" for i in range(1, 61))
    text = result_text(
        {
            "outcome": "completed",
            "release": {"version": "1.4.0", "from": "1.3.0"},
            "deployer": {"output": output, "details": {"token": "x", "revision": 3}},
            "notifications": {"smtp": [{"recipient": "ops@example.com", "ok": True}]},
        }
    ).plain
    assert text.splitlines()[:6] == [
        "Result",
        "outcome: completed",
        'release: {"version": "1.4.0", "from": "1.3.0"}',
        'deployer.details: {"token": "***", "revision": 3}',
        'notifications.smtp[0]: {"recipient": "ops@example.com", "ok": true}',
        "",
    ]
    assert "deployer.output, last 40 of 60 lines\nline 21\n" in text
    assert text.endswith("line 60") and "line 20\n" not in text
    assert result_text(None).plain == "no result recorded"
