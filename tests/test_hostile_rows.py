"""Rows a buggy backend could write, on the project's schema and on a backend-owned one
without the CHECK constraints: the CLI renders them without crashing or passing escapes
to the terminal, the agent fails each bad row and keeps serving the good ones, and
``check`` names missing privileges."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from agent_helpers import agent_env
from click.testing import CliRunner
from pydantic import SecretStr

from wrktalk_agent.bootstrap import make_registry
from wrktalk_agent.cli import main
from wrktalk_agent.config import AgentSettings
from wrktalk_agent.db.schema import check_schema, init_schema, missing_constraints
from wrktalk_agent.preflight import run_checks
from wrktalk_agent.testing import add_release

#: Markup, ANSI escapes, a bidi override and a carriage return: what no text column may
#: pass through to a terminal or a markup parser.
NASTY = "[/]oops[/bold] \x1b[2J\x1b[31mred\x1b[0m \u202eevil\r[link=x]"
#: Characters that must never reach the output raw.
RAW_CONTROLS = ("\x1b", "\u202e", "\r", "\x9b")
TEN_MB_VALUES = "".join(f"key{i}: value-{i}\n" for i in range(700_000))


@dataclass
class Corpus:
    """The ids of what was inserted, by what makes each row hostile."""

    good_release: uuid.UUID
    hostile_release: uuid.UUID
    tasks: dict[str, uuid.UUID] = field(default_factory=dict)


#: name -> (columns of agent_task to set, needs a schema without CHECK constraints)
HOSTILE_TASKS: dict[str, tuple[dict[str, Any], bool]] = {
    "infinity": ({"execute_after": "infinity"}, False),
    "-infinity": ({"execute_after": "-infinity"}, False),
    "far past": ({"execute_after": "0001-01-01 00:00:00+00"}, False),
    "far future": ({"execute_after": "9999-12-31 23:00:00+00"}, False),
    "null artifact": ({"release_artifact_id": None}, False),
    "empty artifact": ({"release": "empty"}, False),
    "hostile release": ({"release": "hostile"}, False),
    "markup everywhere": (
        {"error_message": NASTY, "claimed_by": NASTY, "result": {"output": NASTY, NASTY: 1}},
        False,
    ),
    "unknown type": ({"type": "redeploy" + NASTY}, True),
    "unknown status": ({"status": "paused" + NASTY}, True),
}


def drop_check_constraints_sql() -> str:
    return """
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT c.relname, k.conname FROM pg_constraint k
             JOIN pg_class c ON c.oid = k.conrelid
             WHERE k.contype = 'c' AND c.relnamespace = current_schema()::regnamespace
    LOOP
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', r.relname, r.conname);
    END LOOP;
