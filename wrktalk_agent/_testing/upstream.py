"""For plugins that front an HTTP service (nginx, haproxy): an upstream to put behind the
proxy, a client, a free port, and a context to build a backend without a database
(public as :mod:`wrktalk_agent.testing`)."""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from wrktalk_agent.interfaces import PluginContext, Recipient, SmtpConfig

#: What the test upstream answers on every path, so a test can tell it from a 503 page.
UPSTREAM_BODY = "hello from the upstream"


@dataclass(frozen=True)
class HttpResponse:
    """A response read by :func:`http_request`; header names are lower-cased."""

    status: int
    headers: dict[str, str]  # lower-cased names
    body: str


def http_request(
    base_url: str,
    path: str = "/",
    *,
    method: str = "GET",
    body: bytes | None = None,
    source_address: str | None = None,
) -> HttpResponse:
    """One HTTP request to ``base_url``; ``source_address`` picks the client's loopback IP."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(
        host,
        int(port),
        timeout=10,
        source_address=(source_address, 0) if source_address else None,
    )
    try:
        conn.request(method, path, body=body)
        response = conn.getresponse()
        return HttpResponse(
            status=response.status,
            headers={k.lower(): v for k, v in response.getheaders()},
            body=response.read().decode("utf-8", errors="replace"),
        )
    finally:
        conn.close()


class _UpstreamHandler(BaseHTTPRequestHandler):
    """Answers every request with 200 :data:`UPSTREAM_BODY`."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        payload = UPSTREAM_BODY.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_HEAD = _answer

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass


@contextlib.contextmanager
def upstream_server() -> Iterator[str]:
    """An HTTP server on 127.0.0.1 answering 200 :data:`UPSTREAM_BODY`; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _UpstreamHandler)
    # A short poll interval: shutdown() waits for it, once per test.
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="test-upstream", daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _EmptyDirectory:
    """A plugin directory with no admins and the default SMTP settings."""

    async def active_admins(self) -> list[Recipient]:
        return []

    async def smtp_config(self) -> SmtpConfig:
        return SmtpConfig()


def plugin_context(work_dir: Path, agent_id: str = "test-agent") -> PluginContext:
    """A context for constructing a backend directly, without a database."""
    return PluginContext(
        agent_id=agent_id, installation="test", work_dir=work_dir, directory=_EmptyDirectory()
    )
