"""A real nginx on loopback for tests, configured with the shipped snippets.

Use the fixture by importing it into a ``conftest.py``::

    from wrktalk_agent_nginx.testing import nginx_proxy  # noqa: F401

``nginx_proxy`` starts, per test, a tiny upstream HTTP server and an nginx in front of it
(``nginx -p DIR -c CONF -g 'daemon off;'``, everything inside the test's tmp dir) and
stops both afterwards. Tests are skipped when no nginx binary is installed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
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
from wrktalk_agent_nginx.backend import NginxSettings
from wrktalk_agent_nginx.snippet import maintenance_page, render_snippets

__all__ = [
    "ADMIN_SOURCE_ADDRESS",
    "UPSTREAM_BODY",
    "HttpResponse",
    "NginxProxy",
    "find_nginx",
    "free_port",
    "http_request",
    "nginx_proxy",
    "plugin_context",
    "running_nginx",
    "upstream_server",
]

#: A loopback source address inside the test's admin network (Linux routes 127/8 to lo).
ADMIN_SOURCE_ADDRESS = "127.0.0.2"
_STARTUP_TIMEOUT = 10.0


@dataclass
class NginxProxy:
    """A running nginx: ``url`` is the proxy, ``env`` selects and configures the nginx
    handler for an agent process, ``settings`` does the same for an in-process backend."""

    url: str
    upstream_url: str
    prefix: Path
    config_file: Path
    flag_file: Path
    page_file: Path
    settings: NginxSettings
    env: dict[str, str] = field(default_factory=dict)

    def get(
        self,
        path: str = "/",
        *,
        method: str = "GET",
        body: bytes | None = None,
        source_address: str | None = None,
    ) -> HttpResponse:
        """One request through nginx; ``source_address`` picks the client's loopback IP."""
        return http_request(self.url, path, method=method, body=body, source_address=source_address)

    def command(self, *args: str) -> list[str]:
        """An nginx command line for this instance, e.g. ``command("-s", "reload")``."""
        nginx = find_nginx()
        assert nginx is not None
        # `-e` sends even start-up errors to our log instead of /var/log/nginx.
        return [
            nginx,
            "-p",
            str(self.prefix),
            "-c",
            str(self.config_file),
            "-e",
            str(self.prefix / "error.log"),
            *args,
        ]


def find_nginx() -> str | None:
    """The nginx binary; Debian installs it in /usr/sbin, often not on a user's PATH."""
    return shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    output = log.read_text(errors="replace") if log.exists() else "(no log)"
    raise RuntimeError(f"server did not listen on 127.0.0.1:{port}; its log:\n{output}")


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def running_nginx(directory: Path, *, admin_network: str = "127.0.0.2/32") -> Iterator[NginxProxy]:
    """Start an upstream and nginx (with the shipped snippets) inside ``directory``."""
    nginx = find_nginx()
    if nginx is None:
        skip_unless_required("nginx is not installed (Debian: apt-get install nginx-light)")
    prefix = directory.resolve()
    for sub in ("logs", "temp", "run", "html"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    flag_file = prefix / "run" / "maintenance"
    page_file = prefix / "html" / "maintenance.html"
    page_file.write_text(maintenance_page(), encoding="utf-8")
    snippets = render_snippets(
        flag_file=flag_file, page_file=page_file, admin_networks=[admin_network]
    )
    (prefix / "maintenance-http.conf").write_text(snippets.http)
    (prefix / "maintenance-server.conf").write_text(snippets.server)
    port = free_port()
    config_file = prefix / "nginx.conf"
    with upstream_server() as upstream_url:
        temp = prefix / "temp"
        # Workers of a root master drop to "nobody", who cannot enter pytest's 0700 tmp
        # dirs; an unprivileged master ignores `user` with a warning, so only set it as root.
        user = "user root;" if os.geteuid() == 0 else ""
        config_file.write_text(
            f"""{user}
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {prefix}/maintenance-http.conf;
    server {{
        listen 127.0.0.1:{port};
        include {prefix}/maintenance-server.conf;
        location / {{
            proxy_pass {upstream_url};
        }}
    }}
}}
"""
        )
        proxy = NginxProxy(
            url=f"http://127.0.0.1:{port}",
            upstream_url=upstream_url,
            prefix=prefix,
            config_file=config_file,
            flag_file=flag_file,
            page_file=page_file,
            settings=NginxSettings(flag_file=flag_file),
            env={
                "WRKTALK_AGENT_MAINTENANCE_MODE_HANDLER": "nginx",
                "WRKTALK_AGENT_NGINX_FLAG_FILE": str(flag_file),
            },
        )
        process = subprocess.Popen(
            proxy.command("-g", "daemon off;"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_for_port(port, process, prefix / "error.log")
            yield proxy
        finally:
            _stop_process(process)


@pytest.fixture
def nginx_proxy(tmp_path: Path) -> Iterator[NginxProxy]:
    """A running nginx with the maintenance snippets in front of a loopback upstream."""
    with running_nginx(tmp_path / "nginx") as proxy:
        yield proxy
