"""Artifact fetch + verify: the agent's streaming read against psql COPY and a server scan.

    python benchmarks/bench_artifacts.py [--sizes 256,1000] [--chunks 1,4,16]

For each size (MB) a random artifact is stored, then read three ways:
* the agent: ``fetch_artifact`` in a fresh child process (slices through one cursor,
  sha256 while writing a file), for several slice sizes; its peak RSS growth is measured;
* ``psql -c "COPY (SELECT artifact_data ...) TO STDOUT (FORMAT binary)" > file``;
* ``SELECT sha256(artifact_data)`` on the server (no transfer at all).
Goals (issue 4): ≥ 1.2 x psql COPY, ≥ 0.8 x the server scan, RSS growth ≤ 64 MB.
PostgreSQL caps a BYTEA at 1 GB, so "1 GB" is 1000 MB here.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).parent))
from _support import drop_database, fresh_database, server_url, table

CHILD = r"""
import asyncio, contextlib, json, sys, tempfile, time
from pathlib import Path
from uuid import UUID
import asyncpg
from wrktalk_agent.artifacts import fetch_artifact
from wrktalk_agent.db.repository import Repository
from wrktalk_agent.db.models import ArtifactInfo

def vm(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])

class _OneConnection:
    # the repository's artifact reader over this one connection (no pool, no settings)

    def __init__(self, conn):
        self.pool = self
        self._conn = conn

    def acquire(self):
        return contextlib.nullcontext(self._conn)

    def artifact_chunks(self, *args):
        return Repository.artifact_chunks(self, *args)


async def main(dsn, artifact_id, chunk):
    conn = await asyncpg.connect(dsn)
    row = await conn.fetchrow(
        "SELECT id, release_version, chart_type, sha256, octet_length(artifact_data) AS size"
        " FROM release_artifact WHERE id = $1", UUID(artifact_id))
    info = ArtifactInfo.model_validate(dict(row))
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to now
    before = vm("VmHWM")
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        fetched = await fetch_artifact(
            _OneConnection(conn), info, Path(out), max_bytes=2**31, chunk_bytes=chunk
        )
        seconds = time.perf_counter() - started
    peak = vm("VmHWM")
    await conn.close()
    print(json.dumps({"seconds": seconds, "rss_growth_kb": peak - before, "bytes": fetched.size}))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def psql_dsn(url: str) -> list[str]:
    return ["psql", "-X", "-q", "-d", url]


async def store(db_url: str, megabytes: int) -> tuple[str, str]:
    data = os.urandom(megabytes * 1_000_000)
    digest = hashlib.sha256(data).hexdigest()
    conn = await asyncpg.connect(db_url)
    try:
        artifact_id = await conn.fetchval(
            "INSERT INTO release_artifact (release_version, chart_type, artifact_data, sha256)"
            " VALUES ($1, 'compose', $2, $3) RETURNING id",
            f"bench-{megabytes}",
            data,
            digest,
        )
    finally:
        await conn.close()
    return str(artifact_id), digest


def agent_fetch(db_url: str, artifact_id: str, chunk_mb: float) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, db_url, artifact_id, str(int(chunk_mb * 1024 * 1024))],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def psql_copy(db_url: str, artifact_id: str) -> float:
    query = (
        "COPY (SELECT artifact_data FROM release_artifact "
        f"WHERE id = '{artifact_id}') TO STDOUT (FORMAT binary)"
    )
    with tempfile.NamedTemporaryFile() as out:
        started = time.perf_counter()
        subprocess.run([*psql_dsn(db_url), "-c", query], stdout=out, check=True)
        return time.perf_counter() - started


async def server_scan(db_url: str, artifact_id: str, digest: str) -> float:
    conn = await asyncpg.connect(db_url)
    try:
        started = time.perf_counter()
        value = await conn.fetchval(
            "SELECT encode(sha256(artifact_data), 'hex') FROM release_artifact WHERE id = $1",
            __import__("uuid").UUID(artifact_id),
        )
        seconds = time.perf_counter() - started
    finally:
        await conn.close()
    assert value == digest
    return seconds


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="256,1000", help="artifact sizes in MB")
    parser.add_argument("--chunks", default="0.25,1,4,16", help="slice sizes to try, in MiB")
    args = parser.parse_args()
    if shutil.which("psql") is None:
        sys.exit("psql is needed for the comparison (apt-get install postgresql-client)")
    sizes = [int(s) for s in args.sizes.split(",")]
    chunks = [float(c) for c in args.chunks.split(",")]
    rows = []
    with server_url() as url:
        db_url = await fresh_database(url)
        try:
            for megabytes in sizes:
                artifact_id, digest = await store(db_url, megabytes)
                psql_copy(db_url, artifact_id)  # warm the cache the same way for everyone
                copy_s = min(psql_copy(db_url, artifact_id) for _ in range(3))
                scan_s = min([await server_scan(db_url, artifact_id, digest) for _ in range(3)])
                for chunk in chunks:
                    runs = [agent_fetch(db_url, artifact_id, chunk) for _ in range(3)]
                    best = min(runs, key=lambda r: r["seconds"])
                    agent_s = best["seconds"]
                    rows.append(
                        [
                            f"{megabytes} MB",
                            f"{chunk:g} MiB",
                            f"{megabytes / agent_s:.0f}",
                            f"{megabytes / copy_s:.0f}",
                            f"{megabytes / scan_s:.0f}",
                            f"{copy_s / agent_s:.2f}",
                            f"{scan_s / agent_s:.2f}",
                            f"{max(r['rss_growth_kb'] for r in runs) / 1024:.1f}",
                        ]
                    )
                    print(rows[-1], flush=True)
                conn = await asyncpg.connect(db_url)
                await conn.execute("DELETE FROM release_artifact")
                await conn.close()
        finally:
            await drop_database(url, db_url)
    header = [
        "artifact",
        "slice",
        "agent MB/s",
        "psql COPY MB/s",
        "server sha256 MB/s",
        "x COPY (≥1.2)",
        "x scan (≥0.8)",
        "RSS growth MB (≤64)",
    ]
    print(table("artifact fetch + verify (best of 3)", header, rows))


if __name__ == "__main__":
    asyncio.run(main())
