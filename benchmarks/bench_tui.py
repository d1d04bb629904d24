"""Dashboard (`wrktalk-agent tui`) at scale: first paint, refresh queries, memory.

    python benchmarks/bench_tui.py [--duration 60] [--repeat 50] [--tasks 100000]
                                   [--events-per-task 10] [--artifacts 1000] [--artifact-kb 1024]

Seeds a fresh database (WRKTALK_BENCH_DATABASE_URL, or an embedded PostgreSQL) with
server-side generate_series INSERTs, then measures:

* first paint, side by side: a new process running the dashboard headless, from its start
  until the tasks table shows rows, against a bare Textual app (a DataTable filled from one
  query of the newest tasks, nothing else) started the same way, alternated, in one run;
  and the same on a terminal: ``wrktalk-agent tui`` and the bare app in a tmux window, until
  the rows are on its screen (both with their bytecode compiled, as installed);
* first paint in-process: a headless app from start until the tasks table is filled;
* each refresh query: median / p95 over ``--repeat`` calls through the Repository, and its
  plan (EXPLAIN ANALYZE, custom and generic) with the indexes it uses;
* memory: RSS while the app refreshes as fast as it can for ``--duration`` seconds, with a
  task inserted every second so the NOTIFY path runs too.

Goals (issue 8): first paint ≤ 1 s, each refresh query ≤ 20 ms, memory flat; (issue 27)
first paint ≤ 1.5x the bare Textual app's. Each table says the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).parent))
from _support import (
    drop_database,
    fresh_database,
    machine_load,
    median,
    percentile,
    server_url,
    table,
)

from wrktalk_agent.config import AgentSettings
from wrktalk_agent.db import queries as q
from wrktalk_agent.db.repository import Repository
from wrktalk_agent.tui import create_app
from wrktalk_agent.tui.data import AGENT_WINDOW, RELEASE_LIMIT, TASK_LIMIT
from wrktalk_agent.tui.messages import SnapshotLoaded
from wrktalk_agent.tui.widgets import TasksTable

FIRST_PAINT_GOAL = 1.0
#: issue 27: the dashboard's first paint against a bare Textual app's, process start to rows
BARE_RATIO_GOAL = 1.5
QUERY_GOAL_MS = 20.0
BIG_TABLES = {"agent_task", "agent_task_event", "release_artifact"}

STEPS = [
    "claim",
    "resolve",
    "artifact",
    "artifact",
    "maintenance-on",
    "deploy",
    "deploy",
    "health",
    "maintenance-off",
    "notify",
]


async def seed(db_url: str, *, tasks: int, events_per_task: int, artifacts: int, kb: int) -> None:
    conn = await asyncpg.connect(db_url, command_timeout=None)
    try:
        # Seeding is not what is measured: skip one NOTIFY per inserted row.
        await conn.execute("ALTER TABLE agent_task DISABLE TRIGGER agent_task_notify")
        blob = os.urandom(kb * 1024)  # incompressible, like a real tarball
        await conn.execute(
            """
            INSERT INTO release_artifact (release_version, chart_type, artifact_data, env_data,
                values_data, sha256, signature, created_at, applied_at, is_current, is_previous)
            SELECT '1.' || g || '.0', 'helm', overlay($1::bytea PLACING int4send(g) FROM 1),
                   'SECRET=x', 'password: x', encode(sha256(int4send(g)), 'hex'),
                   CASE WHEN g % 2 = 0 THEN 'c2lnbmF0dXJl' END,
                   now() - (($2 - g) * interval '1 day'),
                   CASE WHEN g < $2
                        THEN now() - (($2 - g) * interval '1 day') + interval '1 hour' END,
                   g = $2 - 1, g = $2 - 2
            FROM generate_series(1, $2) g
            """,
            blob,
            artifacts,
        )
        await conn.execute(
            """
            INSERT INTO agent_task (type, status, release_artifact_id, created_at, execute_after,
                picked_up_at, completed_at, last_heartbeat, claimed_by, error_message, result)
            SELECT CASE WHEN g % 10 = 0 THEN 'rollback' ELSE 'deploy' END,
                   s.status, a.ids[1 + g % array_length(a.ids, 1)],
                   now() - (($1 - g) * interval '5 minutes'),
                   CASE WHEN s.status = 'pending' THEN now() + interval '1 hour' END,
                   CASE WHEN s.status <> 'pending'
                        THEN now() - (($1 - g) * interval '5 minutes') END,
                   CASE WHEN s.status IN ('completed', 'failed')
                        THEN now() - (($1 - g) * interval '5 minutes') + interval '2 minutes' END,
                   CASE WHEN s.status <> 'pending'
                        THEN now() - (($1 - g) * interval '5 minutes') END,
                   'agent-' || (g % 3),
                   CASE WHEN s.status = 'failed' THEN 'helm upgrade failed: timed out waiting '
                        || 'for the condition (task ' || g || ')' END,
                   CASE WHEN s.status IN ('completed', 'failed') THEN jsonb_build_object(
                        'outcome', s.status,
                        'deployer', jsonb_build_object('output', repeat('line of output\n', 60)),
                        'notifications', '{"smtp": [{"recipient": "ops@example.com", "ok": true}]}'
                            ::jsonb) END
            FROM generate_series(1, $1) g
            CROSS JOIN (SELECT array_agg(id) AS ids FROM release_artifact) a
            CROSS JOIN LATERAL (SELECT CASE
                WHEN g = $1 THEN 'inProgress'
                WHEN g > $1 - 5 THEN 'pending'
                WHEN g % 7 = 0 THEN 'failed'
                ELSE 'completed' END AS status) s
            """,
            tasks,
        )
        await conn.execute(
            """
            INSERT INTO agent_task_event (task_id, created_at, step, status, message, agent_id)
            SELECT t.id, coalesce(t.picked_up_at, t.created_at) + n * interval '3 seconds',
                   ($2::text[])[1 + (n - 1) % array_length($2::text[], 1)],
                   CASE WHEN n % 2 = 0 THEN 'succeeded' ELSE 'started' END,
                   'step ' || n, t.claimed_by
            FROM agent_task t CROSS JOIN generate_series(1, $1) n
            """,
            events_per_task,
            STEPS,
        )
        await conn.execute(
            """
            INSERT INTO agent_instance
                (agent_id, hostname, pid, version, last_poll, current_task_id)
            SELECT 'agent-' || g, 'node-' || g, 1, '0.1.0', now() - g * interval '10 seconds',
                   CASE WHEN g = 0 THEN (SELECT id FROM agent_task WHERE status = 'inProgress') END
            FROM generate_series(0, 2) g;
            INSERT INTO deployment_config (maintenance_mode_enabled, last_agent_poll)
            VALUES (true, now());
            ALTER TABLE agent_task ENABLE TRIGGER agent_task_notify;
            """
        )
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


# -- refresh queries ------------------------------------------------------------------------
QueryCall = Callable[[Repository], Awaitable[Any]]


async def query_cases(repo: Repository) -> list[tuple[str, str, tuple[Any, ...], QueryCall]]:
    """(label, SQL, parameters, repository call) for each query a refresh or detail runs."""
    since = await repo.pool.fetchval("SELECT now()") - AGENT_WINDOW
    failed = await repo.pool.fetchval(
        "SELECT id FROM agent_task WHERE status = 'failed' ORDER BY created_at DESC LIMIT 1"
    )

    def tasks(status: str | None, task_type: str | None) -> QueryCall:
        return lambda r: r.dashboard_tasks(status=status, task_type=task_type, limit=TASK_LIMIT)

    cases: list[tuple[str, str, tuple[Any, ...], QueryCall]] = [
        ("overview", q.DASHBOARD_OVERVIEW, (), lambda r: r.dashboard_overview()),
        ("tasks", q.DASHBOARD_TASKS, (None, TASK_LIMIT), tasks(None, None)),
        (
            "tasks type=rollback",
            q.DASHBOARD_TASKS,
            ("rollback", TASK_LIMIT),
            tasks(None, "rollback"),
        ),
    ]
    for status, task_type in [(s, None) for s in q.DASHBOARD_TASKS_BY_STATUS] + [
        ("failed", "rollback")
    ]:
        label = f"tasks status={status}" + (f" type={task_type}" if task_type else "")
        sql = q.DASHBOARD_TASKS_BY_STATUS[status]
        cases.append((label, sql, (task_type, TASK_LIMIT), tasks(status, task_type)))
    return [
        *cases,
        ("running + current step", q.DASHBOARD_RUNNING, (), lambda r: r.dashboard_running()),
        ("agents", q.DASHBOARD_AGENTS, (since,), lambda r: r.dashboard_agents(since)),
        (
            "releases",
            q.DASHBOARD_RELEASES,
            (RELEASE_LIMIT,),
            lambda r: r.dashboard_releases(RELEASE_LIMIT),
        ),
        ("detail: task", q.GET_TASK, (failed,), lambda r: r.get_task(failed)),
        ("detail: timeline", q.TASK_EVENTS, (failed,), lambda r: r.task_events(failed)),
    ]


async def time_queries(repo: Repository, repeat: int) -> list[list[Any]]:
    results = []
    for label, sql, params, call in await query_cases(repo):
        custom = await explain(repo, sql, params, "custom")
        generic = await explain(repo, sql, params, "generic")
        for _ in range(3):  # warm up: connection, prepared statement, caches
            await call(repo)
        times = []
        for _ in range(repeat):
            began = time.perf_counter()
            await call(repo)
            times.append((time.perf_counter() - began) * 1000)
        p95 = percentile(times, 95)
        results.append(
            [
                label,
                f"{median(times):.2f}",
                f"{p95:.2f}",
                f"{generic['Execution Time']:.2f}",
                "yes" if p95 <= QUERY_GOAL_MS else "NO",
                _access_paths(custom["Plan"]),
                _access_paths(generic["Plan"]),
            ]
        )
    return results


async def explain(repo: Repository, sql: str, params: tuple[Any, ...], mode: str) -> Any:
    """EXPLAIN ANALYZE of the statement as asyncpg runs it: prepared, with a custom plan
    (the first executions) or the generic plan PostgreSQL may switch to later."""
    async with repo.pool.acquire() as conn:
        await conn.execute(f"SET plan_cache_mode = force_{mode}_plan")
        await conn.execute(f"PREPARE bench_q AS {sql}")
        try:
            args = ", ".join(_literal(p) for p in params)
            execute = f"EXECUTE bench_q({args})" if params else "EXECUTE bench_q"
            raw = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {execute}")
        finally:
            await conn.execute("DEALLOCATE bench_q")
            await conn.execute("RESET plan_cache_mode")
    return (json.loads(raw) if isinstance(raw, str) else raw)[0]


def _literal(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def _access_paths(plan: dict[str, Any]) -> str:
    """How each big table is reached: index names, or SEQ SCAN (the thing to avoid)."""
    found: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        relation = node.get("Relation Name")
        if relation in BIG_TABLES or node.get("Index Name"):
            if node["Node Type"] == "Seq Scan":
                found.append(f"SEQ SCAN {relation}")
            elif node.get("Index Name"):
                kind = "ios" if node["Node Type"] == "Index Only Scan" else "idx"
                found.append(f"{kind}:{node['Index Name']}")
        for child in node.get("Plans", []):
            walk(child)

    walk(plan)
    return ", ".join(dict.fromkeys(found)) or "-"


# -- the app -----------------------------------------------------------------------------------
async def first_paint(settings: AgentSettings) -> float:
    app = create_app(settings)
    began = time.perf_counter()
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.main.query_one(TasksTable)
        while table.row_count == 0:
            await pilot.pause(0.005)
        elapsed = time.perf_counter() - began
    return elapsed


# A new process each: what an operator waits for after typing the command (imports, the
# connection, the first query, the first screen). Each prints PAINTED when its table has rows.
# The dashboard's child starts as `wrktalk-agent tui` does (the command line's module, its
# settings from the environment), then runs the app headless instead of on the terminal.
DASHBOARD_CHILD = """
import asyncio, os, sys
os.environ["WRKTALK_AGENT_DATABASE_URL"] = sys.argv[1]
from wrktalk_agent import startup
from wrktalk_agent.cli import load_settings
startup.loading()  # as the command line's group does
from wrktalk_agent.tui import create_app
from wrktalk_agent.tui.widgets import TasksTable

