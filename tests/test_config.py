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


def test_a_host_list_with_per_host_ports_becomes_a_multi_host_dsn(monkeypatch) -> None:
    monkeypatch.setenv("WRKTALK_AGENT_DB_HOST", "pg1, pg2:5433 ,[fd00::3]")
    monkeypatch.setenv("WRKTALK_AGENT_DB_PORT", "6432")
    monkeypatch.setenv("WRKTALK_AGENT_DB_PASSWORD", "hunter2")
    settings = AgentSettings()
    assert settings.hosts() == [("pg1", 6432), ("pg2", 5433), ("fd00::3", 6432)]
    assert settings.dsn() == "postgresql://wrktalk:hunter2@pg1:6432,pg2:5433,[fd00::3]:6432/wrktalk"
    assert (
        settings.masked_dsn() == "postgresql://wrktalk:***@pg1:6432,pg2:5433,[fd00::3]:6432/wrktalk"
    )
    assert settings.server_label() == "pg1:6432,pg2:5433,[fd00::3]:6432"
    assert settings.target_session_attrs() == "read-write"
    assert settings.target_session_attrs(tui=True) == "read-write"

    listed = AgentSettings(db_host="a,b,c", db_port="5432,5433,5434")
    assert listed.hosts() == [("a", 5432), ("b", 5433), ("c", 5434)]


def test_the_dsn_names_its_own_target_session_attrs_and_the_tui_may_read_a_standby() -> None:
    url = "postgresql://u:secret@h1:5432,h2:5432/db?target_session_attrs=primary"
    settings = AgentSettings(database_url=url, tui_target_session_attrs="prefer-standby")
    assert settings.target_session_attrs() is None  # asyncpg reads it from the DSN
    assert settings.target_session_attrs(tui=True) == "prefer-standby"
    assert settings.server_label() == "h1:5432,h2:5432"
    assert "secret" not in settings.masked_dsn()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"db_host": "a,b", "db_port": "1,2,3"}, "WRKTALK_AGENT_DB_PORT lists 3 ports for 2 hosts"),
        ({"db_host": "a:99999"}, "the port must be a number between 1 and 65535"),
        ({"db_host": "a,:5432"}, "names no host"),
        ({"db_port": "5432,x"}, "WRKTALK_AGENT_DB_PORT"),
        ({"db_target_session_attrs": "any"}, "WRKTALK_AGENT_DB_TARGET_SESSION_ATTRS"),
        (
            {"database_url": "postgresql://u:pw@h/db?target_session_attrs=master"},
            "target_session_attrs='master' is not one of",
        ),
        ({"listen_database_url": "mysql://u:pw@h/db"}, "LISTEN_DATABASE_URL must start"),
    ],
)
def test_bad_multi_host_settings_are_one_line_each(env, message) -> None:
    with pytest.raises(ValidationError) as caught:
        AgentSettings(**env)
    [line] = format_validation_error(caught.value, AgentSettings)
    assert message in line and "pw" not in line
