"""One definition of a secret: every secret-looking setting or key name is masked in logs,
task results, the dashboard, emails and settings errors — and a harmless name nowhere —
because all of them ask :mod:`wrktalk_agent.secrets`."""

from __future__ import annotations

import json

import pytest
from pydantic import Field, ValidationError, create_model
from pydantic_settings import BaseSettings

from wrktalk_agent.interfaces import NotificationKind, Recipient
from wrktalk_agent.log import configure_logging, get_logger
from wrktalk_agent.pipeline import Secrets
from wrktalk_agent.plugins import format_validation_error
from wrktalk_agent.secrets import MASK, is_secret_name, mask_text
from wrktalk_agent.testing import notification_event
from wrktalk_agent.tui import format as fmt

SECRET_NAMES = [
    "password", "DB_PASSWORD", "smtp_password", "passwd", "pwd", "passphrase",
    "secret", "client_secret", "token", "auth_token", "GITHUB_TOKEN", "api_key", "apikey",
    "apiKey", "API_KEY", "credential", "credentials", "private_key", "privateKey",
    "ssh_private_key", "auth", "authorization", "AWS_ACCESS_KEY", "access_key",
    "signing_key", "key", "dsn", "env_data", "values_data", "cookie", "session_id",
    "jwt", "oauth",
]  # fmt: skip
HARMLESS_NAMES = ["version", "author", "monkey", "passenger", "revision", "replicas", "step"]
VALUE = "Zq8-leaks-if-shown-41"


def test_the_names_of_the_issue_are_secret_and_harmless_ones_are_not() -> None:
    assert all(is_secret_name(name) for name in SECRET_NAMES)
    assert not any(is_secret_name(name) for name in HARMLESS_NAMES)
    assert is_secret_name("x-auth-token") and is_secret_name("API-KEY")


def _log_lines(capsys: pytest.CaptureFixture[str], **fields: str) -> str:
    configure_logging("info", "json")
    get_logger().info("test.event", **fields)
    return capsys.readouterr().err


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_a_secret_name_is_masked_everywhere(name: str, capsys) -> None:
    # logs: as a key of the line, and as an assignment inside a message
    logged = _log_lines(capsys, **{name: VALUE, "detail": f"export {name}={VALUE}"})
    assert VALUE not in logged
    line = json.loads(logged.strip().splitlines()[-1])
    assert line[name] == MASK and line["detail"] == f"export {name}={MASK}"

    # task results and everything a task stores (the pipeline's redaction)
    secrets = Secrets()
    assert secrets.redact_value({"details": {name: VALUE}}) == {"details": {name: MASK}}
    assert secrets.redact(f"{name}: {VALUE}") == f"{name}: {MASK}"

    # the dashboard (results written by plugins the agent does not control)
    assert fmt.mask_secrets({"deployer": {name: VALUE}}) == {"deployer": {name: MASK}}
    assert VALUE not in fmt.mask_secrets(f'{name}="{VALUE}"')

    # emails: an error quoting the value, as the pipeline hands it to the notifiers
    email = _email(error=secrets.redact(f"deploy failed: {name}={VALUE}"))
    assert VALUE not in email and f"{name}={MASK}" in email

    # settings errors of plugins do not quote the value
    assert VALUE not in _settings_error(name)


@pytest.mark.parametrize("name", HARMLESS_NAMES)
def test_a_harmless_name_is_shown_everywhere(name: str, capsys) -> None:
    logged = _log_lines(capsys, **{name: VALUE})
    assert json.loads(logged.strip().splitlines()[-1])[name] == VALUE
    assert Secrets().redact_value({name: VALUE}) == {name: VALUE}
    assert fmt.mask_secrets({name: VALUE}) == {name: VALUE}
    assert VALUE in _email(error=Secrets().redact(f"{name}={VALUE}"))
    assert VALUE in _settings_error(name)


def test_credentials_inside_text_are_masked_the_same_way() -> None:
    text = "connect postgresql://app:pw-9x@db/app?sslmode=require and redis://:pw-8y@cache"
    assert mask_text(text) == (
        "connect postgresql://app:***@db/app?sslmode=require and redis://:***@cache"
    )
    assert mask_text("host=db password=pw-7z user=app") == "host=db password=*** user=app"
    # an exception's name is not a setting: its message stays readable
    assert mask_text("KeyError: 'token'") == "KeyError: 'token'"


def _email(**fields: object) -> str:
    from wrktalk_agent_smtp.notifier import build_message
    from wrktalk_agent_smtp.render import Templates

    event = notification_event(NotificationKind.DEPLOY_FAILED, **fields)
    rendered = Templates().render(event)
    message = build_message(
        rendered, "agent@example.org", Recipient(name="Ops", email="ops@example.org")
    )
    return message.as_string() + rendered.text + rendered.html


def _settings_error(name: str) -> str:
    field = name if name.isidentifier() else name.replace("-", "_")
    model = create_model(  # type: ignore[call-overload]
        "ExampleSettings", __base__=BaseSettings, **{field: (int, Field(...))}
    )
    model.model_config["env_prefix"] = "WRKTALK_AGENT_EXAMPLE_"
    with pytest.raises(ValidationError) as error:
        model(**{field: VALUE})
    return "\n".join(format_validation_error(error.value, model))
