"""Hostile data, round two: arbitrary values in every column the agent reads, and any
bytes a deploy prints. The agent stays up, each row it cannot use ends with a named cause,
the queue flows, no outcome is refused for its content, and no secret survives a cut.

The property-based test is derandomized and small by default; ``WRKTALK_FUZZ_SCALE=10``
runs ten times the examples."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from agent_helpers import Recording, agent_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wrktalk_agent import process
from wrktalk_agent.config import AgentSettings
from wrktalk_agent.redact import Redactor
from wrktalk_agent.testing import add_release, make_tarball

FUZZ_SCALE = max(1, int(os.environ.get("WRKTALK_FUZZ_SCALE", "1")))
#: Shown, never run: markup, ANSI, a bidi override, a carriage return.
NASTY = "[/]x[/b] \x1b[2J\u202e\r"
SECRET = "Zq8vK3mX9wR2pL7tN"  # 17 characters, as in the values.yaml password


def fragments(secret: str, size: int = 5) -> list[str]:
    """Every piece of ``secret`` long enough to give it away."""
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


async def stored_text(conn: asyncpg.Connection, task_id: uuid.UUID) -> str:
    """Everything stored about a task: result, error, timeline, notifications."""
    parts = await conn.fetch(
        """SELECT coalesce(result::text, '') || ' ' || coalesce(error_message, '') AS t
             FROM agent_task WHERE id = $1
           UNION ALL SELECT step || ' ' || message FROM agent_task_event WHERE task_id = $1
           UNION ALL SELECT event::text FROM agent_notification WHERE task_id = $1""",
        task_id,
    )
    return "\n".join(r["t"] for r in parts)


# -- the property: arbitrary rows against a running agent ------------------------------------
TIMES = st.sampled_from(
    [None, "infinity", "-infinity", "0001-01-01 00:00:00+00", "294276-12-31 00:00:00+00",
     "2000-01-01 00:00:00+00", "now", "+1 year"]
)  # fmt: skip
HEARTBEATS = st.sampled_from(
    [None, "infinity", "-infinity", "0001-01-01 00:00:00+00", "294276-12-31 00:00:00+00",
     "2000-01-01 00:00:00+00", "+1 year"]
)  # fmt: skip
DUE = st.sampled_from([None, "-infinity", "0001-01-01 00:00:00+00", "2000-01-01 00:00:00+00"])
NOT_DUE = st.sampled_from(["infinity", "+1 year", "294276-12-31 00:00:00+00"])
FLOATS = st.sampled_from(
    [None, math.nan, math.inf, -math.inf, 1e300, -1e300, -5.0, 0.0, 5e-324, 0.5, 86400.0]
)
# text PostgreSQL can hold (no NUL, no lone surrogates: the database refuses those)
TEXT = st.one_of(
    st.sampled_from(["", NASTY, "deploy", "1.0.0", "a" * 300, "'; DROP TABLE admin; --"]),
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40),
)
JSON_LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, -1e308, 10**40]), TEXT,
)  # fmt: skip
JSON = st.one_of(
    st.none(),
    st.sampled_from([[], "queued", 0, True, {"output": NASTY}, "deep"]),
    st.recursive(JSON_LEAVES, lambda inner: st.lists(inner, max_size=3)
                 | st.dictionaries(TEXT, inner, max_size=3), max_leaves=8),
)  # fmt: skip


@st.composite
def hostile_release(draw: st.DrawFn) -> dict[str, Any]:
    good = make_tarball({"README": "hostile\n"})
    data = draw(
        st.sampled_from(
            [good, b"", b"\x00" * 64, b"\xff\xfe\x00h\x00i", "ünïcødé".encode("utf-16"), b"x"]
        )
    )
    digest = hashlib.sha256(data).hexdigest()
    return {
        "release_version": draw(
            st.sampled_from(["{v}", "{v}" + NASTY, "-{v}", "", "{v} --set x=1", "v" * 80])
        ),
        "chart_type": draw(st.sampled_from(["compose", "helm", "kustomize", NASTY, ""])),
        "artifact_data": data,
        "sha256": draw(st.sampled_from([digest, digest.upper(), f" {digest}\n", "0" * 64, "zz"])),
        "env_data": draw(st.one_of(st.none(), TEXT, st.just("API_TOKEN=tok-hostile-123\n"))),
        "values_data": draw(st.one_of(st.none(), TEXT, st.just("a: [unclosed\n  b: *x"))),
        "applied_at": draw(TIMES),
        "created_at": draw(TIMES.filter(lambda t: t is not None)),
        "signature": draw(st.one_of(st.none(), TEXT)),
    }


@st.composite
def hostile_task(draw: st.DrawFn) -> dict[str, Any]:
    status = draw(st.sampled_from(["pending", "pending", "pending", "inProgress", "completed"]))
    row: dict[str, Any] = {
        "type": draw(st.sampled_from(["deploy", "deploy", "rollback", "redeploy", NASTY, ""])),
        "status": status,
        "release": draw(st.sampled_from(["hostile", "good", "none", "missing"])),
        "execute_after": draw(st.one_of(DUE, NOT_DUE) if status == "pending" else TIMES),
        "picked_up_at": draw(HEARTBEATS if status == "inProgress" else TIMES),
        "completed_at": draw(TIMES),
        # a running row always has a heartbeat no lease keeps alive (else the property
        # would wait for a lease of up to a day)
        "last_heartbeat": draw(
            HEARTBEATS.filter(lambda t: t is not None) if status == "inProgress" else TIMES
        ),
        "result": draw(JSON),
        "error_message": draw(st.one_of(st.none(), TEXT)),
        "claimed_by": draw(st.one_of(st.none(), TEXT)),
        "claim_token": draw(st.sampled_from([None, uuid.UUID(int=0), uuid.uuid4()])),
        "lease_seconds": draw(FLOATS),
        "recovery": draw(st.booleans()),
        "created_at": draw(TIMES.filter(lambda t: t not in (None, "infinity", "+1 year"))),
    }
    return row


@st.composite
def hostile_config(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "deployment_type": draw(st.sampled_from(["docker", "kubernetes", NASTY])),
        "maintenance_mode_enabled": draw(st.booleans()),
        "smtp_host": draw(st.one_of(st.none(), TEXT)),
        "smtp_port": draw(st.sampled_from([None, -1, 0, 25, 65536, 2**31 - 1])),
        "smtp_user": draw(st.one_of(st.none(), TEXT)),
        "smtp_from": draw(st.one_of(st.none(), TEXT)),
        "maintenance_owner": draw(
            st.sampled_from([None, NASTY, "task:not-a-uuid", f"task:{uuid.uuid4()}", "operator:"])
        ),
        "maintenance_reason": draw(st.one_of(st.none(), TEXT)),
        "maintenance_since": draw(TIMES),
        "last_agent_poll": draw(TIMES),
    }


_TIME_COLUMNS = {
    "execute_after", "picked_up_at", "completed_at", "last_heartbeat", "created_at",
    "applied_at", "maintenance_since", "last_agent_poll",
}  # fmt: skip


def _placeholder(column: str, n: int) -> str:
    if column in _TIME_COLUMNS:
        # '+1 year' is relative to the server's clock; the rest are timestamptz literals
        return (
            f"CASE WHEN ${n}::text = '+1 year' THEN now() + interval '1 year' "
            f"ELSE ${n}::text::timestamptz END"
        )
    if column == "result":
        return f"${n}::text::jsonb"
    return f"${n}"


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@dataclass
class Inserted:
    task_id: uuid.UUID
    row: dict[str, Any]


async def insert_hostile(
    conn: asyncpg.Connection, good_release: uuid.UUID, task: dict[str, Any], release: dict[str, Any]
) -> Inserted:
    suffix = uuid.uuid4().hex[:8]
    rel = dict(release)
    rel["release_version"] = rel["release_version"].replace("{v}", f"7.0.0-{suffix}") or suffix
    if rel["release_version"] == "v" * 80:
        rel["release_version"] += suffix
    columns = list(rel)
    release_id = await conn.fetchval(
        f"INSERT INTO release_artifact ({', '.join(columns)}) VALUES "
        f"({', '.join(_placeholder(c, i + 1) for i, c in enumerate(columns))}) RETURNING id",
        *rel.values(),
    )
    row = dict(task)
    which = row.pop("release")
    row["release_artifact_id"] = {
        "hostile": release_id, "good": good_release, "none": None, "missing": uuid.uuid4(),
    }[which]  # fmt: skip
    if row["result"] == "deep":
        row["result"] = _deep(3000)  # PostgreSQL takes it; Python's parser does not
    elif row["result"] is not None:
        row["result"] = json.dumps(row["result"])
    else:
        row["result"] = None
    columns = list(row)
    task_id = await conn.fetchval(
        f"INSERT INTO agent_task ({', '.join(columns)}) VALUES "
        f"({', '.join(_placeholder(c, i + 1) for i, c in enumerate(columns))}) RETURNING id",
        *row.values(),
    )
    return Inserted(task_id, row)


async def set_config(conn: asyncpg.Connection, config: dict[str, Any]) -> None:
    columns = list(config)
    sets = ", ".join(f"{c} = {_placeholder(c, i + 1)}" for i, c in enumerate(columns))
    await conn.execute(f"UPDATE deployment_config SET {sets}", *config.values())


BACKEND_SCHEMA = """
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT c.relname, k.conname FROM pg_constraint k
             JOIN pg_class c ON c.oid = k.conrelid
             WHERE k.contype IN ('c', 'f') AND c.relnamespace = current_schema()::regnamespace
               AND c.relname IN ('agent_task', 'release_artifact')
    LOOP
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', r.relname, r.conname);
    END LOOP;
