"""The scriptable CLI of issue 16: output formats, id prefixes, --wait, start-up errors,
settings from files and libpq variables, misspelled variables, check verdicts."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from click.testing import CliRunner

from wrktalk_agent.cli import main
from wrktalk_agent.testing import make_tarball


@pytest.fixture
def cli(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for key in list(os.environ):
        if key.startswith(("WRKTALK_AGENT_", "PG")):
            monkeypatch.delenv(key)
    base = {
        "WRKTALK_AGENT_DATABASE_URL": database_url,
        "WRKTALK_AGENT_WORK_DIR": str(tmp_path / "work"),
        "WRKTALK_AGENT_LOG_FORMAT": "json",
    }

    def run(*args: str, env: dict[str, str | None] | None = None):
        return CliRunner().invoke(
            main, list(args), env={**base, **(env or {})}, catch_exceptions=False
        )

    return run


@pytest.fixture
def release(cli, tmp_path: Path) -> str:
    path = tmp_path / "release.tgz"
    path.write_bytes(make_tarball({"docker-compose.yml": "services: {}\n"}))
    added = cli("release", "add", str(path), "--version", "1.0.0", "--chart-type", "compose")
    assert added.exit_code == 0, added.output
    return "1.0.0"


def _execute(database_url: str, sql: str, *args) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(sql, *args)
        finally:
            await conn.close()

    asyncio.run(go())


def test_task_list_table_wide_json_and_prefixes(cli, release) -> None:
    created = cli("task", "deploy", release, "--after", "2099-01-01T00:00:00+00:00")
    task_id = created.output.split()[2]
    table = cli("task", "list").output.splitlines()
    assert table[0].split() == ["ID", "TYPE", "VERSION", "STATUS", "CREATED", "ERROR"]
    assert table[1].split()[:4] == [task_id[:8], "deploy", "1.0.0", "pending"]
    wide = cli("task", "list", "-o", "wide").output.splitlines()
    assert wide[0].split()[:4] == ["ID", "TYPE", "VERSION", "STATUS"]
    assert "AGENT" in wide[0] and wide[1].startswith(task_id)
    for args in (["-o", "json"], ["--json"]):
        [row] = json.loads(cli("task", "list", *args).output)
        assert row["id"] == task_id
    shown = cli("task", "show", task_id[:6], "-o", "json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["task"]["id"] == task_id
    assert task_id in cli("task", "show", task_id[:8]).output
    assert json.loads(cli("task", "show", task_id, "--json").output)["events"] == []


def test_ambiguous_unknown_and_invalid_prefixes(cli, release, database_url) -> None:
    _execute(
        database_url,
        "INSERT INTO agent_task (id, type, release_artifact_id) SELECT x::uuid, 'deploy', "
        "(SELECT id FROM release_artifact LIMIT 1) FROM unnest($1::text[]) AS x",
        ["abcd0000-0000-4000-8000-000000000001", "abcd0000-0000-4000-8000-000000000002"],
    )
    ambiguous = cli("task", "show", "abcd")
    assert ambiguous.exit_code == 2
    assert "task id prefix abcd is ambiguous: abcd0000-0000-4000-8000-000000000001, " in (
        ambiguous.output
    )
    assert cli("task", "show", "abcd0000-0000-4000-8000-0000000000").exit_code == 2
    assert cli("task", "show", "abcd0000-0000-4000-8000-000000000002").exit_code == 0
    missing = cli("task", "cancel", "ffff")
    assert missing.exit_code == 2 and "error: no task ffff" in missing.output
    bad = cli("task", "show", "xyz;drop")
    assert bad.exit_code == 2 and "is not a task id" in bad.output


def test_release_list_and_plugins_tables(cli, release) -> None:
    rows = cli("release", "list").output.splitlines()
    assert rows[0].split() == ["VERSION", "TYPE", "SIZE", "SHA256", "STATE"]
    assert rows[1].split()[:2] == ["1.0.0", "compose"]
    assert "SIGNED" in cli("release", "list", "-o", "wide").output
    assert json.loads(cli("release", "list", "-o", "json").output)[0]["release_version"] == "1.0.0"
    plugins = cli("plugins").output.splitlines()
    assert plugins[0].split() == ["NAME", "DISTRIBUTION", "VERSION", "BACKENDS", "STATUS"]
    assert "HOOKS" in cli("plugins", "-o", "wide").output
    assert {p["name"] for p in json.loads(cli("plugins", "-o", "json").output)} >= {"helm", "smtp"}


def test_table_cells_are_data_not_markup(cli, release, database_url) -> None:
    _execute(
        database_url,
        "INSERT INTO agent_task (type, release_artifact_id, status, error_message) "
        "SELECT 'deploy', id, 'failed', $1 FROM release_artifact",
        "[bold red]boom[/] \x1b[2J",
    )
    out = cli("task", "list").output
    assert "[bold red]boom[/]" in out and "\\x1b[2J" in out and "\x1b" not in out


def test_cancel_is_shown_as_cancelled_with_a_result(cli, release, database_url) -> None:
    task_id = cli("task", "deploy", release, "--after", "2099-01-01T00:00:00Z").output.split()[2]
    cancelled = cli("task", "cancel", task_id[:8], "--by", "alice")
    assert cancelled.exit_code == 0 and task_id in cancelled.output
    [row] = json.loads(cli("task", "list", "-o", "json").output)
    # one vocabulary: cancelled in JSON and tables, filters, `task show`; the column says
    # failed (the backend's status set has no "cancelled")
    assert (row["status"], row["stored_status"]) == ("cancelled", "failed")
    assert row["error_message"].startswith("cancelled by alice")
    assert row["result"] == {"cancelled": True, "by": "alice"}
    assert cli("task", "list").output.splitlines()[1].split()[3] == "cancelled"
    [only] = json.loads(cli("task", "list", "--status", "cancelled", "-o", "json").output)
    assert only["id"] == task_id
    assert json.loads(cli("task", "list", "--status", "failed", "-o", "json").output) == []
    shown = json.loads(cli("task", "show", task_id[:8], "-o", "json").output)
    assert shown["task"]["status"] == "cancelled"
    again = cli("task", "cancel", task_id)
    assert again.exit_code == 2 and "is cancelled; only pending tasks" in again.output


def test_duplicate_rollback_and_past_after_are_refused(cli, release, database_url) -> None:
    _execute(database_url, "UPDATE release_artifact SET is_previous = true")
    first = cli("task", "rollback", "--after", "2099-01-01T00:00:00Z")
    assert first.exit_code == 0, first.output
    second = cli("task", "rollback")
    assert second.exit_code == 2
    assert "is already pending; wait for it or cancel it" in second.output
    past = cli("task", "deploy", release, "--after", "2020-01-01T00:00:00+00:00")
    assert past.exit_code == 2
    assert "is in the past; leave --after out to run the task now" in past.output


def test_wait_follows_a_task_to_its_end(cli, database_url, tmp_path: Path) -> None:
    script = '#!/bin/sh\necho deploying; sleep 0.3\n[ "$WRKTALK_RELEASE_VERSION" = 2.0.0 ]\n'
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        path = tmp_path / f"{version}.tgz"
        path.write_bytes(make_tarball({"deploy": script}))
        assert (
            cli(
                "release", "add", str(path), "--version", version, "--chart-type", "compose"
            ).exit_code
            == 0
        )
    env = {
        "WRKTALK_AGENT_DEPLOYER": "script",
        "WRKTALK_AGENT_SCRIPT_WORKING_DIR": str(tmp_path / "site"),
        "WRKTALK_AGENT_NOTIFIERS": "",
        "WRKTALK_AGENT_POLL_INTERVAL": "0.2",
        "WRKTALK_AGENT_HEARTBEAT_INTERVAL": "0.5",
        "WRKTALK_AGENT_AUTO_ROLLBACK": "false",
    }
    agent_env = {k: v for k, v in os.environ.items() if not k.startswith("WRKTALK_AGENT_")}
    agent_env.update(
        WRKTALK_AGENT_DATABASE_URL=database_url,
        WRKTALK_AGENT_WORK_DIR=str(tmp_path / "work"),
        WRKTALK_AGENT_LOG_FORMAT="json",
        **env,
    )
    agent_log = tmp_path / "agent.log"
    agent = subprocess.Popen(
        [sys.executable, "-m", "wrktalk_agent.cli", "run"],
        env=agent_env,
        stdout=agent_log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        ok = cli("task", "deploy", "2.0.0", "--wait", "--timeout", "120")
        assert ok.exit_code == 0, f"{ok.output}\nagent: {agent_log.read_text()[-3000:]}"
        assert "deploy" in ok.output and ok.output.rstrip().endswith("completed")
        failed = cli("task", "deploy", "3.0.0", "--wait", "--timeout", "120")
        assert failed.exit_code == 1, failed.output
        assert "error: task " in failed.output and " failed: " in failed.output
        # -o json: the task once it ended, with its timeline; nothing else on stdout
        as_json = cli("task", "deploy", "2.0.0", "--wait", "--timeout", "120", "-o", "json")
        assert as_json.exit_code == 0, as_json.output
        data = json.loads(as_json.output)
        assert data["task"]["type"] == "deploy" and data["task"]["status"] == "completed"
        assert data["events"][0]["step"] == "claimed"
    finally:
        agent.terminate()
        agent.wait(30)
    waiting = cli("task", "deploy", "1.0.0", "--wait", "--timeout", "0.5")
    assert waiting.exit_code == 1
    assert "waiting for an agent to claim it" in waiting.output
    assert "is still pending after 0.5s; it goes on" in waiting.output
    assert cli("task", "deploy", "9.9.9", "--wait").exit_code == 2
    queued = json.loads(cli("task", "deploy", "1.0.0", "-o", "json").output)
    assert queued["task"]["status"] == "pending" and queued["task"]["release_version"] is None


def test_rejected_role_is_one_line_from_every_command(cli, database_url) -> None:
    from wrktalk_agent.config import AgentSettings

    url = re.sub(r"//[^@/]*@", "//no_such_role_x@", database_url, count=1)
    label = AgentSettings(database_url=url).server_label()
    for args in (["run", "--once"], ["db", "check"], ["task", "list"]):
        result = cli(
            *args, env={"WRKTALK_AGENT_DATABASE_URL": url, "WRKTALK_AGENT_DEPLOYER": "script"}
        )
        assert result.exit_code == 1, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1, result.output
        line = lines[0]
        if args[0] == "run":  # its logs are JSON here, and so is its error
            line = "error: " + json.loads(line)["error"]
        assert line.startswith(f"error: PostgreSQL at {label} refused the connection: ")
        assert "no_such_role_x" in line


def test_http_port_in_use_is_one_line(cli) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli(
            "run",
            env={
                "WRKTALK_AGENT_DEPLOYER": "script",
                "WRKTALK_AGENT_NOTIFIERS": "",
                "WRKTALK_AGENT_HTTP_PORT": str(port),
                "WRKTALK_AGENT_HTTP_HOST": "127.0.0.1",
            },
        )
    assert result.exit_code == 2
    # every line is one JSON log record, the error the last one
    records = [json.loads(line) for line in result.output.splitlines()]
    errors = [r["error"] for r in records if r["event"] == "agent.start_failed"]
    assert errors == [
        f"cannot serve HTTP on 127.0.0.1:{port}: Address already in use "
        "(WRKTALK_AGENT_HTTP_PORT / WRKTALK_AGENT_HTTP_HOST)"
    ]
    assert "Traceback" not in result.output


def test_misspelled_variables_are_named_with_a_suggestion(cli) -> None:
    result = cli(
        "check",
        env={
            "WRKTALK_AGENT_DEPLOYER": "script",
            "WRKTALK_AGENT_NOTIFIERS": "",
            "WRKTALK_AGENT_POL_INTERVAL": "3",
            "WRKTALK_AGENT_SMTP_HOTS": "mail",
            "WRKTALK_AGENT_ZZZZZZZZ": "1",
        },
    )
    assert result.exit_code == 0, result.output
    assert (
        "warning: WRKTALK_AGENT_POL_INTERVAL is not a setting of the agent or an installed "
        "plugin; did you mean WRKTALK_AGENT_POLL_INTERVAL?" in result.output
    )
    assert "did you mean WRKTALK_AGENT_SMTP_HOST?" in result.output  # a plugin's setting
    assert (
        "WRKTALK_AGENT_ZZZZZZZZ is not a setting of the agent or an installed plugin (ignored)"
        in (result.output)
    )


def test_secret_files(cli, database_url, tmp_path: Path) -> None:
    url_file = tmp_path / "url"
    url_file.write_text(database_url + "\n")
    result = cli(
        "db",
        "check",
        env={"WRKTALK_AGENT_DATABASE_URL": None, "WRKTALK_AGENT_DATABASE_URL_FILE": str(url_file)},
    )
    assert result.exit_code == 0, result.output
    missing = cli("db", "check", env={"WRKTALK_AGENT_DATABASE_URL_FILE": str(tmp_path / "nope")})
    assert missing.exit_code == 2
    assert missing.output.strip().splitlines() == [
        "error: WRKTALK_AGENT_DATABASE_URL and WRKTALK_AGENT_DATABASE_URL_FILE are both set; "
        "keep one"
    ]
    unreadable = cli(
        "db",
        "check",
        env={
            "WRKTALK_AGENT_DATABASE_URL": None,
            "WRKTALK_AGENT_DB_PASSWORD_FILE": str(tmp_path / "nope"),
        },
    )
    assert unreadable.exit_code == 2
    assert unreadable.output.strip() == (
        f"error: WRKTALK_AGENT_DB_PASSWORD_FILE: cannot read {tmp_path / 'nope'}: "
        "No such file or directory"
    )
    smtp = tmp_path / "smtp"
    smtp.write_text("s3cret-smtp\n")
    from wrktalk_agent.bootstrap import make_registry
    from wrktalk_agent.config import AgentSettings

    os.environ["WRKTALK_AGENT_SMTP_PASSWORD_FILE"] = str(smtp)
    try:
        registry = make_registry(AgentSettings(database_url=database_url))
    finally:
        del os.environ["WRKTALK_AGENT_SMTP_PASSWORD_FILE"]
    assert registry.settings_overrides["smtp"] == {"password": "s3cret-smtp"}


def test_libpq_variables(cli, database_url, monkeypatch: pytest.MonkeyPatch) -> None:
    from urllib.parse import parse_qsl, urlsplit

    from wrktalk_agent.config import AgentSettings

    parts = urlsplit(database_url)
    query = dict(parse_qsl(parts.query))
    host = parts.hostname or query["host"]
    port = int(parts.port or query.get("port", 5432))
    libpq = {
        "PGHOST": host,
        "PGPORT": str(port),
        "PGDATABASE": parts.path.lstrip("/"),
        "PGUSER": parts.username or "",
    }
    result = cli("db", "check", env={"WRKTALK_AGENT_DATABASE_URL": None, **libpq})
    assert result.exit_code == 0, result.output
    for key, value in {**libpq, "PGPASSWORD": "pw", "PGSSLMODE": "require"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("WRKTALK_AGENT_DB_USER", "explicit")
    settings = AgentSettings()
    assert settings.db_user == "explicit"  # WRKTALK_AGENT_DB_* wins
    assert settings.db_host == host and settings.db_port == [port]
    assert settings.db_password.get_secret_value() == "pw" and settings.db_ssl_mode == "require"


def test_a_failing_notifier_only_warns(cli) -> None:
    env = {
        "WRKTALK_AGENT_DEPLOYER": "script",
        "WRKTALK_AGENT_NOTIFIERS": "smtp",
        "WRKTALK_AGENT_SMTP_HOST": "127.0.0.1",
        "WRKTALK_AGENT_SMTP_PORT": "1",
        "WRKTALK_AGENT_SMTP_TLS": "none",
        "WRKTALK_AGENT_SMTP_TIMEOUT": "2",
    }
    result = cli("check", env=env)
    assert result.exit_code == 0, result.output
    assert any(line.startswith("WARN  notifier smtp") for line in result.output.splitlines())
    assert "notifications are delayed (kept in the outbox), deploys work" in result.output
    assert cli("check", "--strict", env=env).exit_code == 1
    rows = json.loads(cli("check", "-o", "json", env=env).output)
    smtp = [r for r in rows if r["name"].startswith("notifier smtp")]
    assert smtp and all(r["status"] == "warn" and not r["blocking"] for r in smtp if not r["ok"])


def test_a_pooler_the_agent_was_not_told_about_is_named_with_its_setting(database_url) -> None:
    """What a transaction pooler does to asyncpg's named statements (a name prepared twice
    in one server session), from a real server: the error names the setting."""
    import asyncpg

    from wrktalk_agent.cli import Failure, run_async

    async def collide() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute("PREPARE wrktalk_twice AS SELECT 1")
            await conn.execute("PREPARE wrktalk_twice AS SELECT 1")
        finally:
            await conn.close()

    with pytest.raises(Failure) as caught:
        run_async(collide())
    assert ": prepared statements collide: a transaction pooler (PgBouncer)" in caught.value.message
    assert "set WRKTALK_AGENT_DB_POOLER=pgbouncer" in caught.value.message


def _in_a_terminal(args: list[str], env: dict[str, str]) -> str:
    """Run a command with its stdout and stderr on a real pseudo-terminal; what it wrote."""
    import pty

    main_fd, child_fd = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wrktalk_agent.cli", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=child_fd,
            stderr=child_fd,
        )
        os.close(child_fd)
        chunks = []
        while True:
            try:
                chunk = os.read(main_fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        proc.wait(60)
    finally:
        os.close(main_fd)
    return b"".join(chunks).decode(errors="replace")


def test_no_color_is_honoured_by_the_console_log_lines_too(database_url, tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRKTALK_AGENT_")}
    env.pop("NO_COLOR", None)
    env.update(
        WRKTALK_AGENT_DATABASE_URL=database_url,
        WRKTALK_AGENT_WORK_DIR=str(tmp_path / "work"),
        WRKTALK_AGENT_DEPLOYER="script",
        WRKTALK_AGENT_NOTIFIERS="",
        TERM="xterm-256color",
    )
    coloured = _in_a_terminal(["run", "--once"], env)
    assert "agent.stopped" in coloured and "\x1b[" in coloured  # a terminal gets colours
    plain = _in_a_terminal(["run", "--once"], {**env, "NO_COLOR": "1"})
    assert "agent.stopped" in plain and "\x1b[" not in plain, plain
    listed = _in_a_terminal(["plugins"], {**env, "NO_COLOR": "1"})
    assert "helm" in listed and not re.search(r"\x1b\[[0-9;]*3[0-9]", listed), listed