END $$;
"""


async def insert_corpus(
    repo: Any, *, backend_schema: bool, names: list[str] | None = None
) -> Corpus:
    """The hostile rows (all, or ``names``) beside a good release. ``backend_schema``:
    drop every CHECK constraint first, as a backend-owned schema may lack them."""
    if backend_schema:
        await repo.pool.execute(drop_check_constraints_sql())
    good = await add_release(repo, "1.0.0")
    hostile = await add_release(
        repo, "2.0.0", env_data="API_TOKEN=tok-hostile-123\n", values_data=TEN_MB_VALUES
    )
    await repo.pool.execute(
        "UPDATE release_artifact SET release_version = $1 WHERE id = $2",
        "2.0.0" + NASTY,
        hostile.id,
    )
    empty = await repo.pool.fetchval(
        """INSERT INTO release_artifact (release_version, chart_type, artifact_data, sha256)
           VALUES ('0.0.1-empty', 'compose', ''::bytea, repeat('0', 64)) RETURNING id"""
    )
    if backend_schema:
        await repo.pool.execute(
            """INSERT INTO release_artifact (release_version, chart_type, artifact_data, sha256)
               VALUES ($1, $2, 'x'::bytea, $1)""",
            "chart" + NASTY,
            "kustomize" + NASTY,
        )
    corpus = Corpus(good.id, hostile.id)
    releases = {"empty": empty, "hostile": hostile.id}
    for name, (columns, needs_backend) in HOSTILE_TASKS.items():
        if (names is not None and name not in names) or (needs_backend and not backend_schema):
            continue
        row: dict[str, Any] = {"type": "deploy", "release_artifact_id": good.id, **columns}
        if "release" in row:
            row["release_artifact_id"] = releases[row.pop("release")]
        if "result" in row:
            row["result"] = json.dumps(row["result"])
        keys = list(row)
        casts = {"execute_after": "::text::timestamptz", "result": "::text::jsonb"}
        values = ", ".join(f"${i + 1}{casts.get(k, '')}" for i, k in enumerate(keys))
        task_id = await repo.pool.fetchval(
            f"INSERT INTO agent_task ({', '.join(keys)}) VALUES ({values}) RETURNING id",
            *row.values(),
        )
        corpus.tasks[name] = task_id
        await repo.pool.execute(
            """INSERT INTO agent_task_event (task_id, step, status, message, agent_id)
               VALUES ($1, $2, 'info', $2, $2)""",
            task_id,
            NASTY,
        )
    await repo.pool.execute(
        """INSERT INTO agent_instance (agent_id, hostname, pid, version) VALUES ($1, $1, 1, $1)""",
        "agent" + NASTY,
    )
    return corpus


@pytest.fixture(params=["project schema", "backend schema"])
def backend_schema(request: pytest.FixtureRequest) -> bool:
    return request.param == "backend schema"


@pytest.fixture
def cli(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    for key in list(__import__("os").environ):
        if key.startswith("WRKTALK_AGENT_"):
            monkeypatch.delenv(key)
    env = {
        "WRKTALK_AGENT_DATABASE_URL": database_url,
        "WRKTALK_AGENT_WORK_DIR": str(tmp_path / "work"),
        "WRKTALK_AGENT_LOG_FORMAT": "json",
    }

    def run(*args: str):
        return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)

    return run


def assert_shown_safely(output: str) -> None:
    for raw in RAW_CONTROLS:
        assert raw not in output, f"{raw!r} reached the terminal"


async def test_the_database_refuses_nul_bytes_in_text_columns(repo) -> None:
    """NUL in env_data cannot be stored on PostgreSQL (the Redactor still copes with it,
    see test_redact.py); non-UTF-8 is refused by a UTF8 database the same way."""
    with pytest.raises(asyncpg.exceptions.CharacterNotInRepertoireError):
        await add_release(repo, "1.0.0", env_data="A=\x00b\n")


async def test_cli_renders_every_hostile_row(repo, cli, backend_schema: bool) -> None:
    corpus = await insert_corpus(repo, backend_schema=backend_schema)

    listed = await asyncio.to_thread(cli, "task", "list")
    assert listed.exit_code == 0, listed.output
    header, *rows = listed.output.splitlines()
    assert header.split()[:2] == ["ID", "TYPE"]
    assert len(rows) == len(corpus.tasks)  # one line per row, whatever its text holds
    assert_shown_safely(listed.output)
    assert "[/]oops[/bold]" in listed.output  # shown literally, not interpreted
    if backend_schema:
        assert "paused[/]oops" in listed.output and "redeploy[/]oops" in listed.output

    as_json = await asyncio.to_thread(cli, "task", "list", "--json")
    assert as_json.exit_code == 0
    assert_shown_safely(as_json.output)
    assert len(json.loads(as_json.output)) == len(corpus.tasks)

    for name, task_id in corpus.tasks.items():
        shown = await asyncio.to_thread(cli, "task", "show", str(task_id))
        assert shown.exit_code == 0, (name, shown.output)
        assert_shown_safely(shown.output)
        assert "\\x1b[2J" in shown.output  # the event's step, escaped

    releases = await asyncio.to_thread(cli, "release", "list")
    assert releases.exit_code == 0, releases.output
    assert_shown_safely(releases.output)
    assert "2.0.0[/]oops[/bold] \\x1b[2J" in releases.output
    assert "tok-hostile-123" not in releases.output


async def test_db_check_names_missing_check_constraints_and_init_adds_them(
    repo, database_url: str, cli
) -> None:
    await insert_corpus(repo, backend_schema=True)
    checked = await asyncio.to_thread(cli, "db", "check")
    assert checked.exit_code == 1
    assert "check constraint on agent_task.type" in checked.output
    conn = await asyncpg.connect(database_url)
    try:
        assert await check_schema(conn) == []  # the agent runs without them
        problems = await missing_constraints(conn)
        assert (
            "check constraint on agent_task.type (known task types: "
            "type IN ('deploy', 'rollback')) is missing"
        ) in problems
        assert any(p.startswith("check constraint on agent_task.status") for p in problems)
        # release types are the installed deployers' to declare: no constraint pins them
        assert not any("release_artifact.chart_type" in p for p in problems)
        # the bad rows already there do not stop db init (NOT VALID); new ones are refused
        assert await init_schema(conn) == problems
        assert await missing_constraints(conn) == []
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute("INSERT INTO agent_task (type) VALUES ('redeploy')")
    finally:
        await conn.close()


# -- the real agent ----------------------------------------------------------------------
#: Rows the agent must fail (each with an error naming the column and the value); the
#: others are due later or never (and stay pending) or are already finished.
MUST_FAIL = {
    "-infinity": ("execute_after", "-infinity"),
    "far past": None,  # due: it simply runs
    "null artifact": ("release_artifact_id", "NULL"),
    "empty artifact": ("artifact_data", "empty"),
    "unknown type": ("type", "redeploy"),
    "hostile release": ("release_version", "2.0.0"),
}


async def _wait_settled(repo: Any, proc: Any, good: list[uuid.UUID], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        rows = await repo.pool.fetch(
            "SELECT id, status, error_message FROM agent_task ORDER BY created_at"
        )
        done = {r["id"] for r in rows if r["status"] == "completed"}
        if set(good) <= done:
            return
        if proc.poll() is not None:
            pytest.fail(
                f"the agent died (exit {proc.returncode}): {open(proc.log_path).read()[-3000:]}"
            )
        if time.monotonic() > deadline:
            pytest.fail(
                "good tasks not completed in time: "
                + "; ".join(f"{r['status']} {r['error_message']!r}" for r in rows)
            )
        await asyncio.sleep(0.2)


async def _assert_bad_rows_failed(repo: Any, corpus: Corpus) -> None:
    for name, task_id in corpus.tasks.items():
        task = await repo.pool.fetchrow(
            "SELECT status, error_message FROM agent_task WHERE id = $1", task_id
        )
        expected = MUST_FAIL.get(name)
        if name in ("infinity", "far future"):
            assert task["status"] == "pending", (name, dict(task))  # not due: left alone
        elif expected is not None:
            column, value = expected
            assert task["status"] == "failed", (name, dict(task))
            assert column in task["error_message"] and value in task["error_message"], (
                name,
                task["error_message"],
            )


@pytest.mark.timeout(180)
@pytest.mark.parametrize("row", [name for name in HOSTILE_TASKS])
async def test_agent_fails_each_bad_row_alone_and_serves_the_good_task(
    row: str, recording_settings, recording, repo, spawn_agent
) -> None:
    corpus = await insert_corpus(repo, backend_schema=True, names=[row])
    good = await repo.create_task("deploy", corpus.good_release)
    env = agent_env(recording_settings, recording, WRKTALK_AGENT_POLL_INTERVAL="0.3")
    proc = spawn_agent(env)
    try:
        await _wait_settled(repo, proc, [good.id], timeout=60)
        await asyncio.sleep(1.0)  # a bad row claimed after the good one gets its turn too
        await _assert_bad_rows_failed(repo, corpus)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


@pytest.mark.timeout(240)
async def test_agent_serves_good_tasks_beside_all_bad_rows_at_once(
    recording_settings, recording, repo, spawn_agent
) -> None:
    corpus = await insert_corpus(repo, backend_schema=True)
    good = [(await repo.create_task("deploy", corpus.good_release)).id for _ in range(3)]
    env = agent_env(recording_settings, recording, WRKTALK_AGENT_POLL_INTERVAL="0.3")
    proc = spawn_agent(env)
    try:
        await _wait_settled(repo, proc, good, timeout=120)
        await asyncio.sleep(1.0)
        await _assert_bad_rows_failed(repo, corpus)
        assert "tok-hostile-123" not in open(proc.log_path).read()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


# -- privileges ----------------------------------------------------------------------------
async def _limited_role(database_url: str, revoke: str) -> tuple[str, str]:
    """A login role with every table privilege but ``revoke``; returns (role, its URL)."""
    role = f"wrktalk_limited_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"CREATE ROLE {role} LOGIN")
        await conn.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        await conn.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
        await conn.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role}")
        await conn.execute(revoke.format(role=role))
    finally:
        await conn.close()
    scheme, rest = database_url.split("://", 1)
    userinfo, _, hostpart = rest.rpartition("@")
    return role, f"{scheme}://{role}@{hostpart}" if userinfo else f"{scheme}://{role}@{rest}"


async def _drop_role(database_url: str, role: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f"DROP OWNED BY {role}")
        await conn.execute(f"DROP ROLE {role}")
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("revoke", "named"),
    [
        ("REVOKE INSERT ON agent_task_event FROM {role}", "INSERT on agent_task_event"),
        ("REVOKE UPDATE ON agent_task FROM {role}", "UPDATE on agent_task"),
    ],
)
async def test_check_names_a_missing_privilege(
    revoke: str, named: str, agent_settings: AgentSettings, database_url: str, repo
) -> None:
    role, url = await _limited_role(database_url, revoke)
    try:
        settings = agent_settings.model_copy(
            update={"database_url": SecretStr(url), "notifiers": [], "deployer": "script"}
        )
        results = {r.name: r for r in await run_checks(settings, make_registry(settings))}
        assert results["database"].ok, results["database"].detail
        privileges = results["privileges"]
        assert not privileges.ok
        assert named in privileges.detail
        assert f"TO {role}" in privileges.detail  # the GRANT that fixes it
    finally:
        await _drop_role(database_url, role)


async def test_check_passes_privileges_for_the_owner(agent_settings: AgentSettings, repo) -> None:
    settings = agent_settings.model_copy(update={"notifiers": [], "deployer": "script"})
    results = {r.name: r for r in await run_checks(settings, make_registry(settings))}
    assert results["privileges"].ok, results["privileges"].detail


async def test_cli_without_a_privilege_is_one_line(
    database_url: str, tmp_path: Path, repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    role, url = await _limited_role(database_url, "REVOKE SELECT ON agent_task FROM {role}")
    try:
        for key in list(__import__("os").environ):
            if key.startswith("WRKTALK_AGENT_"):
                monkeypatch.delenv(key)
        env = {"WRKTALK_AGENT_DATABASE_URL": url, "WRKTALK_AGENT_LOG_FORMAT": "json"}
        result = await asyncio.to_thread(
            CliRunner().invoke, main, ["task", "list"], env=env, catch_exceptions=False
        )
        assert result.exit_code == 1
        assert result.output.strip().splitlines() == [
            "error: permission denied for table agent_task; "
            "`wrktalk-agent check` names every missing privilege"
        ]
    finally:
        await _drop_role(database_url, role)


async def test_without_insert_on_the_timeline_tasks_still_end_and_the_queue_flows(
    database_url, recording_settings, recording, repo, spawn_agent
) -> None:
    """A role that may not write the timeline: each task still ends, completed (its outcome
    and flags written without the timeline entries), the refusal is one log line, nothing
    stays claimed."""
    role, url = await _limited_role(database_url, "REVOKE INSERT ON agent_task_event FROM {role}")
    try:
        first = await repo.create_task("deploy", (await add_release(repo, "1.0.0")).id)
        second = await repo.create_task("deploy", (await add_release(repo, "1.1.0")).id)
        env = agent_env(recording_settings, recording, WRKTALK_AGENT_DATABASE_URL=url)
        proc = spawn_agent(env)
        try:
            deadline = time.monotonic() + 60
            while True:
                rows = await repo.pool.fetch(
                    "SELECT status, error_message FROM agent_task WHERE id = ANY($1::uuid[])",
                    [first.id, second.id],
                )
                if all(r["status"] in ("completed", "failed") for r in rows):
                    break
                assert time.monotonic() < deadline, [dict(r) for r in rows]
                await asyncio.sleep(0.2)
            assert [r["status"] for r in rows] == ["completed", "completed"]
            assert (await repo.current_release()).release_version == "1.1.0"
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        log = open(proc.log_path).read()
        assert "Traceback" not in log
        assert "outcome.refused" in log
        assert "permission denied for table agent_task_event" in log
    finally:
        await _drop_role(database_url, role)


async def test_check_of_a_role_with_no_grants_names_every_grant_and_no_missing_table(
    agent_settings: AgentSettings, database_url: str, repo
) -> None:
    """A new role (`CREATE ROLE … LOGIN`, nothing granted): the tables are there (not
    "missing, run db init"), and the GRANTs printed are complete — running them, and
    nothing else, makes the check pass."""
    role, url = await _limited_role(
        database_url,
        "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role};"
        " REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {role};"
        " REVOKE USAGE ON SCHEMA public FROM {role}",
    )
    try:
        settings = agent_settings.model_copy(
            update={"database_url": SecretStr(url), "notifiers": [], "deployer": "script"}
        )
        results = {r.name: r for r in await run_checks(settings, make_registry(settings))}
        assert results["schema"].ok, results["schema"].detail
        detail = results["privileges"].detail
        assert not results["privileges"].ok
        assert "USAGE on the sequence of agent_task_event.id" in detail
        grants = detail.rsplit(" (", 1)[1].rstrip(")").split("; ")
        assert f"GRANT USAGE ON SEQUENCE public.agent_task_event_id_seq TO {role}" in grants
        conn = await asyncpg.connect(database_url)
        try:
            for grant in grants:
                await conn.execute(grant)
        finally:
            await conn.close()
        again = {r.name: r for r in await run_checks(settings, make_registry(settings))}
        assert again["privileges"].ok, again["privileges"].detail
    finally:
        await _drop_role(database_url, role)
