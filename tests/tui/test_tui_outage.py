"""The database goes away: the dashboard says so, keeps its last data, and recovers."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import SecretStr

from tests.tui.conftest import NOW, DatabaseProxy, Seed
from wrktalk_agent.config import AgentSettings
from wrktalk_agent.db.repository import Repository
from wrktalk_agent.testing import PgServer
from wrktalk_agent.tui import create_app, data, main_screen
from wrktalk_agent.tui.widgets import StatusBar, TasksTable

pytestmark = pytest.mark.timeout(120)


async def test_server_down_shows_in_the_status_bar_and_recovery_clears_it(
    pg_server: PgServer, seeded: Seed, make_app, wait_for, is_loaded, agent_settings: AgentSettings
) -> None:
    if not pg_server.can_restart:
        pytest.skip("only the embedded PostgreSQL can be stopped by a test")
    app = make_app(refresh_interval=0.2)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, is_loaded(app), "first refresh")
        status = app.screen.query_one(StatusBar)
        await asyncio.to_thread(pg_server.stop)
        try:
            await wait_for(pilot, lambda: status.has_class("error"), "the outage shown")
            shown = str(status.content)
            assert shown.startswith("✖ ") and "retrying in" in shown
            assert "data as of 2025-03-14 02:30:00 UTC" in shown
            # the last good data stays on screen for the operator
            assert app.screen.query_one(TasksTable).row_count == 6
            await pilot.press("2", "3", "1", "s")  # the UI stays usable meanwhile
        finally:
            await asyncio.to_thread(pg_server.start)
        await wait_for(pilot, lambda: not status.has_class("error"), "recovery", 30)
        assert str(status.content).startswith("● connected")
        await wait_for(pilot, lambda: app.main.listener_error is None, "live updates back", 40)
        assert app.main.snapshot.filters.status == "pending"  # the filter set while down

        repo = await Repository.connect(agent_settings)
        try:
            await repo.create_task("deploy", seeded.r130)
        finally:
            await repo.close()
        await wait_for(pilot, lambda: app.main.snapshot.installation.pending_count == 2, "new task")


async def test_network_cut_shows_in_the_status_bar_and_recovery_clears_it(
    seeded: Seed, db_proxy: DatabaseProxy, wait_for, dashboard_settings: AgentSettings
) -> None:
    """Works on any server: the app talks to the database through a relay that is cut."""
    settings = dashboard_settings.model_copy(update={"database_url": SecretStr(db_proxy.url)})
    app = create_app(settings, refresh_interval=0.2, clock=lambda: NOW)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.main.listener_error is None and app.main.snapshot, "load")
        status = app.screen.query_one(StatusBar)
        await db_proxy.cut()
        await wait_for(pilot, lambda: status.has_class("error"), "the outage shown")
        assert f"127.0.0.1:{db_proxy.port}" in str(status.content)
        await wait_for(pilot, lambda: app.main.listener_error is not None, "listener down")
        assert app.screen.query_one(TasksTable).row_count == 6
        await db_proxy.start()
        await wait_for(pilot, lambda: not status.has_class("error"), "recovery", 30)
        await wait_for(pilot, lambda: app.main.listener_error is None, "live updates back", 40)
        assert str(status.content).endswith("live updates on")


async def test_starting_against_an_unreachable_database_shows_why_and_keeps_trying(
    unused_tcp_port: int,
) -> None:
    settings = AgentSettings(database_url=f"postgresql://app:s3cr3t@127.0.0.1:{unused_tcp_port}/x")  # type: ignore[arg-type]
    app = create_app(settings, refresh_interval=0.1)
    async with app.run_test(size=(80, 24)) as pilot:
        status = app.screen.query_one(StatusBar)
        for _ in range(200):
            if status.has_class("error") and "retrying in 200ms" in str(status.content):
                break  # the second failure: it retried, with backoff
            await pilot.pause(0.02)
        shown = str(status.content)
        assert f"cannot reach PostgreSQL at 127.0.0.1:{unused_tcp_port}" in shown, shown
        assert "retrying in 200ms" in shown
        assert "s3cr3t" not in shown
        assert app.main.snapshot is None
        await pilot.press("r", "3", "d")  # no data yet: actions do nothing, nothing crashes
        assert app.screen is app.main


async def test_a_database_that_answers_is_drawn_once_with_its_rows(
    seeded: Seed, make_app, wait_for, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first rows, asked for at the app's start, are in the table before the screen's
    first frame: no empty table is drawn first (the wait made long: a slow machine)."""
    monkeypatch.setattr(main_screen, "FIRST_FRAME_WAIT", 30.0)
    at_first_frame: list[int] = []
    app = make_app()
    original = app.main._compositor_refresh

    def first_frame() -> None:
        if not at_first_frame:
            at_first_frame.append(app.main.query_one(TasksTable).row_count)
        original()

    monkeypatch.setattr(app.main, "_compositor_refresh", first_frame)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.main.snapshot is not None, "the first refresh")
    assert at_first_frame == [6]


async def test_a_database_that_never_answers_does_not_keep_the_screen_blank() -> None:
    """A server that accepts and then says nothing (packets dropped further on): the screen
    is drawn after FIRST_FRAME_WAIT, long before the connect attempt gives up, saying it is
    connecting."""
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = AgentSettings(database_url=f"postgresql://app:s3cr3t@127.0.0.1:{port}/x")  # type: ignore[arg-type]
    app = create_app(settings, refresh_interval=0.1)
    drawn: list[tuple[float, str]] = []
    original = app.main._compositor_refresh

    def frame() -> None:
        drawn.append((time.monotonic(), str(app.main.query_one(StatusBar).content)))
        original()

    app.main._compositor_refresh = frame  # type: ignore[method-assign]
    try:
        began = time.monotonic()
        async with app.run_test(size=(80, 24)) as pilot:
            while not drawn and time.monotonic() - began < data.CONNECT_TIMEOUT:
                await pilot.pause(0.02)
            assert drawn, "no frame drawn"
            at, status = drawn[0]
            assert at - began < data.CONNECT_TIMEOUT / 2, "the frame waited for the connect"
            assert "connecting" in status
            assert app.main.query_one(TasksTable).row_count == 0
    finally:
        for writer in held:
            writer.transport.abort()
        server.close()
        await server.wait_closed()
