"""The dashboard app: one main screen (overview, tasks, agents, releases), a detail screen
per task and confirmation dialogs for the actions.

The main screen is :mod:`.main_screen`, its write actions :mod:`.actions`; the names the
app module used to hold are importable from here still.
"""

from __future__ import annotations

from textual.app import App
from textual.binding import Binding
from textual.screen import Screen

from wrktalk_agent.config import AgentSettings
from wrktalk_agent.tui.actions import WRITE_ACTIONS, rollback_timing
from wrktalk_agent.tui.data import DashboardSource
from wrktalk_agent.tui.main_screen import (
    MAX_RETRY_DELAY,
    STATUS_CYCLE,
    TYPE_CYCLE,
    MainScreen,
)
from wrktalk_agent.tui.snapshot import Clock

__all__ = [
    "MAX_RETRY_DELAY",
    "STATUS_CYCLE",
    "TYPE_CYCLE",
    "WRITE_ACTIONS",
    "DashboardApp",
    "MainScreen",
    "rollback_timing",
]


class DashboardApp(App[None]):
    """``wrktalk-agent tui``: see :func:`wrktalk_agent.tui.create_app`."""

    CSS_PATH = "dashboard.tcss"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [Binding("q", "quit", "Quit")]

    def __init__(
        self,
        settings: AgentSettings,
        *,
        read_only: bool = False,
        refresh_interval: float = 2.0,
        clock: Clock | None = None,
    ) -> None:
        super().__init__()
        self.source = DashboardSource(settings, clock=clock)
        self.main = MainScreen(
            self.source,
            installation=settings.installation_name,
            read_only=read_only,
            refresh_interval=refresh_interval,
        )
        self.title = f"wrktalk-agent · {settings.installation_name}"
        self.sub_title = "read-only" if read_only else ""

    def get_default_screen(self) -> Screen[None]:
        return self.main

    def on_load(self) -> None:
        # the app's first event: the first query goes out while the screen is built
        self.source.prefetch_first_rows()

    async def on_unmount(self) -> None:
        await self.source.close()
