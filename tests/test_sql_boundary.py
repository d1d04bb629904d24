"""All SQL lives behind ``wrktalk_agent/db/``: no other module of the core (nor a shipped
plugin) holds a statement, imports the statement modules, or calls asyncpg's query
methods. The CLI, metrics, maintenance, preflight, artifacts and the dashboard ask the
repository (procrastinate's and PgQueuer's one door)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "wrktalk_agent"
DB = CORE / "db"

#: modules outside db/ allowed to issue SQL, and why
ALLOWED = {
    # the test harness (public, for plugins' tests): creates, templates and drops test
    # databases and stores test admins, things no agent does
    CORE / "testing.py": "test harness",
}

#: a string that starts like a statement: a verb and something after it
_STATEMENT = re.compile(
    r"^\s*(SELECT|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|WITH\s+\w+\s+AS|CREATE|ALTER|"
    r"DROP|TRUNCATE|LOCK\s+TABLE|GRANT|REVOKE)\s+\S"
)
#: asyncpg methods that send a statement (``execute`` is checked by its argument: the name
#: is common, as in ``run.execute()``)
_QUERY_METHODS = {"fetch", "fetchrow", "fetchval", "executemany", "prepare", "cursor",
                  "copy_from_query", "copy_to_table", "copy_records_to_table"}  # fmt: skip


def _modules() -> list[Path]:
    plugins = sorted((ROOT / "plugins").glob("*/wrktalk_agent_*/**/*.py"))
    core = [p for p in sorted(CORE.rglob("*.py")) if DB not in p.parents]
    return [p for p in core + plugins if p not in ALLOWED]


def _statements(module: str) -> bool:
    """Whether ``module`` is the statements' package or one of its section modules."""
    return module == "wrktalk_agent.db.queries" or module.startswith("wrktalk_agent.db.queries.")


def sql_outside_db(path: Path) -> list[str]:
    """Where ``path`` holds or issues SQL: line and what."""
    found = []
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = {a.name for a in node.names}
            if _statements(node.module) or (
                node.module == "wrktalk_agent.db" and "queries" in names
            ):
                found.append(f"{node.lineno}: imports the statements (db.queries)")
            if node.module == "wrktalk_agent.db.schema" and "schema_sql" in names:
                found.append(f"{node.lineno}: imports the schema's SQL")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if _statements(alias.name):
                    found.append(f"{node.lineno}: imports the statements (db.queries)")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _STATEMENT.match(node.value):
                found.append(f"{node.lineno}: SQL text {node.value.strip()[:40]!r}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in _QUERY_METHODS:
                found.append(f"{node.lineno}: calls .{node.func.attr}()")
    return found


def test_no_module_outside_db_issues_sql() -> None:
    offenders = {
        str(path.relative_to(ROOT)): found for path in _modules() if (found := sql_outside_db(path))
    }
    assert offenders == {}, "SQL outside wrktalk_agent/db/ (add a Repository method instead)"


def test_inside_db_every_statement_lives_in_queries() -> None:
    """The repository's sections hold no SQL of their own: every statement the agent runs
    is in db/queries/ (the schema's in schema.sql and schema.py)."""
    queries = DB / "queries"
    sections = [p for p in sorted(DB.rglob("*.py")) if queries not in p.parents]
    sections.remove(DB / "schema.py")
    offenders = {}
    for path in sections:
        tree = ast.parse(path.read_text(), str(path))
        found = [
            f"{node.lineno}: SQL text {node.value.strip()[:40]!r}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and _STATEMENT.match(node.value)
        ]
        if found:
            offenders[str(path.relative_to(ROOT))] = found
    assert offenders == {}, "SQL in a repository section (move it to db/queries/)"
    names = {p.relative_to(DB).as_posix() for p in sections}
    assert {"repository.py", "claims.py", "outbox.py", "connection.py"} <= names


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ('rows = await repo.pool.fetch("SELECT id FROM agent_task")', True),
        ("await conn.execute('UPDATE agent_task SET status = $1')", True),
        ("from wrktalk_agent.db import queries as q", True),
        ("import wrktalk_agent.db.queries", True),
        ("from wrktalk_agent.db.queries.claims import POLL", True),
        ("from wrktalk_agent.db.queries import outbox", True),
        ("import wrktalk_agent.db.queries.reads as dashboard", True),
        ("from wrktalk_agent.db.queries_cache import hits", False),
        ("row = await pool.fetchrow(Q)", True),
        ('QUERY = """\n  WITH head AS (SELECT 1) SELECT * FROM head"""', True),
        ("await run.execute()", False),
        ('PRIVILEGES = [("agent_task", "SELECT", "finding due tasks")]', False),
        ('help = "each one small UPDATE of the row"', False),
        ("tasks = await repo.pending_rollback()", False),
        ('"""LISTEN for task changes on a connection of its own."""', False),
    ],
)
def test_the_check_tells_sql_from_prose(source: str, caught: bool, tmp_path: Path) -> None:
    module = tmp_path / "module.py"
    module.write_text(source + "\n")
    assert bool(sql_outside_db(module)) is caught


def test_the_shipped_modules_that_used_to_issue_sql_are_checked() -> None:
    checked = {p.relative_to(CORE).as_posix() for p in _modules() if CORE in p.parents}
    for name in ("cli/task.py", "cli/release.py", "cli/run.py", "metrics.py", "maintenance.py",
                 "preflight.py", "artifacts.py", "runtime.py", "tui/data.py"):  # fmt: skip
        assert name in checked
