"""nginx maintenance-mode handler for wrktalk-agent.

Select it with ``WRKTALK_AGENT_MAINTENANCE_MODE_HANDLER=nginx``; configure it with
``WRKTALK_AGENT_NGINX_*`` (see :class:`NginxSettings`) and install the nginx snippet from
:func:`render_snippets` (also in this plugin's README).
"""

from __future__ import annotations

from wrktalk_agent.hookspecs import Register, hookimpl
from wrktalk_agent_nginx.backend import NginxMaintenance, NginxSettings
from wrktalk_agent_nginx.snippet import NginxSnippets, maintenance_page, render_snippets

__all__ = [
    "NginxMaintenance",
    "NginxSettings",
    "NginxSnippets",
    "maintenance_page",
    "render_snippets",
]


@hookimpl
def wrktalk_register_maintenance_handlers(register: Register) -> None:
    register(NginxMaintenance)
