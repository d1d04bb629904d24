"""`wrktalk-agent run`: the agent itself."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import click

from wrktalk_agent.cli.common import (
    HttpPortError,
    _logs_are_json,
    _warn_unknown_variables,
    json_errors,
    load_registry,
    load_settings,
    main,
    run_async,
)

if TYPE_CHECKING:
    from wrktalk_agent.config import AgentSettings
    from wrktalk_agent.plugins import PluginRegistry


# -- run -------------------------------------------------------------------------------
@main.command()
@click.option("--once", is_flag=True, help="Run at most one due task, then exit.")
def run(once: bool) -> None:
    """Run the agent: claim tasks and deploy them until stopped (SIGTERM/SIGINT)."""
    json_errors(_logs_are_json())
    settings = load_settings(command_logs=False)
    registry = load_registry(settings)  # once: for the warnings and for the backends
    _warn_unknown_variables(settings, registry)
    sys.exit(run_async(_run(settings, registry, once=once)))


async def _run(settings: AgentSettings, registry: PluginRegistry, *, once: bool) -> int:
    import structlog

    from wrktalk_agent import __version__, startup
    from wrktalk_agent.bootstrap import open_services
    from wrktalk_agent.log import get_logger
    from wrktalk_agent.runtime import Agent

    structlog.contextvars.bind_contextvars(
        agent_id=settings.agent_id
    )  # every line, library ones too
    log = get_logger()
    services = await open_services(settings, registry)
    agent = Agent(services)
    startup.loaded()
    agent.install_signal_handlers()
    http = None
    try:
        if settings.http_port is not None and not once:
            http = await _start_http(agent, settings)
        log.info(
            "agent.started",
            version=__version__,
            database=settings.masked_dsn(),
            deployer=services.deployer.name,
            maintenance=services.maintenance.name if services.maintenance else None,
            notifiers=[n.name for n in services.notifiers],
        )
        return await agent.run(once=once)
    finally:
        if http is not None:
            await http.close()
        await services.repo.close()


async def _start_http(agent: Any, settings: AgentSettings) -> Any:

    from wrktalk_agent.http import HealthState, start_http_server

    state = HealthState(loop_stuck_after=max(60.0, 3 * settings.poll_interval))
    agent.on_tick = state.tick

    async def ready() -> bool:
        await agent.repo.ping(3)
        return True

    try:
        return await start_http_server(settings.http_host, settings.http_port or 0, state, ready)
    except OSError as exc:
        raise HttpPortError(
            f"cannot serve HTTP on {settings.http_host}:{settings.http_port}: "
            f"{os.strerror(exc.errno) if exc.errno else exc} "
            "(WRKTALK_AGENT_HTTP_PORT / WRKTALK_AGENT_HTTP_HOST)"
        ) from None
