"""Snapshots of the screens at 80x24 (the smallest terminal the dashboard supports) and
140x40.

The clock is frozen and the seeded data has fixed ids and times, so a difference is a
change of the UI. Review with ``pytest tests/tui --snapshot-report`` and accept with
``--snapshot-update``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest
from textual.pilot import Pilot

from tests.tui.conftest import NOW, Seed
from wrktalk_agent.tui.app import DashboardApp
from wrktalk_agent.tui.messages import RefreshFailed
from wrktalk_agent.tui.screens import TaskDetailScreen
from wrktalk_agent.tui.widgets import TasksTable

pytestmark = pytest.mark.timeout(60)

SIZES = pytest.mark.parametrize("size", [(80, 24), (140, 40)], ids=["80x24", "140x40"])

Step = Callable[[Pilot[None]], Awaitable[None]]


def loaded_then(app: DashboardApp, wait_for, *keys: str, then: Step | None = None) -> Step:
    """Wait for the first refresh and the LISTEN connection, press ``keys``, run ``then``."""

    async def run_before(pilot: Pilot[None]) -> None:
        await wait_for(pilot, lambda: app.main.snapshot is not None, "first refresh")
        await wait_for(pilot, lambda: app.main.listener_error is None, "live updates")
        await pilot.press(*keys)
        if then is not None:
            await then(pilot)

    return run_before


def open_task(app: DashboardApp, wait_for, task_id) -> Step:
    async def open_it(pilot: Pilot[None]) -> None:
        table = app.main.query_one(TasksTable)
        table.move_cursor(row=table.get_row_index(str(task_id)))
        await pilot.press("enter")
        await wait_for(
            pilot,
            lambda: isinstance(app.screen, TaskDetailScreen) and app.screen.detail is not None,
            "detail loaded",
        )
        await pilot.pause()

    return open_it


@SIZES
def test_main_screen(size, seeded: Seed, make_app, wait_for, snap_compare) -> None:
    app = make_app()
    assert snap_compare(app, terminal_size=size, run_before=loaded_then(app, wait_for))


@SIZES
def test_main_screen_at_3am(size, cockpit: Seed, make_app, wait_for, snap_compare) -> None:
    """Live output pane, an operator's maintenance window, the live version's warning."""
    app = make_app()
    assert snap_compare(app, terminal_size=size, run_before=loaded_then(app, wait_for))


@SIZES
def test_main_screen_read_only_agents_tab(
    size, cockpit: Seed, make_app, wait_for, snap_compare
) -> None:
    """agent-b stopped cleanly: "stopped", not "STALE"."""
    app = make_app(read_only=True)
    assert snap_compare(app, terminal_size=size, run_before=loaded_then(app, wait_for, "2"))


@SIZES
def test_help_screen(size, seeded: Seed, make_app, wait_for, snap_compare) -> None:
    app = make_app()
    assert snap_compare(app, terminal_size=size, run_before=loaded_then(app, wait_for, "?"))


@SIZES
def test_search_by_version_sorted_by_status(
    size, seeded: Seed, make_app, wait_for, snap_compare
) -> None:
    app = make_app()
    keys = ("slash", *"1.4", "enter", "o", "o")
    assert snap_compare(app, terminal_size=size, run_before=loaded_then(app, wait_for, *keys))


@SIZES
def test_a_search_that_matches_nothing_says_so(
    size, seeded: Seed, make_app, wait_for, snap_compare
) -> None:
    app = make_app()
    keys = ("slash", *"no-such-thing")
    assert snap_compare(app, terminal_size=size, run_before=loaded_then(app, wait_for, *keys))


@SIZES
def test_stale_data_while_the_database_does_not_answer(
    size, seeded: Seed, make_app, wait_for, snap_compare
) -> None:
    now = [NOW]
    app = make_app(clock=lambda: now[0])

    async def outage(pilot: Pilot[None]) -> None:
        # no refresh in flight: its answer would replace the failure about to be shown
        await wait_for(pilot, lambda: not app.main._refreshing, "refresh done")
        now[0] = NOW + timedelta(seconds=45)
        app.main.post_message(
            RefreshFailed(
                "lost PostgreSQL at db.internal.example.com:5432: ConnectionResetError: "
                "[Errno 104] Connection reset by peer while reading the answer to a query"
            )
        )
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=loaded_then(app, wait_for, then=outage))


@SIZES
def test_detail_of_a_failed_task_opens_on_its_error(
    size, cockpit: Seed, make_app, wait_for, snap_compare
) -> None:
    app = make_app()
    run_before = loaded_then(app, wait_for, then=open_task(app, wait_for, cockpit.failed_140))
    assert snap_compare(app, terminal_size=size, run_before=run_before)


@SIZES
def test_detail_of_a_running_task_shows_its_output(
    size, cockpit: Seed, make_app, wait_for, snap_compare
) -> None:
    app = make_app()
    run_before = loaded_then(app, wait_for, then=open_task(app, wait_for, cockpit.running_140))
    assert snap_compare(app, terminal_size=size, run_before=run_before)


@SIZES
def test_rollback_dialog(size, seeded: Seed, make_app, wait_for, snap_compare) -> None:
    app = make_app()
    assert snap_compare(app, terminal_size=size, run_before=loaded_then(app, wait_for, "r"))


@SIZES
def test_cancel_on_a_finished_task_says_why(
    size, seeded: Seed, make_app, wait_for, snap_compare
) -> None:
    app = make_app()

    async def cancel_finished(pilot: Pilot[None]) -> None:
        table = app.main.query_one(TasksTable)
        table.move_cursor(row=table.get_row_index(str(seeded.deployed_130)))
        await pilot.press("c")
        await pilot.pause()

    run_before = loaded_then(app, wait_for, then=cancel_finished)
    assert snap_compare(app, terminal_size=size, run_before=run_before)


@SIZES
def test_deploy_dialog_with_an_invalid_time(
    size, seeded: Seed, make_app, wait_for, snap_compare
) -> None:
    app = make_app()
    keys = ("3", "d", *"2025-03-13T22:00", "enter")
    assert snap_compare(app, terminal_size=size, run_before=loaded_then(app, wait_for, *keys))