END $$;
ALTER TABLE release_artifact DROP CONSTRAINT IF EXISTS release_artifact_release_version_key;
"""


async def _settle(
    conn: asyncpg.Connection, proc: Any, ids: list[uuid.UUID], good: uuid.UUID, timeout: float
) -> list[asyncpg.Record]:
    """Wait until the good task is completed and no hostile row is due or running."""
    deadline = time.monotonic() + timeout
    while True:
        rows = await conn.fetch(
            """SELECT id, status, error_message,
                   status = 'pending' AND execute_after IS NOT NULL
                       AND execute_after > now() AS not_due
               FROM agent_task WHERE id = ANY($1::uuid[])""",
            [*ids, good],
        )
        by_id = {r["id"]: r for r in rows}
        settled = all(
            by_id[i]["status"] in ("completed", "failed") or by_id[i]["not_due"] for i in ids
        )
        if settled and by_id[good]["status"] in ("completed", "failed"):
            return rows
        if proc.poll() is not None:
            pytest.fail(f"the agent died (exit {proc.returncode}): {_log_tail(proc)}")
        if time.monotonic() > deadline:
            pytest.fail(
                "not settled: "
                + "; ".join(f"{r['status']} {r['error_message']!r}" for r in rows)
                + f"\nagent log: {_log_tail(proc)}"
            )
        await asyncio.sleep(0.1)


def _log_tail(proc: Any) -> str:
    return Path(proc.log_path).read_text(errors="replace")[-4000:]


#: Words every cause the agent writes for a row it could not run starts from.
CAUSES = (
    "rejected by agent",  # refused by the poll, column and value named
    "abandoned",  # a running row whose lease was over: taken over and recovered
)


@pytest.mark.timeout(600)
def test_arbitrary_rows_never_stop_the_queue(
    database_url: str, agent_settings: AgentSettings, recording: Recording, spawn_agent
) -> None:
    async def setup() -> uuid.UUID:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(BACKEND_SCHEMA)
            await conn.execute(
                "INSERT INTO admin (name, email) VALUES ('Ann', 'ann@acme.example'), "
                "($1, $2), ('', 'bob@acme.example\r\nBcc: eve@evil.example')",
                NASTY,
                "not an address",
            )
            data = make_tarball({"README": "good\n"})
            return await conn.fetchval(
                """INSERT INTO release_artifact (release_version, chart_type, artifact_data,
                       sha256) VALUES ('1.0.0', 'compose', $1, $2) RETURNING id""",
                data,
                hashlib.sha256(data).hexdigest(),
            )
        finally:
            await conn.close()

    good_release = asyncio.run(setup())
    env = agent_env(
        agent_settings, recording, WRKTALK_AGENT_POLL_INTERVAL="0.2",
        WRKTALK_AGENT_HEARTBEAT_INTERVAL="0.3", WRKTALK_AGENT_STALE_MARGIN="0.6",
    )  # fmt: skip
    proc = spawn_agent(env)
    seen: dict[str, int] = {"rejected": 0, "abandoned": 0, "completed": 0, "waiting": 0}

    @settings(
        max_examples=8 * FUZZ_SCALE,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        tasks=st.lists(st.tuples(hostile_task(), hostile_release()), min_size=1, max_size=2),
        config=hostile_config(),
    )
    def one_example(tasks: list[tuple[dict[str, Any], dict[str, Any]]], config: dict) -> None:
        asyncio.run(example(tasks, config))

    async def example(tasks: list[tuple[dict[str, Any], dict[str, Any]]], config: dict) -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await set_config(conn, config)
            inserted = []
            for task, release in tasks:
                if task["status"] == "inProgress" and await conn.fetchval(
                    "SELECT count(*) FROM agent_task WHERE status = 'inProgress'"
                ):
                    task = {**task, "status": "pending"}  # one running row at a time
                inserted.append(await insert_hostile(conn, good_release, task, release))
            # a normal deploy queued after them
            good = await conn.fetchval(
                "INSERT INTO agent_task (type, release_artifact_id) VALUES ('deploy', $1) "
                "RETURNING id",
                good_release,
            )
            rows = await _settle(conn, proc, [i.task_id for i in inserted], good, 90)
            by_id = {r["id"]: r for r in rows}
            assert by_id[good]["status"] == "completed", (by_id[good], _log_tail(proc))
            for item in inserted:
                found = by_id[item.task_id]
                given_status = item.row["status"]
                if given_status == "completed":
                    assert found["status"] == "completed", found  # left alone
                elif found["not_due"]:
                    seen["waiting"] += 1  # not due yet: left pending, as it should be
                    await conn.execute(
                        "UPDATE agent_task SET status = 'failed' WHERE id = $1", item.task_id
                    )
                elif found["status"] == "failed":
                    error = found["error_message"] or ""
                    assert error.startswith(CAUSES) or given_status == "pending", (item, error)
                    assert error.strip() and "unexpected error" not in error, (item.row, error)
                    seen["rejected" if error.startswith("rejected") else "abandoned"] += 1
                else:
                    seen["completed"] += 1
            assert proc.poll() is None, _log_tail(proc)
        finally:
            await conn.close()

    try:
        one_example()
        log = Path(proc.log_path).read_text(errors="replace")
        for line in log.splitlines():
            event = json.loads(line).get("event", "") if line.startswith("{") else line
            assert event not in ("poll.failed", "task.crashed", "side_task.crashed"), line
        assert "tok-hostile-123" not in log

        async def mailed(address: str) -> int:
            conn = await asyncpg.connect(database_url)
            try:
                return await conn.fetchval(
                    "SELECT count(*) FROM agent_task WHERE result::text LIKE $1", f"%{address}%"
                )
            finally:
                await conn.close()

        # admins with an address were mailed; the row whose email forges a header was not
        assert asyncio.run(mailed("ann@acme.example")) > 0
        assert asyncio.run(mailed("eve@evil.example")) == 0
        print("hostile rows:", seen)
        assert seen["rejected"] > 0, seen  # the property did reach the interesting rows
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


# -- agent-owned numbers and times: clamped or expired, never an overflow ------------------
LEASE_CASES = [
    (heartbeat, lease)
    for heartbeat in ("infinity", "294276-12-31 00:00:00+00", "+1 year", "2000-01-01 00:00:00+00")
    for lease in (math.nan, math.inf, -math.inf, 1e300, -5.0, 0.0, 86400.0, None)
]


async def test_a_running_row_with_impossible_lease_values_is_taken_over_by_the_next_poll(
    repo,
) -> None:
    for heartbeat, lease in LEASE_CASES:
        task_id = await repo.pool.fetchval(
            f"""INSERT INTO agent_task (type, status, claimed_by, last_heartbeat, lease_seconds)
                VALUES ('deploy', 'inProgress', 'gone', {_placeholder("last_heartbeat", 1)}, $2)
                RETURNING id""",
            heartbeat,
            lease,
        )
        polled = await repo.poll(
            "test-agent", 2.5, claim_token=uuid.uuid4(), instance_id=uuid.uuid4()
        )
        case = (heartbeat, lease)
        assert polled.taken_over is not None and polled.taken_over.id == task_id, case
        error = polled.taken_over.error_message
        assert error.startswith("abandoned: agent gone"), (case, error)
        if heartbeat != "2000-01-01 00:00:00+00":
            assert "a time no agent writes" in error, (case, error)
        if lease is not None and not 0 < lease <= 86400:
            assert "its lease_seconds" in error and "read as 2.5 s" in error, (case, error)
        await repo.pool.execute("UPDATE agent_task SET status = 'failed' WHERE id = $1", task_id)


# -- what a deploy prints --------------------------------------------------------------------
def _script_release(program: str) -> dict[str, str]:
    return {"deploy": f"#!{sys.executable}\nimport sys\n{program}\n"}


OUTPUTS = {
    "nul": "sys.stdout.buffer.write(b'before\\x00after\\n' * 3)",
    "invalid utf-8": "sys.stdout.buffer.write(b'caf\\xe9 \\xff\\xfe \\xc3\\x28 end\\n')",
    "utf-16": "sys.stdout.buffer.write('déployé ✓ done\\n'.encode('utf-16'))",
    "10 MB without newlines": "sys.stdout.buffer.write(b'x' * (10 * 1024 * 1024))",
}


@pytest.fixture
def script_settings(recording_settings: AgentSettings, tmp_path: Path) -> AgentSettings:
    os.environ["WRKTALK_AGENT_SCRIPT_WORKING_DIR"] = str(tmp_path / "script")
    return recording_settings.model_copy(update={"deployer": "script"})


@pytest.fixture(autouse=True)
def _no_script_dir_leak() -> Any:
    yield
    os.environ.pop("WRKTALK_AGENT_SCRIPT_WORKING_DIR", None)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", list(OUTPUTS))
async def test_any_output_completes_with_its_timeline_and_no_abandoned_mail(
    name: str, script_settings: AgentSettings, recording: Recording, repo, make_agent
) -> None:
    release = await add_release(
        repo, "1.0.0", _script_release(OUTPUTS[name]), env_data=f"DB_PASSWORD={SECRET}\n"
    )
    task = await repo.create_task("deploy", release.id)
    agent = await make_agent(script_settings)
    assert await asyncio.wait_for(agent.run(once=True), 90) == 0
    done = await repo.get_task(task.id)
    assert done.status == "completed", done.error_message
    assert "dropped" not in (done.result or {}), done.result  # nothing had to be left out
    events = await repo.task_events(task.id)
    steps = [(e.step, e.status) for e in events]
    assert ("deploy", "succeeded") in steps and ("artifact", "succeeded") in steps
    output = done.result["deployer"]["output"]
    lines = [e.message for e in events if e.step == "deploy" and e.message.startswith("│ ")]
    assert lines, steps  # the live output reached the timeline
    if name == "nul":
        assert "before\\x00after" in output and any("\\x00" in m for m in lines)
    elif name == "invalid utf-8":
        assert "caf\\xe9 \\xff\\xfe \\xc3(" in output
    elif name == "utf-16":
        assert "d\\x00" in output  # stored, escaped: nothing refused
    else:
        assert len(output.encode()) <= process.TAIL_BYTES and output.endswith("xxxx")
    promised = await repo.pool.fetch(
        "SELECT event FROM agent_notification WHERE task_id = $1", task.id
    )
    kinds = [r["event"]["kind"] for r in promised]
    assert kinds == ["deploy_succeeded"]
    assert [r["kind"] for r in recording.records("notify")] == ["deploy_succeeded"]


async def test_an_outcome_refused_anyway_keeps_its_verdict_and_says_what_was_dropped(
    recording_settings: AgentSettings, recording: Recording, repo, make_agent
) -> None:
    """A trigger that refuses any result holding a deploy's output (as a database could for
    reasons of its own): the task still completes, the release is current, the result says
    what was left out, and nobody is mailed "abandoned"."""
    await repo.pool.execute(
        """CREATE FUNCTION no_output() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN IF NEW.result ? 'deployer' THEN RAISE EXCEPTION 'no output here';
              END IF; RETURN NEW; END $$;
           CREATE TRIGGER no_output BEFORE UPDATE ON agent_task
           FOR EACH ROW EXECUTE FUNCTION no_output();"""
    )
    release = await add_release(repo, "1.0.0")
    task = await repo.create_task("deploy", release.id)
    agent = await make_agent(recording_settings)
    assert await asyncio.wait_for(agent.run(once=True), 60) == 0
    done = await repo.get_task(task.id)
    assert done.status == "completed"
    assert (await repo.current_release()).release_version == "1.0.0"
    *timeline, result = done.result["dropped"]
    assert result == "the task result (outputs, steps, details)"
    assert [entry.endswith("timeline entries") for entry in timeline] == [True]
    assert "no output here" in done.result["refused"]
    assert [r["kind"] for r in recording.records("notify")] == ["deploy_succeeded"]


# -- secrets across every cut ----------------------------------------------------------------
def _program_printing(before: int, after: int, newline: bool = False) -> str:
    end = "\\n" if newline else ""
    after -= 1 if newline else 0  # the line end counts towards what follows the secret
    return (
        f"sys.stdout.write('.' * {before} + '{SECRET}' + '.' * {after} + '{end}'); "
        "sys.stdout.flush()"
    )


def _cut_offsets() -> list[tuple[str, int, int]]:
    """(what, characters before the secret, characters after it): the secret straddles
    the tail's start (8 KiB from the end), the start of what is read beyond it, the live
    output's 4 KiB pieces and the 64 KiB reads, at several points of its length."""
    cases: list[tuple[str, int, int]] = []
    for k in (1, 5, 12, 16):
        cases.append(("tail", 20_000, process.TAIL_BYTES - k))
        keep = process.TAIL_BYTES + process.TAIL_MARGIN_BYTES
        cases.append(("read buffer", 40_000, keep - k))
        cases.append(("live piece", process.SINK_LINE_BYTES - k, 9_000))
        cases.append(("read chunk", 64 * 1024 - k, 100))
    return cases


