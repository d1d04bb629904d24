"""The command line: happy paths and every bad input named in issue 2, as an operator sees them."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from wrktalk_agent.cli import main
from wrktalk_agent.testing import make_tarball


@pytest.fixture
def cli(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run `wrktalk-agent ARGS` against the test database; returns the click Result."""
    for key in list(__import__("os").environ):
        if key.startswith("WRKTALK_AGENT_"):
            monkeypatch.delenv(key)
    base = {
        "WRKTALK_AGENT_DATABASE_URL": database_url,
        "WRKTALK_AGENT_WORK_DIR": str(tmp_path / "work"),
        "WRKTALK_AGENT_LOG_FORMAT": "json",
    }

    def run(*args: str, env: dict[str, str] | None = None):
        runner = CliRunner()
        return runner.invoke(main, list(args), env={**base, **(env or {})}, catch_exceptions=False)

    return run


@pytest.fixture
def tarball(tmp_path: Path) -> Path:
    path = tmp_path / "release.tgz"
    path.write_bytes(make_tarball({"docker-compose.yml": "services: {}\n"}))
    return path


def test_plugins_json_lists_the_five_plugins(cli) -> None:
    result = cli("plugins", "--json")
    assert result.exit_code == 0
    plugins = {p["name"]: p for p in json.loads(result.output)}
    for name, hook in [
        ("helm", "wrktalk_register_deployers"),
        ("compose", "wrktalk_register_deployers"),
        ("nginx", "wrktalk_register_maintenance_handlers"),
        ("haproxy", "wrktalk_register_maintenance_handlers"),
        ("smtp", "wrktalk_register_notifiers"),
    ]:
        assert plugins[name]["error"] is None
        assert plugins[name]["distribution"] == f"wrktalk-agent-{name}"
        assert plugins[name]["version"]
        assert plugins[name]["hooks"] == [hook]


def test_plugin_failing_to_import_is_a_warning_when_listing(cli) -> None:
    result = cli("plugins", env={"WRKTALK_AGENT_EXTRA_PLUGINS": "no_such_plugin_module"})
    assert result.exit_code == 0
    assert "no_such_plugin_module" in result.output
    assert "warning: no_such_plugin_module: failed to import: ModuleNotFoundError" in result.output


def test_release_task_lifecycle(cli, tarball: Path, tmp_path: Path) -> None:
    env_file = tmp_path / "prod.env"
    env_file.write_text("DB_PASSWORD=s3cret\n")
    added = cli(
        "release",
        "add",
        str(tarball),
        "--version",
        "1.0.0",
        "--chart-type",
        "compose",
        "--env-file",
        str(env_file),
    )
    assert added.exit_code == 0, added.output
    assert "stored release 1.0.0" in added.output
    assert "s3cret" not in added.output
    listed = cli("release", "list", "--json")
    [release] = json.loads(listed.output)
    assert release["release_version"] == "1.0.0" and release["has_env"] is True
    assert "s3cret" not in listed.output

    created = cli("task", "deploy", "1.0.0", "--after", "2099-01-01T00:00:00+00:00")
    assert created.exit_code == 0 and "pending" in created.output
    task_id = created.output.split()[2]
    tasks = json.loads(cli("task", "list", "--json").output)
    assert [(t["id"], t["status"], t["release_version"]) for t in tasks] == [
        (task_id, "pending", "1.0.0")
    ]
    assert cli("task", "cancel", task_id).exit_code == 0
    again = cli("task", "cancel", task_id)
    assert again.exit_code == 2
    assert "only pending tasks can be cancelled" in again.output
    shown = cli("task", "show", task_id)
    assert "cancelled" in shown.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--version", "1.0.0;rm", "--chart-type", "compose"], "invalid release version"),
        (["--version", "-x", "--chart-type", "compose"], "invalid release version"),
        (["--version", "a" * 65, "--chart-type", "compose"], "invalid release version"),
        (["--version", "1.0.0", "--chart-type", "no;mad"], "not a release type name"),
    ],
)
def test_release_add_bad_arguments(cli, tarball: Path, args, message) -> None:
    result = cli("release", "add", str(tarball), *args)
    assert result.exit_code == 2
    assert message in result.output


