"""Real PostgreSQL 15 primaries, streaming replicas and PgBouncer for the HA tests.

Everything runs on loopback with ports picked at start and data in private temp dirs;
the servers run as ``postgres`` when the tests run as root (initdb refuses root). The
helpers are shared with ``tests/test_ha.py`` and ``benchmarks/bench_failover.py``; the
tests here check the harness itself: a replica that streams and can be promoted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from wrktalk_agent.testing import free_port

PG_BIN = Path(os.environ.get("WRKTALK_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"

needs_pg_bin = pytest.mark.skipif(
    not (PG_BIN / "initdb").exists(), reason=f"PostgreSQL binaries not found in {PG_BIN}"
)
needs_pgbouncer = pytest.mark.skipif(
    not Path(PGBOUNCER).exists(), reason="pgbouncer not installed (Debian package pgbouncer)"
)


def _as_server_user(argv: list[str]) -> list[str]:
    """initdb and pgbouncer refuse to run as root: drop to ``postgres`` when we are root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


def _private_dir(prefix: str) -> Path:
    """A temp dir the server user owns (pytest's tmp_path is root-only when run as root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(path, user.pw_uid, user.pw_gid)
    return path


def _run(argv: list[str], timeout: float = 120) -> None:
    done = subprocess.run(
        _as_server_user(argv), capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr or done.stdout}")


@dataclass
class PgNode:
    """One PostgreSQL server: a data dir, a TCP port on 127.0.0.1 and a socket dir."""

    name: str
    root: Path
    port: int = field(default_factory=free_port)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "wrktalk") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _options(self) -> str:
        # node-specific settings on the command line: a base backup copies the conf files
        return f"-c port={self.port} -c unix_socket_directories={self.root}"

    def start(self) -> None:
        _run(
            [
                str(PG_BIN / "pg_ctl"),
                "-D", str(self.data),
                "-l", str(self.log),
                "-o", self._options(),
                "-w", "-t", "60",
                "start",
            ]
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        _run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])

    def promote(self) -> None:
        _run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "promote"])

    def running(self) -> bool:
        done = subprocess.run(
            _as_server_user([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "status"]),
            capture_output=True,
            check=False,
        )
        return done.returncode == 0

    def destroy(self) -> None:
        if self.data.exists() and self.running():
            with contextlib.suppress(Exception):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def init_primary(name: str = "primary") -> PgNode:
    node = PgNode(name, _private_dir(f"wrktalk-ha-{name}-"))
    _run([str(PG_BIN / "initdb"), "-D", str(node.data), "-U", "postgres", "--auth=trust",
          "-E", "UTF8", "--no-sync"])  # fmt: skip
    with open(node.data / "postgresql.conf", "a") as conf:
        conf.write(
            "\n# wrktalk HA tests\n"
            "listen_addresses = '127.0.0.1'\n"
            "wal_level = replica\n"
            "max_wal_senders = 10\n"
            "hot_standby = on\n"
            "wal_keep_size = '64MB'\n"
            "fsync = off\n"
            "full_page_writes = off\n"
            "max_connections = 100\n"
        )
    node.start()
    return node


def add_replica(primary: PgNode, name: str = "replica") -> PgNode:
    """A streaming replica of ``primary`` (pg_basebackup -R), started."""
    node = PgNode(name, _private_dir(f"wrktalk-ha-{name}-"))
    _run([str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary.port),
          "-U", "postgres", "-D", str(node.data), "-R", "-X", "stream", "-c", "fast",
          "--no-sync"])  # fmt: skip
    node.start()
    return node


async def create_wrktalk_database(node: PgNode) -> None:
    """Create the ``wrktalk`` database with the agent's schema on a primary."""
    from wrktalk_agent.db.schema import init_schema

    admin = await asyncpg.connect(node.url("postgres"))
    try:
        await admin.execute("CREATE DATABASE wrktalk")
    finally:
        await admin.close()
    conn = await asyncpg.connect(node.url())
    try:
        await init_schema(conn)
    finally:
        await conn.close()


async def wait_replayed(primary: PgNode, replica: PgNode, timeout: float = 30) -> None:
    """Until the replica has replayed everything the primary has written so far."""
    conn = await asyncpg.connect(primary.url("postgres"))
    try:
        target = await conn.fetchval("SELECT pg_current_wal_lsn()")
    finally:
        await conn.close()
    standby = await asyncpg.connect(replica.url("postgres"))
    try:
        deadline = time.monotonic() + timeout
        while True:
            replayed = await standby.fetchval(
                "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", target
            )
            if replayed:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"replica did not replay up to {target} in {timeout}s")
            await asyncio.sleep(0.05)
    finally:
        await standby.close()


async def in_recovery(node: PgNode) -> bool:
    conn = await asyncpg.connect(node.url("postgres"))
    try:
        return bool(await conn.fetchval("SELECT pg_is_in_recovery()"))
    finally:
        await conn.close()


@dataclass
class PgBouncer:
    """PgBouncer in transaction pooling mode in front of one server. It reaches the server
    over its unix socket, so its server connections show ``client_addr IS NULL`` in
    pg_stat_activity while direct TCP connections show 127.0.0.1."""

    server: PgNode
    root: Path = field(default_factory=lambda: _private_dir("wrktalk-ha-pgbouncer-"))
    port: int = field(default_factory=free_port)
    pool_size: int = 2
    process: subprocess.Popen[bytes] | None = None

    def url(self, database: str = "wrktalk") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        (self.root / "users.txt").write_text('"postgres" ""\n')
        config = self.root / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"wrktalk = host={self.server.root} port={self.server.port} dbname=wrktalk\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.root / 'users.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 500\n"
            f"logfile = {self.root / 'pgbouncer.log'}\n"
            "admin_users = postgres\n"
        )
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            for path in (config, self.root / "users.txt"):
                os.chown(path, user.pw_uid, user.pw_gid)
        self.process = subprocess.Popen(
            _as_server_user([PGBOUNCER, str(config)]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket_to(self.port):
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.root / "pgbouncer.log").read_text(errors="replace")
                raise RuntimeError(f"pgbouncer did not start: {log[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def socket_to(port: int) -> Iterator[None]:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=1):
        yield


def pgbouncer_version() -> str:
    done = subprocess.run([PGBOUNCER, "--version"], capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).splitlines()[0] if done.returncode == 0 else "unknown"


@contextlib.contextmanager
def primary_and_replica() -> Iterator[tuple[PgNode, PgNode]]:
    """A primary with the wrktalk schema and a streaming replica of it."""
    primary = init_primary()
    replica = None
    try:
        asyncio.run(create_wrktalk_database(primary))
        replica = add_replica(primary)
        asyncio.run(wait_replayed(primary, replica))
        yield primary, replica
    finally:
        if replica is not None:
            replica.destroy()
        primary.destroy()


# -- tests of the harness ------------------------------------------------------------------
@needs_pg_bin
def test_the_replica_streams_and_becomes_writable_once_promoted() -> None:
    with primary_and_replica() as (primary, replica):
        assert asyncio.run(in_recovery(replica))
        primary.stop()
        replica.promote()
        assert not asyncio.run(in_recovery(replica))

        async def write() -> int:
            conn = await asyncpg.connect(replica.url())
            try:
                return int(await conn.fetchval("SELECT count(*) FROM agent_task"))
            finally:
                await conn.close()

        assert asyncio.run(write()) == 0  # the schema came over by replication
