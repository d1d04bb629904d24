"""The plugin as the agent sees it: found through its entry point, configured from the
environment."""

from __future__ import annotations

import pytest

from wrktalk_agent.interfaces import Notifier, PluginContext
from wrktalk_agent.testing import PluginRegistry, SettingsError
from wrktalk_agent_smtp import SmtpNotifier


def test_entry_point_registers_the_smtp_notifier():
    registry = PluginRegistry()

    backend = registry.get("notifier", "smtp")

    assert backend.plugin == "smtp"
    info = next(p for p in registry.infos() if p.name == "smtp")
    assert info.distribution == "wrktalk-agent-smtp"
    assert info.error is None
    assert info.hooks == ["wrktalk_register_notifiers"]


def test_settings_come_from_the_environment(monkeypatch, tmp_path, directory):
    monkeypatch.setenv("WRKTALK_AGENT_SMTP_HOST", "mail.acme.example")
    monkeypatch.setenv("WRKTALK_AGENT_SMTP_PORT", "465")
    monkeypatch.setenv("WRKTALK_AGENT_SMTP_TLS", "tls")
    monkeypatch.setenv("WRKTALK_AGENT_SMTP_PASSWORD", "from-env-Pa55")
    monkeypatch.setenv("WRKTALK_AGENT_SMTP_RETRIES", "5")
    context = PluginContext("agent-7", "Acme WrkTalk", tmp_path, directory)

    notifier = PluginRegistry().instantiate("notifier", "smtp", context)

    assert isinstance(notifier, Notifier)
    assert isinstance(notifier, SmtpNotifier)
    settings = notifier.settings
    assert (settings.host, settings.port, settings.tls, settings.retries) == (
        "mail.acme.example",
        465,
        "tls",
        5,
    )
    assert settings.password is not None
    assert settings.password.get_secret_value() == "from-env-Pa55"
    assert "from-env-Pa55" not in repr(settings)


def test_invalid_setting_names_the_variable(monkeypatch, tmp_path, directory):
    monkeypatch.setenv("WRKTALK_AGENT_SMTP_TLS", "ssl")
    context = PluginContext("agent-7", "Acme WrkTalk", tmp_path, directory)

    with pytest.raises(SettingsError) as error:
        PluginRegistry().instantiate("notifier", "smtp", context)

    assert error.value.lines[0].startswith("WRKTALK_AGENT_SMTP_TLS: ")
