"""`wrktalk-agent tui`: the dashboard."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from wrktalk_agent.cli.common import (
    Failure,
    load_settings,
    main,
)

if TYPE_CHECKING:
    pass


# -- tui -------------------------------------------------------------------------------
@main.command()
@click.option("--read-only", is_flag=True, help="Hide the actions (rollback, deploy, cancel).")
def tui(read_only: bool) -> None:
    """Live dashboard for operators (needs the `tui` extra)."""
    settings = load_settings(log_format="json", log_level="error")
    try:
        from wrktalk_agent.tui import run as run_tui
    except ImportError as exc:
        raise Failure(
            f"the dashboard needs Textual: pip install 'wrktalk-agent[tui]' ({exc})", 2
        ) from None
    sys.exit(run_tui(settings, read_only=read_only))
