"""`wrktalk-agent check`: healthy and broken setups, each failure named on its own line."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from wrktalk_agent.config import AgentSettings
from wrktalk_agent.hookspecs import hookimpl
from wrktalk_agent.interfaces import CheckResult, DeployOutcome, PluginContext
from wrktalk_agent.plugins import PluginRegistry
from wrktalk_agent.preflight import format_checks, run_checks
from wrktalk_agent.signing import generate_keypair
from wrktalk_agent.testing import with_database


class _Backend:
    def __init__(self, settings: object, context: PluginContext) -> None:
        self.settings = settings
        self.context = context


class GoodDeployer(_Backend):
    name = "testdeploy"
    chart_types = ("compose",)

    async def check(self) -> Sequence[CheckResult]:
        return [CheckResult("tool", True, "found v1.0"), CheckResult("target", True, "reachable")]

    async def deploy(self, request: object) -> DeployOutcome:
        return DeployOutcome(output="deployed")

    async def rollback(self, request: object) -> DeployOutcome:
        return DeployOutcome(output="rolled back")


class RaisingMaintenance(_Backend):
    name = "raising"

    async def check(self) -> Sequence[CheckResult]:
        raise RuntimeError("socket /run/haproxy.sock is gone")

    async def enable(self, reason: str) -> None: ...

    async def disable(self) -> None: ...

    async def status(self) -> bool:
        return False


class _Notifier(_Backend):
    async def notify(self, event: object) -> list:
        return []


class AdminsNotifier(_Notifier):
    """Reads the database through the context's directory, like the SMTP notifier does."""

    name = "admins"

    async def check(self) -> Sequence[CheckResult]:
        admins = await self.context.directory.active_admins()
        return [CheckResult("recipients", bool(admins), f"{len(admins)} active admin(s)")]


class FailingNotifier(_Notifier):
    name = "failing"

    async def check(self) -> Sequence[CheckResult]:
        return [CheckResult("smtp connect", False, "mail.example.com:587: connection refused")]


class BrokenInitNotifier(_Notifier):
    name = "broken"

    def __init__(self, settings: object, context: PluginContext) -> None:
        raise RuntimeError("cannot parse the template directory")

    async def check(self) -> Sequence[CheckResult]:
        return []


class PfTestSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WRKTALK_AGENT_NEEDS_SETTINGS_")
    url: str


class NeedsSettingsNotifier(_Notifier):
    name = "needs-settings"
    settings_model = PfTestSettings

    async def check(self) -> Sequence[CheckResult]:
        return []


class HangingNotifier(_Notifier):
    name = "hangs"

    async def check(self) -> Sequence[CheckResult]:
        await asyncio.sleep(30)
        return []


class QuietNotifier(_Notifier):
    name = "quiet"

    async def check(self) -> Sequence[CheckResult]:
        return []


class TestPlugin:
    @hookimpl
    def wrktalk_register_deployers(self, register) -> None:
        register(GoodDeployer)

    @hookimpl
    def wrktalk_register_maintenance_handlers(self, register) -> None:
        register(RaisingMaintenance)

    @hookimpl
    def wrktalk_register_notifiers(self, register) -> None:
        for cls in (AdminsNotifier, FailingNotifier, BrokenInitNotifier, NeedsSettingsNotifier,
                    HangingNotifier, QuietNotifier):  # fmt: skip
            register(cls)


@pytest.fixture
def registry() -> PluginRegistry:
    registry = PluginRegistry(entry_points=False)
    registry.register_module(TestPlugin(), name="preflight-test")
    return registry


@pytest.fixture
def settings(agent_settings: AgentSettings) -> AgentSettings:
    return agent_settings.model_copy(update={"deployer": "testdeploy", "notifiers": ["admins"]})


def with_url(settings: AgentSettings, url: str) -> AgentSettings:
    return settings.model_copy(update={"database_url": SecretStr(url)})


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results}


async def test_a_healthy_setup_passes_every_check(settings, registry, repo) -> None:
    await repo.pool.execute("INSERT INTO admin (name, email) VALUES ('Ada', 'ada@example.com')")

    results = await run_checks(settings, registry, None)

    assert [r.name for r in results] == [
        "database", "schema", "privileges", "deployer testdeploy: tool",
        "deployer testdeploy: target", "notifier admins: recipients", "work dir", "trusted keys",
    ]  # fmt: skip
    assert all(r.ok for r in results), format_checks(results)
    checks = by_name(results)
    assert settings.server_label() in checks["database"].detail
    assert checks["notifier admins: recipients"].detail == "1 active admin(s)"
    assert checks["trusted keys"].detail == "none configured: signatures are not verified"
    assert settings.work_dir.is_dir() and list(settings.work_dir.iterdir()) == []