@pytest.mark.parametrize(("what", "before", "after"), _cut_offsets())
async def test_a_secret_straddling_a_cut_is_masked_whole(
    what: str, before: int, after: int
) -> None:
    lines: list[str] = []
    redactor = Redactor(extra=[SECRET])
    # the sink masks each piece it gets (as the live output does); the cuts must leave
    # it whole pieces to mask
    with process.streaming_output(lambda line: lines.append(redactor.redact(line)), redactor):
        result = await process.run(
            [sys.executable, "-c", "import sys\n" + _program_printing(before, after)]
        )
    assert result.ok
    stored = result.output + "\n".join(lines)
    leaked = [f for f in fragments(SECRET) if f in stored]
    assert leaked == [], (what, leaked)
    assert "***" in "\n".join(lines)  # the live output saw the whole secret, masked


@pytest.mark.timeout(120)
async def test_no_piece_of_a_secret_at_any_cut_is_stored(
    script_settings: AgentSettings, recording: Recording, repo, make_agent
) -> None:
    """End to end: a deploy prints a values.yaml password across the tail's start, the
    read buffer's start, a live-output piece boundary and a 64 KiB read; then fails, so the
    output is stored in the result and quoted in the error too."""
    # the live-output and read cases first, the tail's last: its end is what is kept
    cases = sorted(_cut_offsets()[4:8], key=lambda case: case[0] == "tail")  # k = 5
    program = "\n".join(
        _program_printing(before, after, newline=True) for _, before, after in cases
    )
    program += "\nsys.exit(3)"
    release = await add_release(
        repo, "1.0.0", _script_release(program), values_data=f"db:\n  password: {SECRET}\n"
    )
    task = await repo.create_task("deploy", release.id)
    agent = await make_agent(script_settings)
    assert await asyncio.wait_for(agent.run(once=True), 90) == 1
    stored = await stored_text(repo.pool, task.id)  # type: ignore[arg-type]
    assert "***" in stored
    assert [f for f in fragments(SECRET) if f in stored] == []


