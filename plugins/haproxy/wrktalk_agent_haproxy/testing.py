"""A real HAProxy on loopback for tests, configured with the shipped snippet.

Use the fixture by importing it into a ``conftest.py``::

    from wrktalk_agent_haproxy.testing import haproxy_proxy  # noqa: F401

``haproxy_proxy`` starts, per test, a tiny upstream HTTP server and ``haproxy -db`` in
front of it (backend ``wrktalk`` with servers ``app1`` and ``app2``), with the Runtime API
on a unix socket (level admin), on TCP (level admin) and on a second unix socket at level
operator; everything lives in a tmp dir and is stopped afterwards. Tests are skipped when
no haproxy binary is installed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from wrktalk_agent.testing import (
    UPSTREAM_BODY,
    HttpResponse,
    free_port,
    http_request,
    plugin_context,
    skip_unless_required,
    upstream_server,
)
from wrktalk_agent_haproxy.backend import HaproxySettings
from wrktalk_agent_haproxy.snippet import maintenance_page, render_config

__all__ = [
    "UPSTREAM_BODY",
    "HaproxyProxy",
    "HttpResponse",
    "find_haproxy",
    "free_port",
    "haproxy_proxy",
    "http_request",
    "plugin_context",
    "running_haproxy",
    "upstream_server",
]

_STARTUP_TIMEOUT = 10.0


@dataclass
class HaproxyProxy:
    """A running HAProxy: ``url`` is the proxy; ``settings``/``env`` configure the haproxy
    handler (unix socket, whole backend) in process or for an agent process;
    ``tcp_settings``/``tcp_env`` the same over TCP."""

    url: str
    upstream_url: str
    directory: Path
    admin_socket: Path
    operator_socket: Path
    tcp_address: str
    backend: str
    servers: tuple[str, ...]
    settings: HaproxySettings
    tcp_settings: HaproxySettings
    env: dict[str, str] = field(default_factory=dict)
    tcp_env: dict[str, str] = field(default_factory=dict)

    def get(
        self, path: str = "/", *, method: str = "GET", body: bytes | None = None
    ) -> HttpResponse:
        """One request through HAProxy."""
        return http_request(self.url, path, method=method, body=body)

    def runtime_api(self, command: str) -> str:
        """Run a Runtime API command directly, as an operator would with socat."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.admin_socket))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode().rstrip()


def find_haproxy() -> str | None:
    """The haproxy binary; Debian installs it in /usr/sbin, often not on a user's PATH."""
    return shutil.which("haproxy", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))


def _wait_until_ready(
    process: subprocess.Popen[bytes], ports: list[int], socket_path: Path, log: Path
) -> None:
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    pending = list(ports)
    while time.monotonic() < deadline and process.poll() is None:
        if pending:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", pending[0]), 0.2),
            ):
                pending.pop(0)
                continue
        elif socket_path.exists():
            return
        time.sleep(0.05)
    raise RuntimeError(f"haproxy did not start; its output:\n{log.read_text(errors='replace')}")


@contextlib.contextmanager
def running_haproxy(directory: Path) -> Iterator[HaproxyProxy]:
    """Start an upstream and HAProxy (with the shipped snippet) inside ``directory``."""
    haproxy = find_haproxy()
    if haproxy is None:
        skip_unless_required("haproxy is not installed (Debian: apt-get install haproxy)")
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    with _short_dir(directory) as socket_dir:
        yield from _run(haproxy, directory, socket_dir)


@contextlib.contextmanager
def _short_dir(directory: Path) -> Iterator[Path]:
    """``directory``, or a short temporary one: unix socket paths end at 107 bytes, and a
    long ``--basetemp`` would push the sockets past that."""
    if len(str(directory)) < 80:
        yield directory
        return
    short = Path(tempfile.mkdtemp(prefix="wrktalk-haproxy-"))
    try:
        yield short
    finally:
        shutil.rmtree(short, ignore_errors=True)


def _run(haproxy: str, directory: Path, socket_dir: Path) -> Iterator[HaproxyProxy]:
    admin_socket = socket_dir / "admin.sock"
    operator_socket = socket_dir / "operator.sock"
    page_file = directory / "maintenance.html"
    page_file.write_text(maintenance_page(), encoding="utf-8")
    port, api_port = free_port(), free_port()
    servers = ("app1", "app2")
    with upstream_server() as upstream_url:
        upstream = upstream_url.removeprefix("http://")
        (directory / "maintenance.cfg").write_text(
            render_config(
                socket=str(admin_socket),
                servers=[(name, upstream) for name in servers],
                page_file=page_file,
            )
        )
        (directory / "base.cfg").write_text(
            f"""global
    stats socket {operator_socket} level operator
    stats socket ipv4@127.0.0.1:{api_port} level admin

defaults
    mode http
    timeout connect 2s
    timeout client 10s
    timeout server 10s

frontend wrktalk_http
    bind 127.0.0.1:{port}
    default_backend wrktalk
"""
        )
        tcp_address = f"127.0.0.1:{api_port}"
        env = {
            "WRKTALK_AGENT_MAINTENANCE_MODE_HANDLER": "haproxy",
            "WRKTALK_AGENT_HAPROXY_SOCKET": str(admin_socket),
            "WRKTALK_AGENT_HAPROXY_SERVERS": "wrktalk",
        }
        proxy = HaproxyProxy(
            url=f"http://127.0.0.1:{port}",
            upstream_url=upstream_url,
            directory=directory,
            admin_socket=admin_socket,
            operator_socket=operator_socket,
            tcp_address=tcp_address,
            backend="wrktalk",
            servers=servers,
            settings=HaproxySettings(socket=str(admin_socket), servers=["wrktalk"]),
            tcp_settings=HaproxySettings(socket=tcp_address, servers=["wrktalk"]),
            env=env,
            tcp_env={**env, "WRKTALK_AGENT_HAPROXY_SOCKET": tcp_address},
        )
        log = directory / "haproxy.log"
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [
                    haproxy,
                    "-db",
                    "-f",
                    str(directory / "base.cfg"),
                    "-f",
                    str(directory / "maintenance.cfg"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_until_ready(process, [port, api_port], admin_socket, log)
            yield proxy
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


@pytest.fixture
def haproxy_proxy(tmp_path: Path) -> Iterator[HaproxyProxy]:
    """A running HAProxy with the maintenance snippet in front of a loopback upstream."""
    with running_haproxy(tmp_path / "haproxy") as proxy:
        yield proxy
