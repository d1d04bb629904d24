"""One broken plugin is named and isolated; the others, and every command, keep working.

Each malformed plugin below is a real module on sys.path, loaded the way
``WRKTALK_AGENT_EXTRA_PLUGINS`` loads it.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from wrktalk_agent.cli import main
from wrktalk_agent.errors import PluginError, SettingsError
from wrktalk_agent.interfaces import BaseDeployer, BaseNotifier, DeployOutcome
from wrktalk_agent.testing import make_tarball, plugin_context, registry_with

HEADER = """
from typing import ClassVar
from pathlib import Path
from pydantic_settings import BaseSettings, SettingsConfigDict
from wrktalk_agent.hookspecs import hookimpl
from wrktalk_agent.interfaces import BaseDeployer, BaseNotifier, DeployOutcome
"""

MODULES = {
    # a misspelled hook: pluggy's check_pending would fail every command
    "typo_plugin": """
        @hookimpl
        def wrktalk_register_deployer(register):
            pass
    """,
    # a hook implemented with an argument the spec does not have
    "badargs_plugin": """
        @hookimpl
        def wrktalk_register_notifiers(registrar):
            pass
    """,
    "halfdeployer_plugin": """
        class Half(BaseDeployer):
            name = "half"

            async def deploy(self, request):
                return DeployOutcome()

        @hookimpl
        def wrktalk_register_deployers(register):
            register(Half)
    """,
    "syncnotifier_plugin": """
        class Sync:
            name = "sync"
            def __init__(self, settings, context): pass
            async def check(self): return []
            def notify(self, event): return []

        @hookimpl
        def wrktalk_register_notifiers(register):
            register(Sync)
    """,
    "raising_plugin": """
        @hookimpl
        def wrktalk_register_notifiers(register):
            raise RuntimeError("templates missing")
    """,
    # no prefix: a field named `home` would read $HOME
    "noprefix_plugin": """
        class HomeSettings(BaseSettings):
            home: Path = Path("/srv")

        class Home(BaseNotifier):
            name = "home"
            settings_model = HomeSettings
            async def notify(self, event): return []

        @hookimpl
        def wrktalk_register_notifiers(register):
            register(Home)
    """,
    "clash_plugin": """
        class Script(BaseDeployer):
            name = "script"
            async def deploy(self, request): return DeployOutcome()
            async def rollback(self, request): return DeployOutcome()

        @hookimpl
        def wrktalk_register_deployers(register):
            register(Script)
    """,
    "pathy_plugin": """
        class PathySettings(BaseSettings):
            model_config = SettingsConfigDict(env_prefix="WRKTALK_AGENT_PATHY_")
            spool: Path = Path("/var/spool/pathy")
            retries: int = 3

        class Pathy(BaseNotifier):
            name = "pathy"
            settings_model = PathySettings
            async def notify(self, event): return []

        class Plain(BaseDeployer):
            name = "plain"
            async def deploy(self, request): return DeployOutcome(output="plain deploy ok")
            async def rollback(self, request): return DeployOutcome()

        @hookimpl
        def wrktalk_register_notifiers(register):
            register(Pathy)

        @hookimpl
        def wrktalk_register_deployers(register):
            register(Plain)
    """,
}


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "plugin-modules"
    folder.mkdir()
    for name, body in MODULES.items():
        (folder / f"{name}.py").write_text(HEADER + textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(folder))
    return folder


@pytest.fixture
def cli(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plugin_dir: Path):
    for key in list(os.environ):
        if key.startswith("WRKTALK_AGENT_"):
            monkeypatch.delenv(key)
    base = {
        "WRKTALK_AGENT_DATABASE_URL": database_url,
        "WRKTALK_AGENT_WORK_DIR": str(tmp_path / "work"),
        "WRKTALK_AGENT_LOG_FORMAT": "json",
        "WRKTALK_AGENT_NOTIFIERS": "",
        "WRKTALK_AGENT_EXTRA_PLUGINS": ",".join(MODULES),
    }

    def run(*args: str, env: dict[str, str] | None = None):
        return CliRunner().invoke(main, list(args), env={**base, **(env or {})})

    return run


PROBLEMS = {
    "typo_plugin": "'wrktalk_register_deployer' is not a wrktalk-agent hook "
    "(did you mean 'wrktalk_register_deployers'?)",
    "badargs_plugin": "Argument(s) {'registrar'} are declared in the hookimpl but can not be "
    "found in the hookspec",
    "halfdeployer_plugin": "deployer 'half' lacks method(s): rollback",
    "syncnotifier_plugin": "notifier 'sync': method(s) not async: notify",
    "raising_plugin": "wrktalk_register_notifiers raised RuntimeError: templates missing",
    "noprefix_plugin": "notifier 'home': settings model HomeSettings reads the environment with "
    "prefix ''; set model_config env_prefix='WRKTALK_AGENT_HOME_'",
    "clash_plugin": "two plugins provide a deployer named 'script': 'script' and "
    "'clash_plugin'; uninstall one of them",
}


def test_plugins_lists_each_broken_plugin_with_its_problem(cli) -> None:
    result = cli("plugins", "--json")
    assert result.exit_code == 0, result.output
    listed = {p["name"]: p for p in json.loads(result.output)}
    for name, problem in PROBLEMS.items():
        assert listed[name]["error_kind"] == "invalid", name
        assert problem in listed[name]["error"], (name, listed[name]["error"])
        assert listed[name]["backends"] == []
    # the healthy ones lose nothing
    assert listed["pathy_plugin"]["error"] is None
    assert listed["pathy_plugin"]["backends"] == ["deployer:plain", "notifier:pathy"]
    assert listed["script"]["backends"] == ["deployer:script"]
    assert listed["helm"]["error"] is None

    text = cli("plugins")
    assert text.exit_code == 0 and "Traceback" not in text.output
    assert PROBLEMS["halfdeployer_plugin"] in text.output


def test_run_and_check_ignore_broken_plugins_that_are_not_selected(cli, tmp_path: Path) -> None:
    release = tmp_path / "r.tgz"
    release.write_bytes(make_tarball({"deploy": "#!/bin/sh\ntrue\n"}))
    env = {
        "WRKTALK_AGENT_DEPLOYER": "helm",  # selected, and not broken
        "WRKTALK_AGENT_NOTIFIERS": "pathy",
    }
    checked = cli("check", "--json", env=env)
    assert "Traceback" not in checked.output
    lines = {c["name"] for c in json.loads(checked.output)}
    assert "notifier pathy" in lines  # a healthy third-party plugin is still checked

    added = cli("release", "add", str(release), "--version", "1.0.0", "--chart-type", "compose")
    assert added.exit_code == 0, added.output
    assert cli("task", "deploy", "1.0.0").exit_code == 0
    ran = cli("run", "--once", env={"WRKTALK_AGENT_DEPLOYER": "plain"})
    assert ran.exit_code == 0, ran.output
    [task] = json.loads(cli("task", "list", "--json").output)
    assert task["status"] == "completed"

    unknown = cli("run", "--once", env={"WRKTALK_AGENT_DEPLOYER": "halff"})
    assert unknown.exit_code == 2  # an unknown name: one line naming the broken plugins
    assert "no installed plugin provides a deployer named 'halff'" in unknown.output
    assert "broken plugins: " in unknown.output and "typo_plugin" in unknown.output


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"WRKTALK_AGENT_DEPLOYER": "half"},
            "error: the deployer 'half' comes from plugin 'halfdeployer_plugin' (module), "
            "which is invalid: deployer 'half' lacks method(s): rollback",
        ),
        (
            {"WRKTALK_AGENT_NOTIFIERS": "sync"},
            "error: the notifier 'sync' comes from plugin 'syncnotifier_plugin' (module), "
            "which is invalid: notifier 'sync': method(s) not async: notify",
        ),
        (
            {"WRKTALK_AGENT_NOTIFIERS": "home"},
            "which is invalid: notifier 'home': settings model HomeSettings reads the "
            "environment with prefix ''",
        ),
        (
            {"WRKTALK_AGENT_DEPLOYER": "script"},
            "error: two plugins provide a deployer named 'script': 'script' and "
            "'clash_plugin'; uninstall one of them",
        ),
    ],
)
def test_selecting_a_broken_plugin_is_one_line_naming_plugin_and_problem(cli, env, message) -> None:
    # console logs: the error is the plain line (JSON logs carry it as a JSON line)
    console = {"WRKTALK_AGENT_LOG_FORMAT": "console"}
    result = cli("run", "--once", env={"WRKTALK_AGENT_DEPLOYER": "helm", **console, **env})
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_listing_the_same_notifier_twice_is_refused(cli) -> None:
    result = cli(
        "run",
        "--once",
        env={"WRKTALK_AGENT_NOTIFIERS": "pathy,smtp,pathy", "WRKTALK_AGENT_LOG_FORMAT": "console"},
    )
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: WRKTALK_AGENT_NOTIFIERS: lists 'pathy' more than once; name each once "
        "(got 'pathy,smtp,pathy')"
    )


def test_an_empty_work_dir_is_an_error_not_the_current_directory(cli) -> None:
    result = cli("check", env={"WRKTALK_AGENT_WORK_DIR": ""})
    assert result.exit_code == 2
    assert "WRKTALK_AGENT_WORK_DIR: is empty; give a path, or unset it to use the default" in (
        result.output
    )


def test_an_empty_plugin_path_setting_is_an_error(plugin_dir, tmp_path, monkeypatch) -> None:
    import pathy_plugin

    registry = registry_with(pathy_plugin)
    monkeypatch.setenv("WRKTALK_AGENT_PATHY_SPOOL", "")
    with pytest.raises(SettingsError) as caught:
        registry.instantiate("notifier", "pathy", plugin_context(tmp_path))
    assert caught.value.lines == [
        "WRKTALK_AGENT_PATHY_SPOOL: is empty; give a path, or unset it to use the default"
    ]


def test_settings_overrides_win_over_the_environment(plugin_dir, tmp_path, monkeypatch) -> None:
    import pathy_plugin

    monkeypatch.setenv("WRKTALK_AGENT_PATHY_SPOOL", "/from/env")
    monkeypatch.setenv("WRKTALK_AGENT_PATHY_RETRIES", "9")
    registry = registry_with(pathy_plugin, settings={"pathy": {"spool": tmp_path}})
    notifier = registry.instantiate("notifier", "pathy", plugin_context(tmp_path))
    assert notifier.settings.spool == tmp_path
    assert notifier.settings.retries == 9  # not overridden: the environment still counts
    again = registry.instantiate(
        "notifier", "pathy", plugin_context(tmp_path), overrides={"retries": 1}
    )
    assert (again.settings.spool, again.settings.retries) == (tmp_path, 1)
    with pytest.raises(SettingsError) as caught:
        registry.instantiate(
            "notifier", "pathy", plugin_context(tmp_path), overrides={"retries": "many"}
        )
    assert caught.value.lines[0].startswith("WRKTALK_AGENT_PATHY_RETRIES: ")


def test_registering_a_broken_plugin_directly_raises_plugin_error(plugin_dir) -> None:
    import halfdeployer_plugin

    with pytest.raises(PluginError, match=r"lacks method\(s\): rollback"):
        registry_with(halfdeployer_plugin)


async def test_a_minimal_backend_is_only_its_real_methods(tmp_path) -> None:
    class Minimal(BaseDeployer):
        name = "minimal"

        async def deploy(self, request):
            return DeployOutcome(output="ok")

        async def rollback(self, request):
            return DeployOutcome(output="back")

    class Plugin:
        from wrktalk_agent.hookspecs import hookimpl

        @hookimpl
        def wrktalk_register_deployers(self, register):
            register(Minimal)

    registry = registry_with(Plugin())
    deployer = registry.instantiate("deployer", "minimal", plugin_context(tmp_path))
    assert deployer.settings is None and deployer.context.work_dir == tmp_path
    assert list(await deployer.check()) == []
    assert Minimal.chart_types == ()  # accepts any release type
    with pytest.raises(TypeError):  # a base class without the real methods is abstract
        BaseNotifier(None, plugin_context(tmp_path))  # type: ignore[abstract]
