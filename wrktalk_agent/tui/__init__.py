"""``wrktalk-agent tui``: a live Textual dashboard over the agent's database.

Textual comes with the optional extra ``wrktalk-agent[tui]``; this module imports it only
when the dashboard is created, so the daemon does not need it.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from wrktalk_agent.config import AgentSettings

if TYPE_CHECKING:
    from wrktalk_agent.tui.app import DashboardApp
    from wrktalk_agent.tui.snapshot import Clock

__all__ = ["create_app", "run"]


def create_app(
    settings: AgentSettings,
    *,
    read_only: bool = False,
    refresh_interval: float = 2.0,
    clock: Clock | None = None,
) -> DashboardApp:
    """The dashboard app, shared by the CLI and the tests.

    ``read_only`` hides the actions (rollback, deploy, cancel). ``refresh_interval`` is
    the backstop between refreshes when no NOTIFY arrives. ``clock`` replaces the
    database's clock for ages and durations (tests freeze it for stable snapshots).
    """
    from wrktalk_agent import startup
    from wrktalk_agent.tui.app import DashboardApp

    app = DashboardApp(
        settings, read_only=read_only, refresh_interval=refresh_interval, clock=clock
    )
    startup.loaded()  # the command's modules are in: the collector as usual from here
    return app


def run(settings: AgentSettings, *, read_only: bool = False) -> int:
    """Run the dashboard in the terminal until the operator quits; returns an exit code."""
    try:
        app = create_app(settings, read_only=read_only)
    except ImportError as exc:
        print(
            f"wrktalk-agent tui needs Textual ({exc}); install it with: "
            "pip install 'wrktalk-agent[tui]'",
            file=sys.stderr,
        )
        return 2
    app.run()
    return app.return_code or 0