async def main():
    app = create_app(load_settings(log_format="json", log_level="error"))
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.main.query_one(TasksTable)
        while table.row_count == 0:
            await pilot.pause(0.002)
        print("PAINTED", table.row_count, flush=True)

asyncio.run(main())
"""

BARE_CHILD = """
import asyncio, sys
import asyncpg
from textual.app import App
from textual.widgets import DataTable, Footer, Header

SQL = (
    "SELECT t.id, t.status, t.type, a.release_version, t.picked_up_at, t.completed_at,"
    " left(t.error_message, 200), t.claimed_by"
    " FROM agent_task t LEFT JOIN release_artifact a ON a.id = t.release_artifact_id"
    " ORDER BY t.created_at DESC, t.id DESC LIMIT 100"
)

class Bare(App):
    def compose(self):
        yield Header()
        yield DataTable()
        yield Footer()

    async def on_mount(self):
        table = self.query_one(DataTable)
        table.add_columns("ID", "Status", "Type", "Version", "Picked up", "Took", "Error", "Agent")
        conn = await asyncpg.connect(sys.argv[1])
        rows = await conn.fetch(SQL)
        await conn.close()
        table.add_rows([str(v) for v in row] for row in rows)

async def main():
    app = Bare()
    async with app.run_test(size=(120, 40)) as pilot:
        table = app.query_one(DataTable)
        while table.row_count == 0:
            await pilot.pause(0.002)
        print("PAINTED", table.row_count, flush=True)

