"""`wrktalk-agent check`: preflight."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from wrktalk_agent.cli.common import (
    _warn_unknown_variables,
    load_registry,
    load_settings,
    main,
    print_json,
    run_async,
)
from wrktalk_agent.safe_text import visible

if TYPE_CHECKING:
    pass


# -- check -----------------------------------------------------------------------------
@main.command()
@click.option("--json", "as_json", is_flag=True, help="Same as -o json.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.option("--strict", is_flag=True, help="Exit 1 on warnings too (a notifier failing).")
def check(as_json: bool, output: str, strict: bool) -> None:
    """Preflight: database, schema, plugins, work dir, keys.

    Exit 1 when something blocks deploys (database, schema, privileges, deployer,
    maintenance handler, work dir, trusted keys). A failing notifier only degrades them
    (mails wait in the outbox): it is a WARN line and exit 0, unless --strict."""
    from wrktalk_agent.preflight import blocks_deploys, format_checks, run_checks

    settings = load_settings()
    registry = load_registry(settings)  # once: for the warnings and for the checks
    _warn_unknown_variables(settings, registry)
    results = run_async(run_checks(settings, registry, None))
    if as_json or output == "json":
        print_json(
            [
                {
                    "name": r.name,
                    "ok": r.ok,
                    "blocking": blocks_deploys(r),
                    "status": "ok" if r.ok else "fail" if blocks_deploys(r) else "warn",
                    "detail": r.detail,
                }
                for r in results
            ]
        )
    else:
        click.echo(visible(format_checks(results), newlines=True))
    if any(not r.ok and (strict or blocks_deploys(r)) for r in results):
        sys.exit(1)
