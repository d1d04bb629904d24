"""`wrktalk-agent` command line (click), one module per command group (like kubectl's
and helm's one file per command): :mod:`~wrktalk_agent.cli.common` holds what they share
and the ``main`` group they add to.

Exit codes: 0 success, 1 failure (task failed, database unreachable, check failed),
2 bad input or configuration. Errors are one readable line each, never a traceback.

Imports are lazy: ``--help`` loads click and these modules only, and each command loads
the database driver, pydantic models or rich when it needs them.
"""

from __future__ import annotations

# the command modules register their commands on `main` when imported
from wrktalk_agent.cli import (  # noqa: F401
    check,
    db,
    demo,
    maintenance,
    plugins,
    release,
    run,
    task,
    tui,
)
from wrktalk_agent.cli.common import Failure, error_cell, load_settings, main, run_async
from wrktalk_agent.cli.release import ReleaseType

__all__ = ["Failure", "ReleaseType", "error_cell", "load_settings", "main", "run_async"]
