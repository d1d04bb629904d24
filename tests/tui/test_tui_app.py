"""The dashboard driven with Pilot against a seeded PostgreSQL database."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from textual.pilot import Pilot
from textual.widgets import Button, Input, Static, TabbedContent
from textual.widgets._footer import FooterKey

from tests.tui.conftest import NOW, SECRET, Seed
from wrktalk_agent.db.repository import Repository
from wrktalk_agent.tui.app import DashboardApp
from wrktalk_agent.tui.screens import ConfirmDialog, DeployDialog, TaskDetailScreen
from wrktalk_agent.tui.widgets import (
    AgentsTable,
    FilterBar,
    KeyedTable,
    MaintenanceBadge,
    Overview,
    ReleasesTable,
    StatusBar,
    TasksTable,
)

pytestmark = pytest.mark.timeout(60)

Started = Callable[..., AbstractAsyncContextManager[tuple[DashboardApp, Pilot[None]]]]

#: tasks in the seeded database: a test that must write nothing checks this count
SEEDED_TASKS = 6


@pytest.fixture
def started(make_app, wait_for, is_loaded) -> Started:
    """``async with started(**app_kwargs) as (app, pilot)``: the app from ``make_app``,
    running at 100x30 and past its first refresh (``notifications=True`` goes to
    ``run_test``)."""

    @asynccontextmanager
    async def start(
        notifications: bool = False, **app_kwargs: object
    ) -> AsyncIterator[tuple[DashboardApp, Pilot[None]]]:
        app = make_app(**app_kwargs)
        async with app.run_test(size=(100, 30), notifications=notifications) as pilot:
            await wait_for(pilot, is_loaded(app), "first refresh")
            yield app, pilot

    return start


def rows(table: KeyedTable) -> list[list[str]]:
    """The rows as text; the task list without its first column (the short task id)."""
    skip = 1 if isinstance(table, TasksTable) else 0
    return [[str(cell) for cell in table.get_row_at(i)][skip:] for i in range(table.row_count)]


def text_of(widget: Static) -> str:
    return str(widget.content)


def footer_actions(app: DashboardApp) -> set[str]:
    return {key.action for key in app.screen.query(FooterKey)}


def footer_key(app: DashboardApp, action: str) -> FooterKey:
    return next(key for key in app.screen.query(FooterKey) if key.action == action)


async def select_row(pilot, table: KeyedTable, key: object) -> None:
    table.focus()
    table.move_cursor(row=table.get_row_index(str(key)))
    await pilot.pause()


async def select_task(pilot, app: DashboardApp, key: object) -> TasksTable:
    table = app.screen.query_one(TasksTable)
    await select_row(pilot, table, key)
    return table


async def refresh_with(pilot, app: DashboardApp, wait_for, *keys: str) -> None:
    """Press ``keys`` and wait until the main screen shows a new snapshot."""
    before = app.main.snapshot
    await pilot.press(*keys)
    await wait_for(pilot, lambda: app.main.snapshot is not before, "refresh")


async def open_detail(pilot, app: DashboardApp, wait_for, key: object) -> TaskDetailScreen:
    await select_task(pilot, app, key)
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(app.screen, TaskDetailScreen), "detail screen")
    screen = app.screen
    assert isinstance(screen, TaskDetailScreen)
    await wait_for(pilot, lambda: screen.detail is not None, "detail loaded")
    return screen


async def open_confirm(pilot, app: DashboardApp, *keys: str) -> ConfirmDialog:
    await pilot.press(*keys)
    dialog = app.screen
    assert isinstance(dialog, ConfirmDialog)
    return dialog


async def open_cancel(pilot, app: DashboardApp, key: object) -> ConfirmDialog:
    await select_task(pilot, app, key)
    return await open_confirm(pilot, app, "c")


async def assert_back_on_main(pilot, app: DashboardApp) -> None:
    """Back on the main screen, then a moment for any (wrong) write to land."""
    assert app.screen is app.main
    await pilot.pause(0.3)


async def fetch_tasks(url: str, where: str = "true") -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(
            f"SELECT id, type, status, release_artifact_id, execute_after, error_message "
            f"FROM agent_task WHERE {where} ORDER BY created_at"
        )
    finally:
        await conn.close()


async def fetch_task(url: str, task_id: object) -> asyncpg.Record:
    [task] = await fetch_tasks(url, f"id = '{task_id}'")
    return task


async def assert_no_task_written(url: str) -> None:
    assert len(await fetch_tasks(url)) == SEEDED_TASKS


async def test_main_screen_shows_tasks_agents_releases_and_maintenance(
    seeded: Seed, started: Started
) -> None:
    async with started() as (app, pilot):
        tasks = rows(app.screen.query_one(TasksTable))
        assert [r[:3] for r in tasks] == [
            ["pending", "rollback", "1.2.0"],
            ["inProgress", "deploy", "1.4.0"],
            ["failed", "deploy", "1.4.0"],
            ["completed", "deploy", "1.3.0"],
            ["completed", "deploy", "1.2.0"],
            ["failed", "rollback", "1.1.0"],
        ]
        assert tasks[0][3] == "due 03:00:00"
        # the running task: current step (latest event) and heartbeat age, by the frozen clock
        assert tasks[1][5] == "▶ deploy 1m54s · ♥ 10s ago"
        assert tasks[2][4] == "4m37s"
        assert tasks[2][5] == "docker compose up failed: service api unhealthy after 120s"
        assert tasks[2][6] == "agent-a"

        badge = app.screen.query_one(MaintenanceBadge)
        assert badge.has_class("on") and "MAINTENANCE ON" in text_of(badge)
        overview = text_of(app.screen.query_one(Overview))
        assert "live 1.3.0  pending 1  prev 1.2.0" in overview
        assert "1 alive, 1 stale" in overview

        await pilot.press("2")
        assert app.screen.query_one(TabbedContent).active == "agents"
        agents = rows(app.screen.query_one(AgentsTable))
        assert [r[:5] for r in agents] == [
            # last seen: its task's heartbeat, newer than its last poll
            ["agent-a", "alive", "10s ago", "10s ago", "deploy 1.4.0"],
            ["agent-b", "STALE", "1h18m ago", "—", "idle"],
        ]

        await pilot.press("3")
        assert app.screen.query_one(TabbedContent).active == "releases"
        releases = rows(app.screen.query_one(ReleasesTable))
        assert [r[:6] for r in releases] == [
            ["1.4.0", "", "compose", "70.0 kB", "140140140140", "signed"],
            ["1.3.0", "current", "compose", "60.0 kB", "130130130130", "signed"],
            ["1.2.0", "previous", "compose", "50.0 kB", "120120120120", "no"],
            ["1.1.0", "", "compose", "40.0 kB", "110110110110", "no"],
        ]
        assert releases[1][6] == "03-10 10:02"

        await pilot.press("1")
        assert app.screen.query_one(TabbedContent).active == "tasks"
        assert app.focused is app.screen.query_one(TasksTable)


async def test_filters_cycle_through_statuses_and_types(
    seeded: Seed, started: Started, wait_for
) -> None:
    async with started() as (app, pilot):
        table = app.screen.query_one(TasksTable)

        async def shown_after(key: str) -> list[tuple[str, str]]:
            await refresh_with(pilot, app, wait_for, key)
            return [(r[0], r[1]) for r in rows(table)]

        assert await shown_after("s") == [("pending", "rollback")]
        assert "status pending" in text_of(app.screen.query_one(FilterBar))
        assert await shown_after("s") == [("inProgress", "deploy")]
        assert await shown_after("s") == [("completed", "deploy")] * 2
        assert await shown_after("s") == [("failed", "deploy"), ("failed", "rollback")]
        assert await shown_after("t") == [("failed", "deploy")]
        assert await shown_after("t") == [("failed", "rollback")]
        assert await shown_after("s") == []  # cancelled rollbacks: none
        assert "status cancelled" in text_of(app.screen.query_one(FilterBar))
        assert await shown_after("s") == [("pending", "rollback"), ("failed", "rollback")]
        assert await shown_after("t") == [
            ("pending", "rollback"),
            ("inProgress", "deploy"),
            ("failed", "deploy"),
            ("completed", "deploy"),
            ("completed", "deploy"),
            ("failed", "rollback"),
        ]


async def test_enter_opens_the_detail_with_timeline_error_and_masked_result(
    seeded: Seed, started: Started, wait_for
) -> None:
    async with started() as (app, pilot):
        screen = await open_detail(pilot, app, wait_for, seeded.failed_140)

        timeline = rows(screen.query_one("#timeline", KeyedTable))
        assert len(timeline) == 12
        assert timeline[0] == ["18:05:03", "", "claim", "info", "claimed by agent-a"]
        assert timeline[6] == ["18:05:09", "2m11s", "deploy", "started", "docker compose up"]
        assert timeline[8][:3] == ["18:07:21", "2m09s", "auto_rollback"]

        header = text_of(screen.query_one("#detail-header", Static))
        assert "deploy 1.4.0  failed" in header and "took 4m37s" in header
        error = text_of(screen.query_one("#detail-error", Static))
        assert "service api unhealthy after 120s\n(rolled back to 1.3.0)" in error

        result = text_of(screen.query_one("#detail-result", Static))
        assert SECRET not in result
        assert "smtp_password: ***" in result and '"api_token": "***"' in result
        assert "postgres://wrktalk:***@db:5432/wrktalk" in result
        assert "SMTP_PASSWORD=***" in result
        assert "deployer.output, last 40 of 48 lines" in result
        assert "healthcheck failed: 503" in result and "step 8: pulling" not in result
        # jsonb orders keys its own way
        assert 'notifications.smtp[0]: {"ok": true, "recipient": "ops@example.com"}' in result

        await pilot.press("escape")
        assert app.screen is app.main


async def test_detail_of_a_running_task_counts_the_open_step_up_to_now(
    seeded: Seed, started: Started, wait_for
) -> None:
    async with started() as (app, pilot):
        screen = await open_detail(pilot, app, wait_for, seeded.running_140)
        timeline = rows(screen.query_one("#timeline", KeyedTable))
        assert timeline[-1][:3] == ["02:28:06", "1m54s…", "deploy"]
        assert "no result recorded" in text_of(screen.query_one("#detail-result", Static))
        assert not screen.query_one("#detail-error", Static).display


async def test_rollback_confirmed_queues_a_pending_rollback_to_the_previous_release(
    seeded: Seed, started: Started, wait_for, database_url: str
) -> None:
    async with started() as (app, pilot):
        dialog = await open_confirm(pilot, app, "r")
        assert "from 1.3.0 to 1.2.0" in text_of(dialog.query_one(".dialog-body", Static))
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(app.main.snapshot.tasks) == 7, "the new task shown")
    new = await fetch_tasks(
        database_url,
        f"type = 'rollback' AND id <> '{seeded.pending_rollback}'"
        f" AND id <> '{seeded.abandoned_rollback}'",
    )
    assert [(r["status"], r["release_artifact_id"], r["execute_after"]) for r in new] == [
        ("pending", seeded.r120, None)
    ]


@pytest.mark.parametrize("how", ["escape", "click"])
async def test_rollback_dismissed_writes_nothing(
    seeded: Seed, started: Started, database_url: str, how: str
) -> None:
    async with started() as (app, pilot):
        await open_confirm(pilot, app, "r")
        if how == "click":
            await pilot.click("#back")
        else:
            await pilot.press(how)
        await pilot.pause()
        await assert_back_on_main(pilot, app)
    await assert_no_task_written(database_url)


async def test_dialogs_share_their_keys_and_y_or_n_do_nothing(
    seeded: Seed, started: Started, database_url: str
) -> None:
    """Every dialog: enter confirms, escape goes back (the deploy dialog has a text field,
    so letters cannot be its keys; the others follow it)."""
    async with started() as (app, pilot):
        dialog = await open_confirm(pilot, app, "r")
        await pilot.press("y", "n")
        await pilot.pause(0.2)
        assert app.screen is dialog
        labels = [str(b.label) for b in dialog.query(Button)]
        assert labels == ["Roll back (enter)", "Back (esc)"]
        await pilot.press("escape")
        await assert_back_on_main(pilot, app)
    await assert_no_task_written(database_url)


async def test_rollback_without_previous_release_opens_no_dialog(
    seeded: Seed, started: Started, database_url: str, repo: Repository
) -> None:
    await repo.pool.execute("UPDATE release_artifact SET is_previous = false")
    async with started(notifications=True) as (app, pilot):
        await pilot.press("r")
        await pilot.pause()
        assert app.screen is app.main
        assert [n.message for n in app._notifications] == [
            "There is no previous release to roll back to."
        ]
    await assert_no_task_written(database_url)


@pytest.mark.parametrize(
    ("typed", "expected"),
    [("", None), ("2025-03-14T22:00", datetime(2025, 3, 14, 22, 0, tzinfo=UTC))],
    ids=["now", "at-a-time"],
)
async def test_deploy_confirmed_queues_the_selected_release(
    seeded: Seed, started: Started, wait_for, database_url: str, typed: str, expected
) -> None:
    async with started() as (app, pilot):
        await pilot.press("3")
        await select_row(pilot, app.screen.query_one(ReleasesTable), seeded.r140)
        await pilot.press("d")
        assert isinstance(app.screen, DeployDialog)
        await pilot.press(*typed, "enter")
        await wait_for(pilot, lambda: len(app.main.snapshot.tasks) == 7, "the new task shown")
    new = await fetch_tasks(database_url, "status = 'pending' AND type = 'deploy'")
    assert [(r["release_artifact_id"], r["execute_after"]) for r in new] == [
        (seeded.r140, expected)
    ]


async def test_deploy_refuses_a_past_or_garbled_time_and_back_writes_nothing(
    seeded: Seed, started: Started, database_url: str
) -> None:
    async with started() as (app, pilot):
        await pilot.press("3", "d")
        dialog = app.screen
        assert isinstance(dialog, DeployDialog)
        await pilot.press(*"2024-03-14T22:00", "enter")
        assert app.screen is dialog
        assert "is in the past" in text_of(dialog.query_one("#when-error", Static))
        await pilot.click("#confirm")
        await pilot.pause()
        assert app.screen is dialog
        when = dialog.query_one("#when", Input)
        when.value = "tomorrow"
        when.focus()
        await pilot.press("enter")
        await pilot.pause()
        assert "not an ISO 8601 time" in text_of(dialog.query_one("#when-error", Static))
        await pilot.press("escape")
        await assert_back_on_main(pilot, app)
    await assert_no_task_written(database_url)


async def test_cancel_confirmed_fails_the_pending_task_with_a_cancelled_message(
    seeded: Seed, started: Started, wait_for, database_url: str
) -> None:
    async with started() as (app, pilot):
        table = app.screen.query_one(TasksTable)
        await open_cancel(pilot, app, seeded.pending_rollback)
        await pilot.press("enter")
        await wait_for(pilot, lambda: rows(table)[0][0] == "cancelled", "the task shown cancelled")
        # the status filter knows the word too
        while app.screen.filters.status != "cancelled":  # type: ignore[attr-defined]
            await pilot.press("s")
        await wait_for(
            pilot,
            lambda: [r[0] for r in rows(table)] == ["cancelled"],
            "only the cancelled task listed",
        )
    task = await fetch_task(database_url, seeded.pending_rollback)
    assert task["status"] == "failed"
    assert task["error_message"].startswith("cancelled by ")


async def test_cancel_dismissed_leaves_the_task_pending(
    seeded: Seed, started: Started, database_url: str
) -> None:
    async with started() as (app, pilot):
        await open_cancel(pilot, app, seeded.pending_rollback)
        await pilot.press("escape")
        await assert_back_on_main(pilot, app)
    task = await fetch_task(database_url, seeded.pending_rollback)
    assert (task["status"], task["error_message"]) == ("pending", None)


async def test_cancel_on_a_task_that_is_not_pending_says_why_nothing_happens(
    seeded: Seed, started: Started, database_url: str
) -> None:
    async with started(notifications=True) as (app, pilot):
        await select_task(pilot, app, seeded.running_140)
        await pilot.press("c")
        await pilot.pause()
        assert app.screen is app.main
        [note] = [n.message for n in app._notifications]
        assert note == (
            "Task 00000008 is not cancelled: it is running; an agent stops a deploy only on "
            "shutdown. Only pending tasks can be cancelled."
        )
    task = await fetch_task(database_url, seeded.running_140)
    assert task["status"] == "inProgress"


async def test_cancel_of_a_task_an_agent_claimed_meanwhile_changes_nothing(
    seeded: Seed, started: Started, wait_for, database_url: str, repo: Repository
) -> None:
    async with started(notifications=True) as (app, pilot):
        await open_cancel(pilot, app, seeded.pending_rollback)
        await repo.pool.execute(
            "UPDATE agent_task SET status = 'completed' WHERE id = $1", seeded.pending_rollback
        )
        await pilot.press("enter")
        await wait_for(pilot, lambda: app._notifications, "a notification")
        assert "no longer pending" in next(iter(app._notifications)).message
    task = await fetch_task(database_url, seeded.pending_rollback)
    assert (task["status"], task["error_message"]) == ("completed", None)


async def test_read_only_hides_and_disables_every_action(
    seeded: Seed, started: Started, database_url: str
) -> None:
    async with started() as (writable, pilot):
        await pilot.pause()
        assert {"rollback", "cancel_task"} <= footer_actions(writable)
    async with started(read_only=True) as (app, pilot):
        await select_task(pilot, app, seeded.pending_rollback)
        await pilot.pause()
        assert {"quit", "cycle_status"} <= footer_actions(app)
        assert not {"rollback", "deploy", "cancel_task"} & footer_actions(app)
        await pilot.press("c", "r", "y")
        assert app.screen is app.main
        await pilot.press("3", "d")
        await pilot.pause()
        assert "deploy" not in footer_actions(app)
        await pilot.press("enter")
        await assert_back_on_main(pilot, app)
    await assert_no_task_written(database_url)


async def test_a_new_task_appears_through_notify_without_waiting_for_the_timer(
    seeded: Seed, started: Started, wait_for, repo: Repository
) -> None:
    async with started(refresh_interval=600.0) as (app, pilot):
        table = app.screen.query_one(TasksTable)
        await repo.create_task("deploy", seeded.r130)
        await wait_for(pilot, lambda: table.row_count == 7, "the NOTIFY-driven refresh", 5)
        assert rows(table)[0][:3] == ["pending", "deploy", "1.3.0"]


async def test_listener_reconnects_after_its_connection_is_killed(
    seeded: Seed, started: Started, wait_for, repo: Repository
) -> None:
    listeners = """SELECT array_agg(pid) FROM pg_stat_activity
                   WHERE datname = current_database() AND query LIKE 'LISTEN%'"""
    async with started(refresh_interval=600.0) as (app, pilot):
        [old] = await repo.pool.fetchval(listeners)
        assert await repo.pool.fetchval("SELECT pg_terminate_backend($1)", old)
        new: list[int] = []

        async def poll_listeners() -> None:
            new[:] = await repo.pool.fetchval(listeners) or []

        for _ in range(200):
            await poll_listeners()
            if new and old not in new:
                break
            await pilot.pause(0.05)
        assert len(new) == 1 and new[0] != old, "no new LISTEN connection"
        await wait_for(pilot, lambda: app.main.listener_error is None, "listener state back")
        assert "live updates on" in text_of(app.screen.query_one(StatusBar))
        await repo.create_task("deploy", seeded.r130)
        await wait_for(
            pilot, lambda: len(app.main.snapshot.tasks) == 7, "NOTIFY after the reconnect", 5
        )


async def test_a_refresh_updates_ages_and_statuses_in_place_keeping_the_selection(
    seeded: Seed, started: Started, wait_for, repo: Repository
) -> None:
    now = [NOW]
    async with started(clock=lambda: now[0]) as (app, pilot):
        table = await select_task(pilot, app, seeded.failed_140)
        now[0] = NOW + timedelta(minutes=3)
        await repo.pool.execute(
            "UPDATE agent_task SET last_heartbeat = $2 WHERE id = $1",
            seeded.running_140,
            NOW + timedelta(minutes=2, seconds=55),
        )
        await refresh_with(pilot, app, wait_for, "ctrl+r")
        assert rows(table)[1][4:6] == ["5m00s", "▶ deploy 4m54s · ♥ 5s ago"]
        # heartbeat older than stale_after (180 s): shown, and the agents count it
        now[0] = NOW + timedelta(minutes=10)
        await refresh_with(pilot, app, wait_for, "ctrl+r")
        info = table.get_row(str(seeded.running_140))[6]
        assert info.plain == "▶ deploy 11m54s · ♥ 7m05s ago"
        assert any(span.style == "bold red" for span in info.spans)
        assert "0 alive, 2 stale" in text_of(app.screen.query_one(Overview))
        assert table.selected_key == str(seeded.failed_140)


async def test_credentials_quoted_in_errors_and_events_are_masked(
    seeded: Seed, started: Started, wait_for, repo: Repository
) -> None:
    await repo.pool.execute(
        "UPDATE agent_task SET error_message = $2 WHERE id = $1",
        seeded.failed_140,
        f"cannot reach postgres://wrktalk:{SECRET}@db/wrktalk (DB_PASSWORD={SECRET})",
    )
    await repo.add_event(seeded.failed_140, "notify", "info", f"smtp token={SECRET}")
    async with started() as (app, pilot):
        table = app.screen.query_one(TasksTable)
        summary = str(table.get_row(str(seeded.failed_140))[6])
        assert summary == "cannot reach postgres://wrktalk:***@db/wrktalk (DB_PASSWORD=***"
        screen = await open_detail(pilot, app, wait_for, seeded.failed_140)
        error = text_of(screen.query_one("#detail-error", Static))
        timeline = rows(screen.query_one("#timeline", KeyedTable))
        assert SECRET not in error and "postgres://wrktalk:***@db" in error
        assert timeline[-1][4] == "smtp token=***"


async def test_an_agent_is_stale_by_its_own_recorded_lease_or_once_its_task_was_taken_over(
    seeded: Seed, started: Started, repo: Repository
) -> None:
    """The dashboard's own setting says 180 s; agent-a recorded a 12 s lease and has been
    silent for 60 s: STALE. An agent whose task another agent took over is gone, however
    recently it was seen."""
    await repo.pool.execute(
        "UPDATE agent_instance SET lease_seconds = 12, last_poll = $1 WHERE agent_id = 'agent-a'",
        NOW - timedelta(seconds=60),
    )
    await repo.pool.execute(
        "UPDATE agent_task SET last_heartbeat = $2, lease_seconds = 12 WHERE id = $1",
        seeded.running_140,
        NOW - timedelta(seconds=60),
    )
    await repo.pool.execute(
        "INSERT INTO agent_instance (agent_id, hostname, pid, version, started_at, last_poll,"
        " current_task_id, lease_seconds) SELECT 'agent-c', 'wrk-node-3', 1, '0.1.0', $1, $1,"
        " id, 195 FROM agent_task WHERE status = 'completed' LIMIT 1",
        NOW - timedelta(seconds=5),
    )
    async with started() as (app, pilot):
        await pilot.press("2")
        agents = {r[0]: r[1] for r in rows(app.screen.query_one(AgentsTable))}
        assert agents == {"agent-a": "STALE", "agent-b": "STALE", "agent-c": "STALE"}
        assert "0 alive, 3 stale" in text_of(app.screen.query_one(Overview))
