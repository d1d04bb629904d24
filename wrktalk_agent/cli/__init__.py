"""`wrktalk-agent` command line (click), one module per command group (like kubectl's
and helm's one file per command): :mod:`~wrktalk_agent.cli.common` holds what they share
and the ``main`` group they add to.

Exit codes: 0 success, 1 failure (task failed, database unreachable, check failed),
2 bad input or configuration. Errors are one readable line each, never a traceback.

Imports are lazy: a command's module is imported when that command runs (``--help``
imports them all to list them), and each command loads the database driver, pydantic
models or rich when it needs them.
"""

from __future__ import annotations

from typing import Any

from wrktalk_agent.cli.common import Failure, error_cell, load_settings, main, run_async

__all__ = ["Failure", "ReleaseType", "error_cell", "load_settings", "main", "run_async"]


def __getattr__(name: str) -> Any:
    if name == "ReleaseType":  # with its command module (loaded when first asked for)
        from wrktalk_agent.cli.release_params import ReleaseType

        return ReleaseType
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