asyncio.run(main())
"""


# The same bare app drawn on a real terminal, for the tmux comparison.
BARE_TERMINAL_APP = BARE_CHILD.split("async def main():")[0] + "Bare().run()\n"


async def paint_in_tmux(argv: list[str], env: dict[str, str], marker: str) -> float:
    """Seconds from starting ``argv`` in a 120x40 tmux window until ``marker`` is on its
    screen: what an operator sees after typing the command (the real terminal driver, the
    command's own start-up). The screen is read every 10 ms."""
    tmux = ["tmux", "-L", "wrktalk-bench-paint"]
    command = ["env", *(f"{k}={v}" for k, v in env.items()), *argv]
    began = time.perf_counter()
    await _run([*tmux, "new-window", "-d", "-t", "paint", "-n", "app", "--", *command])
    try:
        while time.perf_counter() - began < 60:
            screen = await _run([*tmux, "capture-pane", "-p", "-t", "paint:app"])
            if marker in screen:
                return time.perf_counter() - began
            await asyncio.sleep(0.01)
        raise RuntimeError(f"{argv[0]}: {marker!r} not on screen after 60 s:\n{screen}")
    finally:
        await _run([*tmux, "kill-window", "-t", "paint:app"], check=False)


async def _run(argv: list[str], *, check: bool = True) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if check and proc.returncode:
        raise RuntimeError(f"{' '.join(argv[:4])}: {err.decode(errors='replace')}")
    return out.decode(errors="replace")


async def tmux_side_by_side(db_url: str, runs: int) -> tuple[list[float], list[float]] | None:
    """``wrktalk-agent tui`` and the bare app in tmux, alternated (one warm-up each)."""
    agent = Path(sys.executable).with_name("wrktalk-agent")
    if shutil.which("tmux") is None or not agent.exists():
        print("tmux or the wrktalk-agent command missing: no terminal comparison\n")
        return None
    conn = await asyncpg.connect(db_url)
    try:  # the sixth newest task: in the table only (the header names the running one)
        newest = await conn.fetchval(
            "SELECT id::text FROM agent_task ORDER BY created_at DESC, id DESC OFFSET 5 LIMIT 1"
        )
    finally:
        await conn.close()
    marker = newest[:8]
    env = {"WRKTALK_AGENT_DATABASE_URL": db_url, "TERM": "xterm-256color"}
    tmux = ["tmux", "-L", "wrktalk-bench-paint"]
    await _run([*tmux, "new-session", "-d", "-x", "120", "-y", "40", "-s", "paint", "sleep 3600"])
    try:
        dashboard_argv = [str(agent), "tui"]
        bare_argv = [sys.executable, "-c", BARE_TERMINAL_APP, db_url]
        await paint_in_tmux(dashboard_argv, env, marker)
        await paint_in_tmux(bare_argv, env, marker)
        dashboard, bare = [], []
        for _ in range(runs):
            dashboard.append(await paint_in_tmux(dashboard_argv, env, marker))
            bare.append(await paint_in_tmux(bare_argv, env, marker))
        return dashboard, bare
    finally:
        await _run([*tmux, "kill-server"], check=False)


async def paint_process(child: str, db_url: str) -> float:
    """Seconds from starting ``child`` in a new interpreter until it says PAINTED."""
    began = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", child, db_url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 120)
    painted = time.perf_counter() - began
    _, err = await proc.communicate()
    if not line.startswith(b"PAINTED"):
        raise RuntimeError(f"first-paint child failed: {err.decode(errors='replace')[-2000:]}")
    return painted


async def paint_side_by_side(db_url: str, runs: int) -> tuple[list[float], list[float]]:
    """Dashboard and bare app alternated (one warm-up each: the page cache), ``runs`` each."""
    await paint_process(DASHBOARD_CHILD, db_url)
    await paint_process(BARE_CHILD, db_url)
    dashboard, bare = [], []
    for _ in range(runs):
        dashboard.append(await paint_process(DASHBOARD_CHILD, db_url))
        bare.append(await paint_process(BARE_CHILD, db_url))
    return dashboard, bare


def paint_table(
    title: str, tasks: int, runs: int, dashboard: list[float], bare: list[float], when: str
) -> str:
    ratio = median(dashboard) / median(bare)
    verdict = "meets" if ratio <= BARE_RATIO_GOAL else "misses"
    # fmt: off
    return table(
        f"First paint at {tasks} tasks, {title}, {runs} runs alternated ({when})",
        ["app", "median s", "min s", "max s", "vs bare"],
        [
            ["bare Textual app", f"{median(bare):.3f}", f"{min(bare):.3f}",
             f"{max(bare):.3f}", "1.00x"],
            ["wrktalk-agent tui", f"{median(dashboard):.3f}", f"{min(dashboard):.3f}",
             f"{max(dashboard):.3f}", f"{ratio:.2f}x ({verdict} ≤ {BARE_RATIO_GOAL}x)"],
        ],
    )
    # fmt: on


def rss_mb() -> float:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: the peak is the best available
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def memory_run(settings: AgentSettings, repo: Repository, duration: float) -> list[list[Any]]:
    refreshes = 0

    def count(message: Any) -> None:
        nonlocal refreshes
        if isinstance(message, SnapshotLoaded):
            refreshes += 1

    release = await repo.pool.fetchval("SELECT id FROM release_artifact LIMIT 1")
    app = create_app(settings, refresh_interval=0.01)
    samples: list[list[Any]] = []
    async with app.run_test(size=(120, 40), message_hook=count) as pilot:
        began = time.perf_counter()
        step = max(duration / 10, 1.0)
        next_sample = 0.0
        next_insert = 0.0
        while (elapsed := time.perf_counter() - began) < duration:
            if elapsed >= next_insert:  # exercise NOTIFY too; cancelled, the queue stays short
                task = await repo.create_task("deploy", release)
                await repo.cancel_task(task.id, by="benchmark", via="bench_tui")
                next_insert += 1.0
            if elapsed >= next_sample:
                samples.append([f"{elapsed:.0f}", refreshes, f"{rss_mb():.1f}"])
                next_sample += step
            await pilot.pause(0.05)
        samples.append([f"{time.perf_counter() - began:.0f}", refreshes, f"{rss_mb():.1f}"])
    return samples


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="memory run, seconds")
    parser.add_argument("--repeat", type=int, default=50, help="calls per query")
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--events-per-task", type=int, default=10)
    parser.add_argument("--artifacts", type=int, default=1000)
    parser.add_argument("--artifact-kb", type=int, default=1024)
    parser.add_argument("--paints", type=int, default=5, help="first-paint runs")
    parser.add_argument("--only-paint", action="store_true", help="only the first-paint tables")
    args = parser.parse_args()

    with server_url() as url:
        db_url = await fresh_database(url)
        try:
            began = time.perf_counter()
            await seed(
                db_url,
                tasks=args.tasks,
                events_per_task=args.events_per_task,
                artifacts=args.artifacts,
                kb=args.artifact_kb,
            )
            print(
                f"seeded {args.tasks} tasks, {args.tasks * args.events_per_task} events, "
                f"{args.artifacts} artifacts of {args.artifact_kb} kB "
                f"in {time.perf_counter() - began:.0f} s\n"
            )
            settings = AgentSettings(database_url=db_url, stale_after=180.0)  # type: ignore[arg-type]
            repo = await Repository.connect(settings)
            try:
                await report(settings, repo, args)
            finally:
                await repo.close()
        finally:
            await drop_database(url, db_url)


