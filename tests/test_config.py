"""Settings: derived values, masking, validation messages."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from wrktalk_agent.config import AgentSettings, mask_dsn
from wrktalk_agent.plugins import format_validation_error


def test_dsn_from_parts_is_masked_everywhere_it_is_shown(monkeypatch) -> None:
    monkeypatch.setenv("WRKTALK_AGENT_DB_HOST", "db.internal")
    monkeypatch.setenv("WRKTALK_AGENT_DB_USER", "agent")
    monkeypatch.setenv("WRKTALK_AGENT_DB_PASSWORD", "p@ss:word/1")
    settings = AgentSettings()
    assert settings.dsn() == "postgresql://agent:p%40ss%3Aword%2F1@db.internal:5432/wrktalk"
    assert settings.masked_dsn() == "postgresql://agent:***@db.internal:5432/wrktalk"
    assert settings.server_label() == "db.internal:5432"
    assert "p@ss" not in repr(settings) and "p@ss" not in str(settings.model_dump())


def test_socket_directory_host_and_query_password() -> None:
    settings = AgentSettings(db_host="/run/postgresql", db_port=5433, db_name="w")
    assert settings.dsn() == "postgresql://wrktalk@/w?host=/run/postgresql&port=5433"
    assert settings.server_label() == "/run/postgresql:5433"
    assert mask_dsn("postgresql://u@h/db?password=x&sslmode=require") == (
        "postgresql://u@h/db?password=***&sslmode=require"
    )


def test_derived_defaults() -> None:
    settings = AgentSettings(deployment_type="kubernetes", heartbeat_interval=20)
    assert settings.deployer_name == "helm"
    assert AgentSettings(deployment_type="docker").deployer_name == "compose"
    assert settings.stale_after_seconds == 60
    assert settings.maintenance_name is None
    assert AgentSettings(maintenance_mode_handler="haproxy").maintenance_name == "haproxy"
    assert AgentSettings(notifiers="smtp, webhook ,").notifiers == ["smtp", "webhook"]


def test_invalid_values_name_their_variables_and_hide_secrets() -> None:
    with pytest.raises(ValidationError) as caught:
        AgentSettings(
            database_url="mysql://root:hunter2@x/db",
            db_pool_min_size=5,
            db_pool_max_size=2,
        )
    lines = format_validation_error(caught.value, AgentSettings)
    assert lines == [
        "WRKTALK_AGENT_DB_POOL_MIN_SIZE (5) is larger than WRKTALK_AGENT_DB_POOL_MAX_SIZE (2)"
    ]
    with pytest.raises(ValidationError) as caught:
        AgentSettings(database_url="mysql://root:hunter2@x/db")
    [line] = format_validation_error(caught.value, AgentSettings)
    assert "must start with postgresql://" in line and "hunter2" not in line