def test_release_add_missing_non_tar_and_duplicate(cli, tarball: Path, tmp_path: Path) -> None:
    missing = cli(
        "release", "add", str(tmp_path / "nope.tgz"), "--version", "1", "--chart-type", "helm"
    )
    assert missing.exit_code == 2 and "does not exist" in missing.output
    text = tmp_path / "notes.txt"
    text.write_text("not an archive\n" * 100)
    not_tar = cli("release", "add", str(text), "--version", "1", "--chart-type", "helm")
    assert not_tar.exit_code == 2
    assert "is not a tar archive" in not_tar.output
    assert (
        cli("release", "add", str(tarball), "--version", "1", "--chart-type", "helm").exit_code == 0
    )
    duplicate = cli("release", "add", str(tarball), "--version", "1", "--chart-type", "helm")
    assert duplicate.exit_code == 2
    assert "error: release 1 already exists" in duplicate.output


def test_task_errors(cli) -> None:
    unknown = cli("task", "deploy", "9.9.9")
    assert unknown.exit_code == 2 and "no release 9.9.9" in unknown.output
    no_previous = cli("task", "rollback")
    assert (
        no_previous.exit_code == 2 and "no previous release to roll back to" in no_previous.output
    )
    bad_time = cli("task", "deploy", "1.0.0", "--after", "tomorrow")
    assert bad_time.exit_code == 2 and "is not an ISO time" in bad_time.output


def test_invalid_settings_one_line_each_exit_2(cli) -> None:
    result = cli(
        "task",
        "list",
        env={
            "WRKTALK_AGENT_POLL_INTERVAL": "soon",
            "WRKTALK_AGENT_DB_SSL_MODE": "maybe",
            "WRKTALK_AGENT_DB_PASSWORD": "hunter2",
        },
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 2
    assert any(line.startswith("error: WRKTALK_AGENT_POLL_INTERVAL: ") for line in lines)
    assert any(line.startswith("error: WRKTALK_AGENT_DB_SSL_MODE: ") for line in lines)
    assert "Traceback" not in result.output and "hunter2" not in result.output


def test_unreachable_database_is_one_line(cli) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = cli(
        "db",
        "check",
        env={"WRKTALK_AGENT_DATABASE_URL": f"postgresql://agent:pw@127.0.0.1:{port}/x"},
    )
    assert result.exit_code == 1
    assert result.output.startswith(f"error: cannot reach PostgreSQL at 127.0.0.1:{port}: ")
    assert len(result.output.strip().splitlines()) == 1
    assert "pw" not in result.output.replace("PostgreSQL", "")


def test_db_check_and_run_refuse_an_incomplete_schema(cli, database_url: str) -> None:
    import asyncio

    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(database_url)
        await conn.execute("DROP TABLE agent_task_event")
        await conn.close()

    asyncio.run(drop())
    check = cli("db", "check")
    assert check.exit_code == 1
    assert "table agent_task_event is missing" in check.output
    run = cli("run", "--once", env={"WRKTALK_AGENT_DEPLOYER": "script"})
    assert run.exit_code == 1
    assert "the database schema is incomplete (run `wrktalk-agent db init`)" in run.output
    assert "table agent_task_event is missing" in run.output
    assert cli("db", "init").exit_code == 0
    assert "schema already up to date" in cli("db", "init").output
    assert cli("db", "check").exit_code == 0


def test_unknown_plugin_names_the_installed_ones(cli) -> None:
    result = cli("run", "--once", env={"WRKTALK_AGENT_DEPLOYER": "helmm"})
    assert result.exit_code == 2
    assert (
        "no installed plugin provides a deployer named 'helmm'; installed deployers: "
        "compose, helm, script" in result.output
    )


def test_selected_plugin_failing_to_import_is_an_error(cli) -> None:
    result = cli(
        "run",
        "--once",
        env={"WRKTALK_AGENT_DEPLOYER": "broken_mod", "WRKTALK_AGENT_EXTRA_PLUGINS": "broken_mod"},
    )
    assert result.exit_code == 2
    assert "the deployer 'broken_mod' comes from plugin 'broken_mod'" in result.output
    assert "failed to import: ModuleNotFoundError" in result.output


def test_bad_plugin_setting_is_one_readable_line(cli) -> None:
    result = cli(
        "run",
        "--once",
        env={"WRKTALK_AGENT_DEPLOYER": "helm", "WRKTALK_AGENT_HELM_TIMEOUT": "ten minutes"},
    )
    assert result.exit_code == 2
    # `run` logs JSON here (WRKTALK_AGENT_LOG_FORMAT=json): its error is one JSON line too
    [line] = result.output.splitlines()
    record = json.loads(line)
    assert (record["event"], record["level"], record["exit_code"]) == (
        "agent.start_failed",
        "error",
        2,
    )
    assert record["error"].startswith("WRKTALK_AGENT_HELM_TIMEOUT: ")
    console = cli(
        "run",
        "--once",
        env={
            "WRKTALK_AGENT_DEPLOYER": "helm",
            "WRKTALK_AGENT_HELM_TIMEOUT": "ten minutes",
            "WRKTALK_AGENT_LOG_FORMAT": "console",
        },
    )
    assert console.output.startswith("error: WRKTALK_AGENT_HELM_TIMEOUT: ")


def test_run_once_with_script_deployer_end_to_end(cli, tmp_path: Path) -> None:
    release = tmp_path / "r.tgz"
    release.write_bytes(
        make_tarball(
            {
                "deploy": "#!/bin/sh\n"
                'echo "$1 $WRKTALK_RELEASE_VERSION" > "$WRKTALK_RELEASE_DIR/ran"\n'
            }
        )
    )
    env = {
        "WRKTALK_AGENT_DEPLOYER": "script",
        "WRKTALK_AGENT_SCRIPT_WORKING_DIR": str(tmp_path / "site"),
        "WRKTALK_AGENT_NOTIFIERS": "",
    }
    assert (
        cli(
            "release", "add", str(release), "--version", "2.0.0", "--chart-type", "compose"
        ).exit_code
        == 0
    )
    assert cli("task", "deploy", "2.0.0").exit_code == 0
    result = cli("run", "--once", env=env)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "site" / "current" / "ran").read_text() == "deploy 2.0.0\n"
    [task] = json.loads(cli("task", "list", "--json").output)
    assert task["status"] == "completed"
    assert cli("run", "--once", env=env).exit_code == 0  # nothing due: exit 0


