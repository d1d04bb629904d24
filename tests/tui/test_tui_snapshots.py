"""Snapshots of the screens at 80x24 (the smallest terminal the dashboard supports).

The clock is frozen and the seeded data has fixed ids and times, so a difference is a
change of the UI. Review with ``pytest tests/tui --snapshot-report`` and accept with
``--snapshot-update``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from textual.pilot import Pilot

from tests.tui.conftest import Seed
from wrktalk_agent.tui.app import DashboardApp
from wrktalk_agent.tui.screens import TaskDetailScreen
from wrktalk_agent.tui.widgets import TasksTable

pytestmark = pytest.mark.timeout(60)


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


def test_main_screen(seeded: Seed, make_app, wait_for, snap_compare) -> None:
    app = make_app()
    assert snap_compare(app, terminal_size=(80, 24), run_before=loaded_then(app, wait_for))


def test_main_screen_read_only_agents_tab(seeded: Seed, make_app, wait_for, snap_compare) -> None:
    app = make_app(read_only=True)
    assert snap_compare(app, terminal_size=(80, 24), run_before=loaded_then(app, wait_for, "2"))


def test_detail_screen(seeded: Seed, make_app, wait_for, snap_compare) -> None:
    app = make_app()

    async def open_failed_deploy(pilot: Pilot[None]) -> None:
        table = app.main.query_one(TasksTable)
        table.move_cursor(row=table.get_row_index(str(seeded.failed_140)))
        await pilot.press("enter")
        await wait_for(
            pilot,
            lambda: isinstance(app.screen, TaskDetailScreen) and app.screen.detail is not None,
            "detail loaded",
        )

    assert snap_compare(
        app, terminal_size=(80, 24), run_before=loaded_then(app, wait_for, then=open_failed_deploy)
    )


def test_rollback_dialog(seeded: Seed, make_app, wait_for, snap_compare) -> None:
    app = make_app()
    assert snap_compare(app, terminal_size=(80, 24), run_before=loaded_then(app, wait_for, "r"))


def test_deploy_dialog_with_an_invalid_time(seeded: Seed, make_app, wait_for, snap_compare) -> None:
    app = make_app()
    keys = ("3", "d", *"2025-03-13T22:00", "enter")
    assert snap_compare(app, terminal_size=(80, 24), run_before=loaded_then(app, wait_for, *keys))
