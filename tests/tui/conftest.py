"""A seeded dashboard database with fixed times, and helpers to drive the app."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlsplit

import asyncpg
import pytest
from textual.pilot import Pilot

from wrktalk_agent.config import AgentSettings
from wrktalk_agent.tui import create_app
from wrktalk_agent.tui.app import DashboardApp

#: The dashboard's clock in every test: snapshots must not depend on when they are taken.
NOW = datetime(2025, 3, 14, 2, 30, tzinfo=UTC)
SECRET = "hunter2-very-secret"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@dataclass(frozen=True)
class Seed:
    r110: uuid.UUID
    r120: uuid.UUID  # previous
    r130: uuid.UUID  # current
    r140: uuid.UUID  # newest, not applied
    deployed_120: uuid.UUID
    deployed_130: uuid.UUID
    failed_140: uuid.UUID
    running_140: uuid.UUID
    pending_rollback: uuid.UUID
    abandoned_rollback: uuid.UUID


def _id(n: int) -> uuid.UUID:
    return uuid.UUID(f"{n:08x}-0000-4000-8000-{n:012d}")


async def seed_dashboard(url: str) -> Seed:
    """Four releases, six tasks (one running, one pending, two failed), two agents (one
    stale) and maintenance on — with secrets planted where the dashboard must not show them."""
    seed = Seed(*(_id(n) for n in range(1, 11)))
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute(
                """INSERT INTO deployment_config (smtp_host, smtp_password,
                       maintenance_mode_enabled, last_agent_poll)
                   VALUES ('smtp.example.com', $1, true, $2)""",
                SECRET,
                at("2025-03-14T02:28:00"),
            )
            releases = [
                (seed.r110, "1.1.0", "2025-01-20T09:00", "2025-01-21T10:00", False, False, None),
                (seed.r120, "1.2.0", "2025-02-25T10:00", "2025-03-01T10:02", False, True, None),
                (seed.r130, "1.3.0", "2025-03-09T16:00", "2025-03-10T10:02", True, False, "c2ln"),
                (seed.r140, "1.4.0", "2025-03-13T18:00", None, False, False, "c2lnMg"),
            ]
            for n, (rid, version, created, applied, current, previous, signature) in enumerate(
                releases
            ):
                data = version.encode() * (8_000 + 2_000 * n)
                await conn.execute(
                    """INSERT INTO release_artifact (id, release_version, chart_type, artifact_data,
                           env_data, values_data, sha256, is_current, is_previous, applied_at,
                           created_at, signature)
                       VALUES ($1, $2, 'compose', $3, $4, $5, $6, $7, $8, $9, $10, $11)""",
                    rid,
                    version,
                    data,
                    f"DB_PASSWORD={SECRET}\n",
                    f"password: {SECRET}\n",
                    (version.replace(".", "") * 64)[:64],
                    current,
                    previous,
                    at(applied) if applied else None,
                    at(created),
                    signature,
                )
            # the shape pipeline/outcome.py writes, with secrets planted where plugins
            # might leak them
            failed_result = {
                "steps": [{"step": "deploy", "ok": False, "seconds": 131.2}],
                "release": {"version": "1.4.0", "from": "1.3.0"},
                "deployer": {
                    "output": "\n".join(
                        [f"step {i}: pulling layer" for i in range(1, 46)]
                        + [f"api  | connecting to postgres://wrktalk:{SECRET}@db:5432/wrktalk",
                           f"api  | SMTP_PASSWORD={SECRET}",
                           "api  | healthcheck failed: 503"]
                    ),
                    "details": {"api_token": SECRET, "exit_code": 1},
                },
                "outcome": "failed",
                "notifications": {"smtp": [{"recipient": "ops@example.com", "ok": True}]},
                "smtp_password": SECRET,
            }  # fmt: skip
            tasks = [
                # id, type, status, release, created, execute_after, picked, completed,
                # heartbeat, agent, error, result
                (seed.deployed_120, "deploy", "completed", seed.r120, "2025-03-01T10:00:00",
                 None, "2025-03-01T10:00:05", "2025-03-01T10:02:10", "2025-03-01T10:02:00",
                 "agent-a", None, {"output": "done"}),
                (seed.deployed_130, "deploy", "completed", seed.r130, "2025-03-10T10:00:00",
                 None, "2025-03-10T10:00:02", "2025-03-10T10:02:30", "2025-03-10T10:02:00",
                 "agent-a", None, None),
                (seed.failed_140, "deploy", "failed", seed.r140, "2025-03-13T18:05:00",
                 None, "2025-03-13T18:05:03", "2025-03-13T18:09:40", "2025-03-13T18:09:30",
                 "agent-a", "docker compose up failed: service api unhealthy after 120s\n"
                 "(rolled back to 1.3.0)", failed_result),
                (seed.running_140, "deploy", "inProgress", seed.r140, "2025-03-14T02:27:50",
                 None, "2025-03-14T02:28:00", None, "2025-03-14T02:29:50", "agent-a", None, None),
                (seed.pending_rollback, "rollback", "pending", seed.r120, "2025-03-14T02:29:00",
                 "2025-03-14T03:00:00", None, None, None, None, None, None),
                (seed.abandoned_rollback, "rollback", "failed", seed.r110, "2025-02-10T02:50:00",
                 None, "2025-02-10T02:50:01", "2025-02-10T03:05:00", "2025-02-10T03:00:00",
                 "agent-b", "abandoned: agent agent-b stopped heartbeating at "
                 "2025-02-10T03:00:00Z", None),
            ]  # fmt: skip
            for (tid, kind, status, rid, created, due, picked, completed, beat, agent,
                 error, result) in tasks:  # fmt: skip
                await conn.execute(
                    """INSERT INTO agent_task (id, type, status, release_artifact_id, created_at,
                           execute_after, picked_up_at, completed_at, last_heartbeat, claimed_by,
                           error_message, result)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::jsonb)""",
                    tid,
                    kind,
                    status,
                    rid,
                    at(created),
                    at(due) if due else None,
                    at(picked) if picked else None,
                    at(completed) if completed else None,
                    at(beat) if beat else None,
                    agent,
                    error,
                    json.dumps(result) if result is not None else None,
                )
            events = [
                (seed.failed_140, "2025-03-13T18:05:03", "claim", "info", "claimed by agent-a"),
                (seed.failed_140, "2025-03-13T18:05:04", "download", "started", ""),
                (seed.failed_140, "2025-03-13T18:05:06", "download", "succeeded", "40 kB"),
                (seed.failed_140, "2025-03-13T18:05:06", "verify", "started", ""),
                (seed.failed_140, "2025-03-13T18:05:07", "verify", "succeeded", "sha256 ok"),
                (seed.failed_140, "2025-03-13T18:05:08", "maintenance_on", "succeeded", "nginx"),
                (seed.failed_140, "2025-03-13T18:05:09", "deploy", "started", "docker compose up"),
                (seed.failed_140, "2025-03-13T18:07:20", "deploy", "failed", "api unhealthy"),
                (seed.failed_140, "2025-03-13T18:07:21", "auto_rollback", "started", "to 1.3.0"),
                (seed.failed_140, "2025-03-13T18:09:30", "auto_rollback", "succeeded", ""),
                (seed.failed_140, "2025-03-13T18:09:35", "maintenance_off", "succeeded", ""),
                (seed.failed_140, "2025-03-13T18:09:39", "notify", "succeeded", "1 of 1 sent"),
                (seed.running_140, "2025-03-14T02:28:00", "claim", "info", "claimed by agent-a"),
                (seed.running_140, "2025-03-14T02:28:01", "download", "started", ""),
                (seed.running_140, "2025-03-14T02:28:03", "download", "succeeded", "40 kB"),
                (seed.running_140, "2025-03-14T02:28:05", "maintenance_on", "succeeded", "nginx"),
                (seed.running_140, "2025-03-14T02:28:06", "deploy", "started", "docker compose up"),
            ]
            for tid, created, step, status, message in events:
                await conn.execute(
                    """INSERT INTO agent_task_event (task_id, created_at, step, status, message,
                           agent_id) VALUES ($1, $2, $3, $4, $5, 'agent-a')""",
                    tid,
                    at(created),
                    step,
                    status,
                    message,
                )
            await conn.execute(
                """INSERT INTO agent_instance (agent_id, hostname, pid, version, started_at,
                       last_poll, current_task_id) VALUES
                   ('agent-a', 'wrk-node-1', 1, '0.1.0', $1, $2, $3),
                   ('agent-b', 'wrk-node-2', 1, '0.1.0', $1, $4, NULL)""",
                at("2025-03-13T12:00:00"),
                at("2025-03-14T02:28:00"),
                seed.running_140,
                at("2025-03-14T01:12:00"),
            )
    finally:
        await conn.close()
    return seed


@pytest.fixture
def seeded(database_url: str) -> Seed:
    return asyncio.run(seed_dashboard(database_url))


@pytest.fixture
def dashboard_settings(agent_settings: AgentSettings) -> AgentSettings:
    return agent_settings.model_copy(
        update={"stale_after": 180.0, "installation_name": "Acme WrkTalk"}
    )


@pytest.fixture
def make_app(dashboard_settings: AgentSettings) -> Callable[..., DashboardApp]:
    """The app on the test database with the frozen clock; keyword arguments go to
    :func:`create_app` (e.g. ``read_only=True``, ``refresh_interval=0.2``)."""

    def make(**kwargs: object) -> DashboardApp:
        kwargs.setdefault("clock", lambda: NOW)
        kwargs.setdefault("refresh_interval", 60.0)  # live updates come from NOTIFY
        return create_app(dashboard_settings, **kwargs)  # type: ignore[arg-type]

    return make


Waiter = Callable[[Pilot[None], Callable[[], object], str], Awaitable[None]]


async def _wait_for(
    pilot: Pilot[None], condition: Callable[[], object], what: str, timeout: float = 10.0
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await pilot.pause(0.02)


@pytest.fixture
def wait_for() -> Waiter:
    """``await wait_for(pilot, condition, "what")``: poll the UI until ``condition()``."""
    return _wait_for


def loaded(app: DashboardApp) -> Callable[[], bool]:
    """The first refresh has been shown and the LISTEN connection is up."""
    return lambda: app.main.snapshot is not None and app.main.listener_error is None


@pytest.fixture
def is_loaded() -> Callable[[DashboardApp], Callable[[], bool]]:
    return loaded


def later(minutes: float) -> datetime:
    return NOW + timedelta(minutes=minutes)


class DatabaseProxy:
    """A TCP relay in front of the test database that a test can cut and restore: a
    network outage on any server (the embedded one listens on a unix socket only)."""

    def __init__(self, database_url: str) -> None:
        parts = urlsplit(database_url)
        query = dict(parse_qsl(parts.query))
        host = query.get("host", parts.hostname or "localhost")
        port = parts.port or int(query.get("port", 5432))
        self._upstream: tuple[str | None, str, int] = (
            (f"{host}/.s.PGSQL.{port}", "", 0) if host.startswith("/") else (None, host, port)
        )
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.url = ""
        self._userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        self._path = parts.path

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"postgresql://{self._userinfo}127.0.0.1:{self.port}{self._path}"

    async def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()
        self._server = None

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        path, host, port = self._upstream
        if path is not None:
            up_reader, up_writer = await asyncio.open_unix_connection(path)
        else:
            up_reader, up_writer = await asyncio.open_connection(host, port)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.transport.abort()
                self._writers.discard(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.fixture
async def db_proxy(database_url: str) -> AsyncIterator[DatabaseProxy]:
    proxy = DatabaseProxy(database_url)
    await proxy.start()
    yield proxy
    if proxy._server is not None:
        await proxy.cut()


async def add_cockpit_state(url: str, seed: Seed) -> None:
    """What the 3 a.m. views need besides the seed: live output of the running deploy, an
    operator's maintenance window, a cleanly stopped agent, and a recovered task that left
    the live version half-applied (the latest finished task)."""
    conn = await asyncpg.connect(url)
    try:
        for n in range(1, 13):
            await conn.execute(
                """INSERT INTO agent_task_event (task_id, created_at, step, status, message,
                       agent_id) VALUES ($1, $2, 'deploy', 'info', $3, 'agent-a')""",
                seed.running_140,
                at("2025-03-14T02:28:06") + timedelta(seconds=5 * n),
                f"│ api  | migration {n} of 12 applied",
            )
        await conn.execute(
            """UPDATE deployment_config SET maintenance_owner = 'operator:ann@wrk-node-1',
                   maintenance_reason = 'db migration', maintenance_since = $1""",
            at("2025-03-14T02:10:00"),
        )
        await conn.execute(
            "UPDATE agent_instance SET stopped_at = $1 WHERE agent_id = 'agent-b'",
            at("2025-03-14T01:12:00"),
        )
        result = {
            "outcome": "failed",
            "abandoned": "agent agent-a stopped heartbeating",
            "live": {"version": "1.4.0", "state": "half-applied", "detail": "api 1.4.0, web 1.3.0"},
            "next_step": "deploy 1.4.0 again or roll back to 1.3.0",
        }
        await conn.execute(
            "UPDATE agent_task SET result = $2::jsonb WHERE id = $1",
            seed.failed_140,
            json.dumps(result),
        )
    finally:
        await conn.close()


@pytest.fixture
def cockpit(seeded: Seed, database_url: str) -> Seed:
    asyncio.run(add_cockpit_state(database_url, seeded))
    return seeded