def test_maintenance_command_with_nginx_flag(cli, tmp_path: Path) -> None:
    flag = tmp_path / "flags" / "maintenance"
    env = {
        "WRKTALK_AGENT_MAINTENANCE_MODE_HANDLER": "nginx",
        "WRKTALK_AGENT_NGINX_FLAG_FILE": str(flag),
    }
    on = cli("maintenance", "on", "--reason", "db migration", "--by", "alice", env=env)
    assert on.exit_code == 0, on.output
    assert "maintenance mode is ON — held by: operator alice (db migration), since " in on.output
    assert on.output.rstrip().endswith("(nginx: ON)")
    assert flag.exists() and "db migration" in flag.read_text()
    assert "held by: operator alice" in cli("maintenance", "status", env=env).output
    # with no handler configured, status still tells what the database records
    assert "held by: operator alice" in cli("maintenance", "status").output
    off = cli("maintenance", "off", "--by", "alice", env=env)
    assert off.output == "maintenance mode is off (nginx: off)\n" and not flag.exists()
    none = cli("maintenance", "on")
    assert none.exit_code == 2 and "is 'none'" in none.output


def test_a_second_operators_window_is_a_hold_of_its_own(cli, tmp_path: Path) -> None:
    """bob's `on` while alice's window is open takes nothing over: bob's `off` leaves
    alice's window on, alice's ends it; `off --force` ends everyone's and says whose."""
    flag = tmp_path / "flags" / "maintenance"
    env = {
        "WRKTALK_AGENT_MAINTENANCE_MODE_HANDLER": "nginx",
        "WRKTALK_AGENT_NGINX_FLAG_FILE": str(flag),
    }
    alice = cli("maintenance", "on", "--reason", "db migration", "--by", "alice", env=env)
    assert alice.exit_code == 0, alice.output
    bob = cli("maintenance", "on", "--reason", "disk swap", "--by", "bob", env=env)
    assert "held by: operator alice (db migration), operator bob (disk swap)" in bob.output
    status = json.loads(cli("maintenance", "status", "-o", "json", env=env).output)
    assert status["enabled"] is True and status["proxy"] == {"handler": "nginx", "on": True}
    assert [(h["holder"], h["reason"]) for h in status["holds"]] == [
        ("operator:alice", "db migration"),
        ("operator:bob", "disk swap"),
    ]
    bob_off = cli("maintenance", "off", "--by", "bob", env=env)
    assert bob_off.exit_code == 0, bob_off.output
    assert "maintenance mode is ON — held by: operator alice (db migration)" in bob_off.output
    assert flag.exists()
    carol = cli("maintenance", "off", "--by", "carol", env=env)
    assert carol.exit_code == 1
    assert carol.output == (
        "error: nginx: carol holds no maintenance window; held by operator alice "
        "(db migration) (--force switches it off for everyone)\n"
    )
    assert cli("maintenance", "on", "--by", "bob", env=env).exit_code == 0
    forced = cli("maintenance", "off", "--force", "--by", "carol", "-o", "json", env=env)
    data = json.loads(forced.output)
    assert data["enabled"] is False and data["holds"] == [] and not flag.exists()
    assert sorted(data["action"]["released"]) == ["operator:alice", "operator:bob"]


