"""`wrktalk-agent maintenance on|off|status`: an operator's maintenance window."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import click

from wrktalk_agent.cli.common import (
    Failure,
    load_settings,
    main,
    print_json,
    run_async,
    with_repo,
)
from wrktalk_agent.safe_text import visible

if TYPE_CHECKING:
    from wrktalk_agent.db.models import MaintenanceState
    from wrktalk_agent.db.repository import Repository


# -- maintenance -----------------------------------------------------------------------
@main.command()
@click.argument("action", type=click.Choice(["on", "off", "status"]))
@click.option("--reason", default="operator request", show_default=True)
@click.option("--by", "who", default=None, help="Whose window (default: $USER).")
@click.option("--force", is_flag=True, help="Switch off now, releasing every hold (tasks' too).")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def maintenance(action: str, reason: str, who: str | None, force: bool, output: str) -> None:
    """Open or close your maintenance window, or show who holds maintenance mode.

    Each operator's window is a hold of its own, as is a running task's: maintenance goes
    off when the last hold is released. `off` closes your window only; `off --force`
    switches maintenance off for everyone (recorded in the tasks' timelines)."""
    from wrktalk_agent import maintenance as maint
    from wrktalk_agent.bootstrap import make_registry, plugin_context
    from wrktalk_agent.interfaces import BackendError

    settings = load_settings()
    if settings.maintenance_name is None and action != "status":
        raise Failure("WRKTALK_AGENT_MAINTENANCE_MODE_HANDLER is 'none': nothing to switch", 2)
    operator = who or os.environ.get("USER") or _login_name()

    async def act(
        repo: Repository,
    ) -> tuple[bool | None, MaintenanceState, maint.OperatorResult | None]:
        handler = None
        if settings.maintenance_name is not None:
            registry = make_registry(settings)
            handler = registry.instantiate(
                "maintenance handler", settings.maintenance_name, plugin_context(settings, repo)
            )
        done = None
        try:
            if action == "on":
                done = await maint.operator_on(
                    repo, handler, who=operator, reason=reason, timeout=settings.backend_timeout
                )
            elif action == "off":
                done = await maint.operator_off(
                    repo, handler, who=operator, timeout=settings.backend_timeout, force=force
                )
            live = bool(await handler.status()) if handler is not None else None
        except BackendError as exc:
            raise Failure(f"{settings.maintenance_name}: {visible(exc)}") from None
        return live, await repo.maintenance_state(), done

    live, state, done = run_async(with_repo(settings, act))
    if output == "json":
        data: dict[str, Any] = {
            "enabled": state.enabled,
            "proxy": None if live is None else {"handler": settings.maintenance_name, "on": live},
            "holds": [
                {
                    "holder": h.holder,
                    "reason": h.reason,
                    "since": h.since.isoformat() if h.since else None,
                }
                for h in state.holds
            ],
            "off_pending_since": (
                state.off_pending_since.isoformat() if state.off_pending_since else None
            ),
            "off_error": state.off_error,
        }
        if done is not None:
            data["action"] = {"action": action, "holder": done.holder, "force": force}
            if done.released is not None:
                data["action"]["released"] = [h.holder for h in done.released.holds]
                data["action"]["switch_off_error"] = done.released.error
        print_json(data)
        return
    if done is not None and done.action == "on" and done.existed:
        click.echo(f"{operator}'s window was open already: reason now {reason!r}")
    if done is not None and done.released is not None:
        gone = done.released.holds
        if force and gone:
            click.echo(f"released by --force: {', '.join(h.holder for h in gone)}")
        if done.released.error:
            click.echo(
                f"switching maintenance off failed: {visible(done.released.error)} "
                "(a running agent retries until it is off)"
            )
    proxy = f"{settings.maintenance_name}: {'ON' if live else 'off'}" if live is not None else ""
    line = f"maintenance mode is {'ON' if state.enabled else 'off'}"
    if state.enabled:
        since = state.since.strftime("%Y-%m-%d %H:%M:%S %Z") if state.since else "unknown"
        line += f" — held by: {visible(maint.describe_owner(state))}, since {since}"
    click.echo(f"{line}{f' ({proxy})' if proxy else ''}")


def _login_name() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
