"""`wrktalk-agent db init|check`: the schema."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from wrktalk_agent.cli.common import (
    load_settings,
    main,
    run_async,
    with_repo,
)
from wrktalk_agent.safe_text import visible

if TYPE_CHECKING:
    from wrktalk_agent.db.repository import Repository


# -- db --------------------------------------------------------------------------------
@main.group()
def db() -> None:
    """Create or check the database schema."""


@db.command("init")
def db_init() -> None:
    """Apply the schema (idempotent)."""
    settings = load_settings()
    missing = run_async(with_repo(settings, lambda r: r.init_schema()))
    if missing:
        click.echo(f"schema applied to {settings.masked_dsn()}; it lacked:")
        for line in missing:
            click.echo(f"  - {line}")
    else:
        click.echo(f"schema already up to date at {settings.masked_dsn()}")


@db.command("check")
def db_check() -> None:
    """Tell what the database lacks; exit 1 if anything."""
    settings = load_settings()
    problems = run_async(with_repo(settings, _schema_problems))
    for name, expression in run_async(with_repo(settings, _release_type_rules)):
        # a backend's own rule on release types: reported, never changed by `db init`
        click.echo(
            f"note: release types are limited by constraint {visible(name)} "
            f"CHECK {visible(expression)} (not the agent's; `db init` leaves it)"
        )
    if problems:
        click.echo(f"the database at {settings.masked_dsn()} lacks:")
        for line in problems:
            click.echo(f"  - {line}")
        click.echo("run `wrktalk-agent db init` to add them")
        sys.exit(1)
    click.echo("schema complete")


async def _schema_problems(repo: Repository) -> list[str]:
    return await repo.schema_problems()


async def _release_type_rules(repo: Repository) -> list[tuple[str, str]]:
    return await repo.release_type_constraints()
