"""Helpers shared by the compose tests (imported by name: conftest puts this directory on
sys.path, as the core's tests do with tests/support)."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wrktalk_agent.interfaces import DeployRequest, Release
from wrktalk_agent.testing import make_tarball, skip_unless_required


def unavailable(reason: str) -> None:
    """Skip a test that needs Docker, or fail it where Docker is required."""
    skip_unless_required(reason)


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check)


#: where scripts/install-compose-v2.sh puts Compose v2 (a DOCKER_CONFIG dir) by default
INSTALLED_V2_CONFIG = Path(
    os.environ.get("WRKTALK_DOCKER_CONFIG")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "wrktalk-agent"
    / "docker-config"
)


def compose_available(variant: str) -> bool:
    """Whether this variant runs here. For v2, a plugin installed by
    scripts/install-compose-v2.sh is used when the docker CLI has none of its own: its
    DOCKER_CONFIG is exported for this process and the agents it starts."""
    args = ["docker", "compose", "version"] if variant == "v2" else ["docker-compose", "version"]
    if shutil.which(args[0]) is None:
        return False
    if subprocess.run(args, capture_output=True).returncode == 0:
        return True
    if variant == "v2" and (INSTALLED_V2_CONFIG / "cli-plugins" / "docker-compose").is_file():
        os.environ["DOCKER_CONFIG"] = str(INSTALLED_V2_CONFIG)
        return subprocess.run(args, capture_output=True).returncode == 0
    return False


@dataclass(frozen=True)
class AppImage:
    tag: str
    #: the image as `docker save` wrote it: what a release bundles as images/app.tar
    saved: bytes

    def present(self) -> bool:
        return docker("image", "inspect", self.tag, check=False).returncode == 0

    def remove(self) -> None:
        docker("rmi", "-f", self.tag, check=False)


@dataclass(frozen=True)
class ComposeProject:
    name: str

    def containers(self) -> list[str]:
        label = f"label=com.docker.compose.project={self.name}"
        return docker("ps", "-aq", "--filter", label).stdout.split()

    def inspect(self) -> list[dict[str, Any]]:
        ids = self.containers()
        return json.loads(docker("inspect", *ids).stdout) if ids else []

    def remove(self) -> None:
        ids = self.containers()
        if ids:
            docker("rm", "-f", "-v", *ids, check=False)
        label = f"label=com.docker.compose.project={self.name}"
        networks = docker("network", "ls", "-q", "--filter", label).stdout.split()
        if networks:
            docker("network", "rm", *networks, check=False)


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_get(port: int, *, attempts: int = 20) -> str:
    """The body served on loopback; retried briefly because docker-proxy may bind the
    port a moment after the container reports healthy."""
    last: Exception | None = None
    for _ in range(attempts):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                body: bytes = response.read()
                return body.decode()
        except OSError as exc:
            last = exc
            time.sleep(0.25)
    raise AssertionError(f"nothing served on 127.0.0.1:{port}: {last}")


HEALTHY = '["CMD", "/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"]'
NEVER_HEALTHY = '["CMD", "/bin/busybox", "false"]'


def compose_file(
    image: str,
    *,
    healthcheck: str | None = HEALTHY,
    interval: str = "1s",
    command: str = "exec /bin/busybox httpd -f -p 8080 -h /www",
    extra: str = "",
) -> str:
    """A one-service app: busybox httpd serving the release's www/ (bind-mounted from the
    release directory) on the loopback port that .env names."""
    health = ""
    if healthcheck is not None:
        health = (
            "    healthcheck:\n"
            f"      test: {healthcheck}\n"
            f"      interval: {interval}\n"
            "      timeout: 2s\n"
            "      retries: 2\n"
        )
    return (
        "services:\n"
        "  web:\n"
        f"    image: {image}\n"
        '    command: ["/bin/busybox", "sh", "-c", '
        f'"echo booting web $$APP_VERSION; {command}"]\n'
        "    environment:\n"
        "      APP_VERSION: ${APP_VERSION}\n"
        "    ports:\n"
        '      - "127.0.0.1:${APP_PORT}:8080"\n'
        "    volumes:\n"
        "      - ./www:/www:ro\n"
        # httpd as PID 1 ignores SIGTERM: without this each recreate waits 10 s for SIGKILL
        "    stop_grace_period: 1s\n"
        f"{health}{extra}"
    )


@dataclass
class Reports:
    """Collects what the deployer adds to the task's timeline."""

    lines: list[str] = field(default_factory=list)

    async def __call__(self, line: str) -> None:
        self.lines.append(line)


def release(version: str) -> Release:
    return Release(id=uuid.uuid4(), version=version, chart_type="compose", sha256="0" * 64)


@dataclass
class ReleaseBuilder:
    """Builds a release tarball, extracts it as the core does, and makes the request."""

    root: Path

    def request(
        self,
        version: str,
        files: dict[str, bytes | str],
        *,
        env_data: str | None = None,
        purpose: str = "deploy",
        current: Release | None = None,
        reports: Reports | None = None,
    ) -> DeployRequest:
        workdir = Path(tempfile.mkdtemp(prefix="task-", dir=self.root))
        with tarfile.open(fileobj=io.BytesIO(make_tarball(files))) as tar:
            tar.extractall(workdir, filter="data")
        env_file = None
        if env_data is not None:
            env_file = workdir / ".env"
            env_file.write_text(env_data)
            env_file.chmod(0o600)
        return DeployRequest(
            task_id=uuid.uuid4(),
            purpose=purpose,  # type: ignore[arg-type]
            release=release(version),
            workdir=workdir,
            env_file=env_file,
            values_file=None,
            current=current,
            report=reports if reports is not None else Reports(),
        )
