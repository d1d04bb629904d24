"""wrktalk-agent-smtp: emails the outcome of every task to the active admins."""

from __future__ import annotations

from wrktalk_agent.hookspecs import Register, hookimpl
from wrktalk_agent_smtp.notifier import SmtpNotifier
from wrktalk_agent_smtp.settings import SmtpSettings

__all__ = ["SmtpNotifier", "SmtpSettings"]


@hookimpl
def wrktalk_register_notifiers(register: Register) -> None:
    register(SmtpNotifier)
