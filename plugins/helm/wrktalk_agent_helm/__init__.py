"""Helm deployer for wrktalk-agent (Kubernetes installations).

Registered through the ``wrktalk_agent`` entry point; selected with
``WRKTALK_AGENT_DEPLOYER=helm`` (the default for ``WRKTALK_AGENT_DEPLOYMENT_TYPE=kubernetes``).
"""

from __future__ import annotations

from wrktalk_agent.hookspecs import Register, hookimpl
from wrktalk_agent_helm.deployer import HelmDeployer
from wrktalk_agent_helm.settings import HelmSettings

__all__ = ["HelmDeployer", "HelmSettings", "wrktalk_register_deployers"]


@hookimpl
def wrktalk_register_deployers(register: Register) -> None:
    register(HelmDeployer)