async def test_every_broken_plugin_is_a_failed_line_not_a_traceback(
    settings, registry, monkeypatch
) -> None:
    monkeypatch.delenv("WRKTALK_AGENT_NEEDS_SETTINGS_URL", raising=False)
    settings = settings.model_copy(
        update={
            "deployer": "helmm",
            "maintenance_mode_handler": "raising",
            "notifiers": ["failing", "broken", "needs-settings", "hangs", "quiet"],
        }
    )

    results = await run_checks(settings, registry, None, plugin_timeout=0.3)
    checks = by_name(results)

    assert checks["database"].ok and checks["schema"].ok and checks["work dir"].ok
    assert checks["deployer helmm"].detail == (
        "no installed plugin provides a deployer named 'helmm'; installed deployers: testdeploy"
    )
    assert checks["maintenance handler raising"].detail == (
        "check() raised RuntimeError: socket /run/haproxy.sock is gone"
    )
    assert checks["notifier failing: smtp connect"].detail == (
        "mail.example.com:587: connection refused"
    )
    assert checks["notifier broken"].detail == (
        "could not start notifier 'broken': cannot parse the template directory"
    )
    assert checks["notifier needs-settings"].detail.startswith(
        "WRKTALK_AGENT_NEEDS_SETTINGS_URL: Field required"
    )
    assert checks["notifier hangs"].detail == "check() did not finish within 0.3s"
    assert checks["notifier quiet"].ok
    failed = {r.name for r in results if not r.ok}
    assert failed == {
        "deployer helmm", "maintenance handler raising", "notifier failing: smtp connect",
        "notifier broken", "notifier needs-settings", "notifier hangs",
    }  # fmt: skip


async def test_an_unreachable_database_names_host_and_port(settings, registry) -> None:
    settings = with_url(settings, "postgresql://u:hunter2@127.0.0.1:1/x")

    results = await run_checks(settings, registry, None, db_timeout=3)
    checks = by_name(results)

    assert not checks["database"].ok
    assert checks["database"].detail.startswith("cannot reach PostgreSQL at 127.0.0.1:1:")
    assert checks["schema"].detail == "not checked: database unreachable"
    # the plugin that needs the database says why it could not read it
    assert checks["notifier admins"].detail.startswith(
        "check() raised DatabaseUnavailable: cannot reach PostgreSQL at 127.0.0.1:1"
    )
    # the other checks still ran
    assert checks["deployer testdeploy: tool"].ok and checks["work dir"].ok
    assert "hunter2" not in format_checks(results)


async def test_a_missing_database_is_named(settings, registry, database_url) -> None:
    url = with_database(database_url, "no_such_db")
    settings = with_url(settings, url)

    checks = by_name(await run_checks(settings, registry, None))

    assert not checks["database"].ok
    assert 'database "no_such_db" does not exist' in checks["database"].detail


async def test_a_missing_table_fails_the_schema_check(settings, registry, repo) -> None:
    await repo.pool.execute("DROP TABLE agent_task_event")

    checks = by_name(await run_checks(settings, registry, None))

    assert checks["database"].ok
    assert not checks["schema"].ok
    assert checks["schema"].detail == (
        "table agent_task_event is missing; index agent_task_event_task (task timelines) "
        "is missing (run `wrktalk-agent db init`)"
    )


async def test_an_unwritable_work_dir_fails(settings, registry, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    settings = settings.model_copy(update={"work_dir": blocker / "work"})

    checks = by_name(await run_checks(settings, registry, None))

    assert not checks["work dir"].ok
    assert checks["work dir"].detail == (
        f"work dir {blocker / 'work'} cannot be created: {blocker / 'work'}: Not a directory"
    )


async def test_trusted_keys_are_parsed(settings, registry, tmp_path: Path) -> None:
    _, public_pem = generate_keypair()
    key_file = tmp_path / "release.pub"
    key_file.write_bytes(public_pem)

    good = settings.model_copy(update={"trusted_keys": [str(key_file), public_pem.decode()]})
    assert by_name(await run_checks(good, registry, None))["trusted keys"] == CheckResult(
        "trusted keys", True, "2 Ed25519 key(s) loaded"
    )

    bad = settings.model_copy(update={"trusted_keys": [str(key_file), "/etc/missing.pub"]})
    line = by_name(await run_checks(bad, registry, None))["trusted keys"]
    assert not line.ok
    assert line.detail.startswith("trusted key #2 (/etc/missing.pub): ")


async def test_a_given_context_is_handed_to_the_plugins(settings, registry, repo) -> None:
    class NoAdmins:
        async def active_admins(self) -> list:
            return []

        async def smtp_config(self):
            raise AssertionError("not used")

    context = PluginContext(
        agent_id="a", installation="Acme", work_dir=settings.work_dir, directory=NoAdmins()
    )
    await repo.pool.execute("INSERT INTO admin (name, email) VALUES ('Ada', 'ada@example.com')")

    checks = by_name(await run_checks(settings, registry, context))

    assert checks["notifier admins: recipients"] == CheckResult(
        "notifier admins: recipients", False, "0 active admin(s)"
    )


def test_format_checks_renders_a_table_and_a_summary() -> None:
    results = [
        CheckResult("database", True, "connected to postgresql://agent:***@db:5432/wrktalk"),
        CheckResult("deployer helm: binary", False, "helm not found on PATH\n(install helm 3)"),
        CheckResult("work dir", True),
    ]
    assert format_checks(results) == (
        "ok    database               connected to postgresql://agent:***@db:5432/wrktalk\n"
        "FAIL  deployer helm: binary  helm not found on PATH (install helm 3)\n"
        "ok    work dir\n"
        "1 of 3 checks failed"
    )
    assert format_checks(results[:1]).endswith("\nall 1 checks passed")