def test_task_list_keeps_both_causes_of_a_failed_rollback_on_its_line() -> None:
    from wrktalk_agent.cli import error_cell
    from wrktalk_agent.pipeline import both_causes

    error = both_causes(
        "deploy half-applied: 3 of 5 pods crashlooping in namespace wrktalk",
        "1.4.2",
        "helm rollback: timed out waiting for the condition after 300s",
    )
    cell = error_cell(error, wide=False)
    assert len(cell) <= 60 and "deploy half-applied" in cell and "helm rollback" in cell
    assert error_cell(error, wide=True) == error
    assert "automatic rollback to 1.4.2 failed too" in error and "\n" not in error


@pytest.mark.parametrize("what", ["tail", "live piece"])
async def test_a_secret_known_only_by_its_name_is_masked_across_a_cut(what: str) -> None:
    """``API_TOKEN=value`` is masked by its shape; the name before a cut, the value after
    it must not leave the value bare."""
    value = "k7Vq2Lm9Xw4Rt8Zp"
    token = f"API_TOKEN={value}"
    if what == "tail":  # the name ends just before the tail's first byte
        program = (
            f"sys.stdout.write('. ' * 10000 + '{token}' + ' .' * {process.TAIL_BYTES // 2 - 8})"
        )
    else:  # the name ends just before a 4 KiB piece ends, in a line of words
        program = f"sys.stdout.write('a ' * {process.SINK_LINE_BYTES // 2 - 5} + '{token} ' * 3)"
    lines: list[str] = []
    redactor = Redactor()
    with process.streaming_output(lambda line: lines.append(redactor.redact(line)), redactor):
        result = await process.run([sys.executable, "-c", "import sys\n" + program])
    stored = redactor.redact(result.output) + "\n".join(lines)
    assert [f for f in fragments(value) if f in stored] == [], what
