"""The agent's small HTTP endpoint: ``/healthz``, ``/readyz`` and Prometheus ``/metrics``.

It runs on the agent's own event loop (aiohttp), on purpose: ``ready_check`` uses the
agent's asyncpg pool, which belongs to that loop, and a loop blocked by a bug also stops
answering ``/healthz``, which is exactly what a liveness probe should notice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from wrktalk_agent import metrics

__all__ = ["HealthState", "HttpServer", "start_http_server"]

ReadyCheck = Callable[[], Awaitable[bool]]


@dataclass
class HealthState:
    """Liveness of the main loop, shared between the loop and the endpoint.

    The loop calls :meth:`tick` on every iteration and while it waits (between polls,
    while a task runs, while it retries an unreachable database): "stuck" means the
    loop stopped making progress, not that the database or a deploy is slow. A
    restart fixes the former, never the latter.
    """

    #: seconds without a tick after which ``/healthz`` answers 503
    loop_stuck_after: float = 180.0
    #: wall-clock start, for the uptime shown to humans
    started_at: float = field(default_factory=time.time)
    #: ``time.monotonic()`` of the last tick: immune to clock jumps
    last_loop_tick: float = field(default_factory=time.monotonic)

    def tick(self) -> None:
        self.last_loop_tick = time.monotonic()

    def seconds_since_tick(self) -> float:
        return time.monotonic() - self.last_loop_tick

    def healthy(self) -> bool:
        return self.seconds_since_tick() <= self.loop_stuck_after

    def describe(self) -> dict[str, Any]:
        """The ``/healthz`` body; ``status`` is ``ok`` or ``stuck`` (then with a reason)."""
        since = self.seconds_since_tick()
        healthy = since <= self.loop_stuck_after  # one reading: body and status agree
        body: dict[str, Any] = {
            "status": "ok" if healthy else "stuck",
            "uptime_seconds": round(time.time() - self.started_at, 1),
            "seconds_since_loop_tick": round(since, 1),
            "loop_stuck_after": self.loop_stuck_after,
        }
        if not healthy:
            body["reason"] = (
                f"main loop has not ticked for {since:.0f}s (limit {self.loop_stuck_after:.0f}s)"
            )
        return body


@dataclass
class HttpServer:
    """A running endpoint; ``port`` is the bound port (useful when asked for port 0)."""

    host: str
    port: int
    _runner: web.AppRunner

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        await self._runner.cleanup()

    async def __aenter__(self) -> HttpServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def build_app(
    state: HealthState,
    ready_check: ReadyCheck,
    *,
    ready_timeout: float = 5.0,
    registry: CollectorRegistry = metrics.REGISTRY,
) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        body = state.describe()
        return web.json_response(body, status=200 if body["status"] == "ok" else 503)

    async def readyz(request: web.Request) -> web.Response:
        # Our own timeout too: a probe must get an answer before kubelet gives up on it.
        try:
            async with asyncio.timeout(ready_timeout):
                ready = await ready_check()
        except TimeoutError:
            reason = f"readiness check timed out after {ready_timeout:g}s"
        except Exception as exc:  # any failure of the check means "not ready", never a 500
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        else:
            if ready:
                return web.json_response({"status": "ready"})
            reason = "database not reachable"
        return web.json_response({"status": "not ready", "reason": reason}, status=503)

    async def metrics_view(request: web.Request) -> web.Response:
        # Prometheus text or OpenMetrics, whichever the scraper asks for.
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(registry), headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    return app


async def start_http_server(
    host: str,
    port: int,
    state: HealthState,
    ready_check: ReadyCheck,
    *,
    ready_timeout: float = 5.0,
    registry: CollectorRegistry = metrics.REGISTRY,
) -> HttpServer:
    """Serve the endpoint on ``host:port`` (``port=0``: any free port) until ``close()``."""
    app = build_app(state, ready_check, ready_timeout=ready_timeout, registry=registry)
    # No access log: probes every few seconds would drown the agent's own lines.
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    return HttpServer(host=bound_host, port=bound_port, _runner=runner)
