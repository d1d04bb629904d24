"""The probe and metrics endpoint, against a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from wrktalk_agent import metrics
from wrktalk_agent.db import DatabaseUnavailable
from wrktalk_agent.http import HealthState, HttpServer, start_http_server


async def _always_ready() -> bool:
    return True


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[HttpServer]]]:
    servers: list[HttpServer] = []

    async def start(
        state: HealthState | None = None,
        ready_check: Callable[[], Awaitable[bool]] = _always_ready,
        **kwargs: float,
    ) -> HttpServer:
        server = await start_http_server(
            "127.0.0.1", 0, state or HealthState(), ready_check, **kwargs
        )
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


async def get(client: aiohttp.ClientSession, url: str, **kwargs: object) -> tuple[int, dict]:
    async with client.get(url, **kwargs) as response:  # type: ignore[arg-type]
        return response.status, await response.json()


async def test_port_zero_binds_a_free_port_and_reports_it(serve, client) -> None:
    first, second = await serve(), await serve()
    assert first.port != 0 and second.port != 0 and first.port != second.port
    assert first.url == f"http://127.0.0.1:{first.port}"
    status, _ = await get(client, first.url + "/healthz")
    assert status == 200


async def test_a_taken_port_is_an_error(serve) -> None:
    server = await serve()
    with pytest.raises(OSError):
        await start_http_server("127.0.0.1", server.port, HealthState(), _always_ready)


async def test_healthz_is_ok_while_the_loop_ticks(serve, client) -> None:
    server = await serve(HealthState(loop_stuck_after=60))
    status, body = await get(client, server.url + "/healthz")
    assert status == 200
    assert body["status"] == "ok"
    assert body["loop_stuck_after"] == 60


async def test_healthz_is_503_when_the_loop_is_stuck_and_recovers_on_tick(serve, client) -> None:
    state = HealthState(loop_stuck_after=10, last_loop_tick=time.monotonic() - 42)
    server = await serve(state)
    status, body = await get(client, server.url + "/healthz")
    assert status == 503
    assert body["status"] == "stuck"
    assert "has not ticked for 42s (limit 10s)" in body["reason"]

    state.tick()
    status, body = await get(client, server.url + "/healthz")
    assert (status, body["status"]) == (200, "ok")


async def test_readyz_ok(serve, client) -> None:
    server = await serve()
    status, body = await get(client, server.url + "/readyz")
    assert (status, body) == (200, {"status": "ready"})


async def test_readyz_503_when_the_check_says_no(serve, client) -> None:
    async def down() -> bool:
        return False

    server = await serve(ready_check=down)
    status, body = await get(client, server.url + "/readyz")
    assert status == 503
    assert body == {"status": "not ready", "reason": "database not reachable"}


async def test_readyz_503_names_the_error_when_the_check_raises(serve, client) -> None:
    async def down() -> bool:
        raise DatabaseUnavailable("cannot reach PostgreSQL at db:5432: ConnectionRefusedError")

    server = await serve(ready_check=down)
    status, body = await get(client, server.url + "/readyz")
    assert status == 503
    assert body["reason"] == (
        "DatabaseUnavailable: cannot reach PostgreSQL at db:5432: ConnectionRefusedError"
    )


async def test_readyz_503_when_the_check_hangs(serve, client) -> None:
    async def hangs() -> bool:
        await asyncio.sleep(30)
        return True

    server = await serve(ready_check=hangs, ready_timeout=0.2)
    started = time.monotonic()
    status, body = await get(client, server.url + "/readyz")
    assert status == 503
    assert body["reason"] == "readiness check timed out after 0.2s"
    assert time.monotonic() - started < 5


async def test_readyz_with_a_real_database(serve, client, repo) -> None:
    async def select_one() -> bool:
        return await repo.pool.fetchval("SELECT 1", timeout=2) == 1

    server = await serve(ready_check=select_one)
    status, _ = await get(client, server.url + "/readyz")
    assert status == 200

    await repo.pool.close()  # the pool is gone: the check raises, the probe says so
    status, body = await get(client, server.url + "/readyz")
    assert status == 503
    assert "closed" in body["reason"].lower()


def _sample(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_metrics_serves_the_agent_registry_and_changes_after_a_task(serve, client) -> None:
    server = await serve()
    labels = '{outcome="completed",type="deploy"}'

    async with client.get(server.url + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        before = await response.text()
    assert "# TYPE wrktalk_agent_tasks_total counter" in before
    assert "wrktalk_agent_task_duration_seconds" in before
    assert "wrktalk_agent_last_successful_poll_timestamp_seconds" in before
    assert "wrktalk_agent_maintenance_mode" in before

    metrics.TASKS.labels(type="deploy", outcome="completed").inc()
    metrics.TASK_SECONDS.labels(type="deploy").observe(12.5)

    async with client.get(server.url + "/metrics") as response:
        after = await response.text()
    name = "wrktalk_agent_tasks_total"
    assert _sample(after, name, labels) == _sample(before, name, labels) + 1
    count = "wrktalk_agent_task_duration_seconds_count"
    assert _sample(after, count, '{type="deploy"}') == _sample(before, count, '{type="deploy"}') + 1


async def test_metrics_speaks_openmetrics_when_asked(serve, client) -> None:
    server = await serve()
    headers = {"Accept": "application/openmetrics-text; version=1.0.0"}
    async with client.get(server.url + "/metrics", headers=headers) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        assert (await response.text()).rstrip().endswith("# EOF")


async def test_unknown_path_is_404(serve, client) -> None:
    server = await serve()
    async with client.get(server.url + "/admin") as response:
        assert response.status == 404


async def test_ended_tasks_by_status_come_from_the_database_cancelled_included(repo) -> None:
    """The same three words as the CLI and the dashboard: a cancelled task is not counted
    as failed, and every agent reports what the database holds."""
    from wrktalk_agent.testing import add_release

    release = await add_release(repo, "1.0.0")
    done, broken, dropped, _waiting = [
        await repo.create_task("deploy", release.id) for _ in range(4)
    ]
    await repo.pool.execute("UPDATE agent_task SET status = 'completed' WHERE id = $1", done.id)
    await repo.pool.execute(
        "UPDATE agent_task SET status = 'failed', error_message = 'boom' WHERE id = $1",
        broken.id,
    )
    assert await repo.cancel_task(dropped.id, by="alice", via="cli") is not None
    await metrics.refresh_from_database(repo)

    def ended(status: str) -> float | None:
        return metrics.REGISTRY.get_sample_value(
            "wrktalk_agent_tasks_ended_last_day", {"status": status}
        )

    assert (ended("completed"), ended("failed"), ended("cancelled")) == (1, 1, 1)
    assert metrics.REGISTRY.get_sample_value("wrktalk_agent_pending_tasks") == 1
