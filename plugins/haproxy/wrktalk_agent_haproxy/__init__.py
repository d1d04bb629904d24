"""HAProxy maintenance-mode handler for wrktalk-agent.

Select it with ``WRKTALK_AGENT_MAINTENANCE_MODE_HANDLER=haproxy``; configure it with
``WRKTALK_AGENT_HAPROXY_*`` (see :class:`HaproxySettings`) and install the HAProxy
configuration from :func:`render_config` (also in this plugin's README).
"""

from __future__ import annotations

from wrktalk_agent.hookspecs import Register, hookimpl
from wrktalk_agent_haproxy.backend import HaproxyMaintenance, HaproxySettings
from wrktalk_agent_haproxy.snippet import maintenance_page, render_config

__all__ = ["HaproxyMaintenance", "HaproxySettings", "maintenance_page", "render_config"]


@hookimpl
def wrktalk_register_maintenance_handlers(register: Register) -> None:
    register(HaproxyMaintenance)