def compile_bytecode() -> None:
    """The agent's modules with their bytecode, as pip leaves them when it installs the
    package (and the image has them). A checkout installed editable under
    PYTHONDONTWRITEBYTECODE=1 (this machine's environment) keeps none, so every start
    would compile them from source — about 50 ms that no installed agent pays, while the
    bare app's libraries come with theirs."""
    import compileall

    import wrktalk_agent

    if not compileall.compile_dir(Path(wrktalk_agent.__file__).parent, quiet=1):
        raise RuntimeError("compileall failed for the wrktalk_agent package")


async def report(settings: AgentSettings, repo: Repository, args: argparse.Namespace) -> None:
    compile_bytecode()
    before = machine_load()
    dashboard, bare = await paint_side_by_side(settings.dsn(), args.paints)
    when = f"{before}; after: {machine_load()}"
    title = "new headless process → rows on screen"
    print(paint_table(title, args.tasks, args.paints, dashboard, bare, when) + "\n")
    before = machine_load()
    in_tmux = await tmux_side_by_side(settings.dsn(), args.paints)
    if in_tmux is not None:
        when = f"{before}; after: {machine_load()}"
        title = "the command in a 120x40 tmux window → rows on screen"
        print(paint_table(title, args.tasks, args.paints, *in_tmux, when) + "\n")
    paints = [await first_paint(settings) for _ in range(args.paints)]
    print(
        table(
            f"First paint (headless app start → tasks table filled), {args.paints} runs",
            ["median s", "max s", f"goal ≤ {FIRST_PAINT_GOAL} s"],
            [
                [
                    f"{median(paints):.3f}",
                    f"{max(paints):.3f}",
                    "yes" if max(paints) <= FIRST_PAINT_GOAL else "NO",
                ]
            ],
        )
        + "\n"
    )

    if args.only_paint:
        return
    rows = await time_queries(repo, args.repeat)
    print(
        table(
            f"Refresh and detail queries through the Repository, {args.repeat} calls each "
            "(client-side ms; server ms = EXPLAIN ANALYZE of the generic plan)",
            [
                "query",
                "median",
                "p95",
                "server",
                f"p95 ≤ {QUERY_GOAL_MS:.0f}",
                "custom plan",
                "generic plan",
            ],
            rows,
        )
        + "\n"
    )

    samples = await memory_run(settings, repo, args.duration)
    first, warm, last = float(samples[0][2]), float(samples[1][2]), float(samples[-1][2])
    print(
        table(
            f"Memory over {args.duration:.0f} s of back-to-back refreshes (one task created and "
            "cancelled per second)",
            ["elapsed s", "refreshes", "RSS MB"],
            samples,
        )
    )
    print(
        f"RSS after warm-up {warm:.1f} MB → end {last:.1f} MB "
        f"({last - warm:+.1f} MB over {int(samples[-1][1]) - int(samples[1][1])} refreshes; "
        f"start {first:.1f} MB)"
    )


if __name__ == "__main__":
    asyncio.run(main())