def test_check_json_reports_each_line_and_fails_on_any(cli, tmp_path: Path) -> None:
    env = {"WRKTALK_AGENT_DEPLOYER": "script", "WRKTALK_AGENT_NOTIFIERS": ""}
    ok = cli("check", "--json", env=env)
    results = {r["name"]: r for r in json.loads(ok.output)}
    assert ok.exit_code == 0, ok.output
    assert all(r["ok"] for r in results.values())
    bad = cli("check", env={**env, "WRKTALK_AGENT_TRUSTED_KEYS": "not-a-key"})
    assert bad.exit_code == 1
    assert "not-a-key" in bad.output


def test_release_add_binary_env_file_is_a_clear_error(cli, tarball: Path, tmp_path: Path) -> None:
    binary = tmp_path / "prod.env"
    binary.write_bytes(b"\xff\xfe\x00junk")
    result = cli(
        "release",
        "add",
        str(tarball),
        "--version",
        "1",
        "--chart-type",
        "helm",
        "--env-file",
        str(binary),
    )
    assert result.exit_code == 2
    assert "--env-file" in result.output and "is not UTF-8 text" in result.output
    assert "Traceback" not in result.output


def test_release_diff_names_what_a_release_changes(cli, tmp_path: Path) -> None:
    import tarfile

    def bundle(name: str, files: dict[str, str]) -> Path:
        path = tmp_path / name
        with tarfile.open(path, "w:gz") as tar:
            for member, text in files.items():
                source = tmp_path / f"{name}-{member}"
                source.write_text(text)
                tar.add(source, arcname=member)
        return path

    env = {
        "WRKTALK_AGENT_DEPLOYER": "recording",
        "WRKTALK_AGENT_EXTRA_PLUGINS": "wrktalk_test_plugin",
    }
    one = bundle("one.tgz", {"app.txt": "1", "old.txt": "x"})
    two = bundle("two.tgz", {"app.txt": "2", "new.txt": "y"})
    for path, version in ((one, "1.0.0"), (two, "2.0.0")):
        added = cli("release", "add", str(path), "--version", version, "--chart-type", "compose")
        assert added.exit_code == 0, added.output
    result = cli("release", "diff", "1.0.0", "2.0.0", env=env)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-2:] == ["added new.txt", "removed old.txt"]
    first = cli("release", "diff", "2.0.0", env=env)  # nothing current: everything is new
    assert first.output.splitlines()[-2:] == ["added app.txt", "added new.txt"]
    missing = cli("release", "diff", "9.9.9", env=env)
    assert missing.exit_code == 2 and "no release 9.9.9" in missing.output
    plain = cli("release", "diff", "2.0.0", env={"WRKTALK_AGENT_DEPLOYER": "script"})
    assert plain.exit_code == 2 and "cannot describe changes" in plain.output


def test_every_command_module_is_named_in_the_lazy_group() -> None:
    """A command module the group does not name would never be imported: its command
    would be missing from `--help` and unknown when typed."""
    import ast
    import importlib

    from wrktalk_agent.cli.common import CommandModules

    cli_dir = Path(__file__).parents[1] / "wrktalk_agent" / "cli"
    adding: dict[str, str] = {}
    for path in sorted(cli_dir.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for deco in node.decorator_list:
                    call = deco.func if isinstance(deco, ast.Call) else deco
                    if (
                        isinstance(call, ast.Attribute)
                        and isinstance(call.value, ast.Name)
                        and call.value.id == "main"
                    ):
                        adding[node.name] = path.stem
    assert adding == CommandModules.MODULES
    for module in set(adding.values()):
        importlib.import_module(f"wrktalk_agent.cli.{module}")
    assert sorted(main.commands) == sorted(CommandModules.MODULES)


def test_a_command_loads_only_its_own_module() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from wrktalk_agent.cli import main\n"
        "CliRunner().invoke(main, ['tui', '--help'], catch_exceptions=False)\n"
        "print(sorted(m for m in sys.modules if m.startswith('wrktalk_agent.cli.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['wrktalk_agent.cli.common', 'wrktalk_agent.cli.tui']"
    result = CliRunner().invoke(main, ["nosuch"])
    assert result.exit_code == 2 and "No such command" in result.output
