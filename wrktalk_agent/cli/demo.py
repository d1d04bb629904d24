"""`wrktalk-agent demo`: a local installation to try the agent."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from wrktalk_agent.cli.common import (
    Failure,
    main,
)

if TYPE_CHECKING:
    pass


# -- demo ------------------------------------------------------------------------------
@main.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("wrktalk-demo"),
    show_default=True,
    help="Demo directory (database, mails, site); wiped at the start of each run.",
)
@click.option(
    "--keep-running",
    is_flag=True,
    help="Afterwards keep the database, agent, site and mail sink up until Ctrl-C (for the tui).",
)
@click.option(
    "--deployer",
    type=click.Choice(["auto", "script", "compose"]),
    default="auto",
    show_default=True,
    help="auto: compose when Docker and busybox are available, else the release's script.",
)
def demo(directory: Path, keep_running: bool, deployer: str) -> None:
    """Try the agent on this machine: embedded PostgreSQL, a mail sink, three tasks.

    Deploys 1.0.0, deploys 1.1.0 and rolls back, printing each task's steps, maintenance
    mode, the releases, what the site serves and the mails. Needs the `demo` extra.
    """
    try:
        from wrktalk_demo import run_demo
    except ImportError as exc:
        raise Failure(f"the demo needs: pip install 'wrktalk-agent[demo]' ({exc})", 2) from None
    sys.exit(run_demo(directory, keep_running=keep_running, deployer=deployer))  # type: ignore[arg-type]
