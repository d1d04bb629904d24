"""Docker Compose deployer for wrktalk-agent: applies releases on a single Docker host."""

from __future__ import annotations

from wrktalk_agent.hookspecs import Register, hookimpl

from .deployer import ComposeDeployer
from .settings import ComposeSettings

__all__ = ["ComposeDeployer", "ComposeSettings"]


@hookimpl
def wrktalk_register_deployers(register: Register) -> None:
    register(ComposeDeployer)
