"""A Patroni switchover during a deploy, with a local etcd: the same promise as the plain
promote test in ``test_ha.py`` under the HA manager customers run.

Needs ``etcd`` (Debian ``etcd-server``) and ``patroni`` with its etcd3 extra (PyPI) on
PATH, or ``WRKTALK_TEST_PATRONI`` naming the patroni executable; skipped otherwise.
``nox -s ha`` installs patroni.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from agent_helpers import Recording, agent_env, blocking_release
from test_ha_servers import PG_BIN, _as_server_user, _private_dir

from wrktalk_agent.config import AgentSettings
from wrktalk_agent.db.repository import Repository
from wrktalk_agent.db.schema import init_schema
from wrktalk_agent.testing import add_release, free_port

PATRONI = os.environ.get("WRKTALK_TEST_PATRONI") or shutil.which("patroni")
ETCD = shutil.which("etcd")

pytestmark = [
    pytest.mark.skipif(
        not (PATRONI and ETCD and (PG_BIN / "initdb").exists()),
        reason="needs patroni (PyPI, etcd3 extra), etcd (Debian etcd-server) and PG 15 binaries",
    ),
    pytest.mark.timeout(300),
]


@dataclass
class Member:
    name: str
    root: Path
    pg_port: int
    api_port: int
    config: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.pg_port}"

    def state(self) -> dict[str, object]:
        url = f"http://127.0.0.1:{self.api_port}/patroni"
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                return dict(json.load(answer))
        except OSError:
            return {}

    def role(self) -> str | None:
        role = self.state().get("role")
        return str(role) if role else None

    def leads(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"patroni {self.name} exited ({self.process.returncode})")
        return self.role() in ("primary", "master")

    def streaming(self) -> bool:
        state = self.state()
        return state.get("role") == "replica" and state.get("replication_state") == "streaming"


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.2)


@contextlib.contextmanager
def patroni_cluster() -> Iterator[tuple[Member, Member]]:
    scope = f"wrktalk-{secrets.token_hex(4)}"
    etcd_dir = Path(_private_dir("wrktalk-etcd-"))
    client, peer = free_port(), free_port()
    etcd = subprocess.Popen(
        [
            str(ETCD), "--name", "e1", "--data-dir", str(etcd_dir / "data"),
            "--listen-client-urls", f"http://127.0.0.1:{client}",
            "--advertise-client-urls", f"http://127.0.0.1:{client}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"e1=http://127.0.0.1:{peer}",
        ],
        stdout=(etcd_dir / "etcd.log").open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    members: list[Member] = []
    try:
        for name in ("n1", "n2"):
            root = _private_dir(f"wrktalk-patroni-{name}-")
            member = Member(name, root, free_port(), free_port(), root / "patroni.yml")
            member.config.write_text(
                json.dumps(  # JSON is YAML
                    {
                        "scope": scope,
                        "name": name,
                        "restapi": {
                            "listen": f"127.0.0.1:{member.api_port}",
                            "connect_address": f"127.0.0.1:{member.api_port}",
                        },
                        "etcd3": {"hosts": [f"127.0.0.1:{client}"]},
                        "bootstrap": {
                            "dcs": {
                                "ttl": 20,
                                "loop_wait": 2,
                                "retry_timeout": 5,
                                "postgresql": {"parameters": {"fsync": "off"}},
                            },
                            "initdb": [{"encoding": "UTF8"}],
                        },
                        "postgresql": {
                            "listen": f"127.0.0.1:{member.pg_port}",
                            "connect_address": f"127.0.0.1:{member.pg_port}",
                            "data_dir": str(root / "data"),
                            "bin_dir": str(PG_BIN),
                            "pgpass": str(root / "pgpass"),
                            "authentication": {
                                "superuser": {"username": "postgres", "password": "x"},
                                "replication": {"username": "postgres", "password": "x"},
                            },
                            "parameters": {"unix_socket_directories": str(root)},
                            "pg_hba": [
                                "local all all trust",
                                "host replication all 127.0.0.1/32 trust",
                                "host all all 127.0.0.1/32 trust",
                            ],
                        },
                    }
                )
            )
            if os.geteuid() == 0:
                shutil.chown(member.config, "postgres", "postgres")
            member.process = subprocess.Popen(
                _as_server_user([str(PATRONI), str(member.config)]),
                stdout=(root / "patroni.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
            members.append(member)
            if name == "n1":
                _wait(lambda m=member: m.leads(), 90, "n1 leads")
        _wait(members[1].streaming, 120, "n2 streams from n1")
        yield members[0], members[1]
    except BaseException:
        for member in members:  # what Patroni said, for the failure report
            log = (member.root / "patroni.log").read_text(errors="replace")
            print(f"--- {member.name} patroni.log ---\n{log[-3000:]}")
        raise
    finally:
        for member in members:
            if member.process is not None and member.process.poll() is None:
                member.process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    member.process.wait(60)
                if member.process.poll() is None:
                    member.process.kill()
            subprocess.run(
                _as_server_user([str(PG_BIN / "pg_ctl"), "-D", str(member.root / "data"),
                                 "-m", "immediate", "stop"]),
                capture_output=True, check=False,
            )  # fmt: skip
            shutil.rmtree(member.root, ignore_errors=True)
        etcd.terminate()
        etcd.wait(30)
        shutil.rmtree(etcd_dir, ignore_errors=True)


async def test_a_patroni_switchover_during_a_deploy_loses_nothing(spawn_agent, tmp_path):
    with patroni_cluster() as (n1, n2):
        import asyncpg

        admin = await asyncpg.connect(f"postgresql://postgres@{n1.hostport}/postgres")
        await admin.execute("CREATE DATABASE wrktalk")
        await admin.close()
        conn = await asyncpg.connect(f"postgresql://postgres@{n1.hostport}/wrktalk")
        await init_schema(conn)
        await conn.close()

        hosts = f"{n1.hostport},{n2.hostport}"
        settings = AgentSettings(
            db_host=hosts, db_name="wrktalk", db_user="postgres", db_ssl_mode="disable",
            work_dir=tmp_path / "work", poll_interval=0.5,
        )  # fmt: skip
        recording = Recording.in_dir(tmp_path)
        repo = await Repository.connect(settings)
        release, started, go = await blocking_release(repo, tmp_path)
        first = await repo.create_task("deploy", release.id)
        env = agent_env(settings, recording, WRKTALK_AGENT_NOTIFIERS="")
        del env["WRKTALK_AGENT_DATABASE_URL"]
        env.update(
            WRKTALK_AGENT_DB_HOST=hosts,
            WRKTALK_AGENT_DB_NAME="wrktalk",
            WRKTALK_AGENT_DB_USER="postgres",
            WRKTALK_AGENT_DB_SSL_MODE="disable",
            WRKTALK_AGENT_HEARTBEAT_INTERVAL="1",
            # above the switchover's few seconds; the new leader's timeline then holds new
            # claims for this lease and its margin (35 s, docs/operator.md: failover)
            WRKTALK_AGENT_STALE_AFTER="30",
        )
        proc = spawn_agent(env)
        await asyncio.to_thread(_wait, started.exists, 60, "deploy start")

        switch = await asyncio.to_thread(
            subprocess.run,
            _as_server_user([str(Path(str(PATRONI)).with_name("patronictl")), "-c",
                             str(n1.config), "switchover", "--primary", "n1",
                             "--candidate", "n2", "--force"]),
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        assert switch.returncode == 0, switch.stdout + switch.stderr
        await asyncio.to_thread(_wait, n2.leads, 90, "n2 leads")
        go.touch()

        async def status(task_id):
            task = await repo.get_task(task_id)
            return task.status if task else None

        deadline = time.monotonic() + 120
        while await _safe(status, first.id) not in ("completed", "failed"):
            assert proc.poll() is None and time.monotonic() < deadline
            await asyncio.sleep(0.2)
        task = await repo.get_task(first.id)
        assert task is not None and task.status == "completed", task
        assert int(await repo.pool.fetchval("SELECT inet_server_port()")) == n2.pg_port
        second = await repo.create_task("deploy", (await add_release(repo, "2.0.0")).id)
        while await _safe(status, second.id) != "completed":
            assert proc.poll() is None and time.monotonic() < deadline
            await asyncio.sleep(0.2)
        await repo.close()
        assert [r["task"] for r in recording.records("start")] == [str(first.id), str(second.id)]


async def _safe(fn, *args):
    """A read that may meet the switchover itself: retried by the caller's loop."""
    from wrktalk_agent.db.repository import CONNECTION_ERRORS

    try:
        return await fn(*args)
    except CONNECTION_ERRORS:
        return None
