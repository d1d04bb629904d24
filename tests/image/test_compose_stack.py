"""deploy/compose brought up for real with Compose v2 (``nox -s image`` builds the two
images and runs this with ``WRKTALK_IMAGE`` and ``WRKTALK_NGINX_IMAGE`` set).

The stack runs from a copy of deploy/compose with two changes a shared test machine
needs: the agent joins the host network (the test PostgreSQL listens on loopback only),
and nginx's upstream port is a free port instead of 8080. The deployed app publishes
on the Docker bridge's gateway address, which is where nginx's ``host.docker.internal``
points.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_support import eventually, plugin_test_fixtures, plugin_test_module

from wrktalk_agent.config import AgentSettings
from wrktalk_agent.db.repository import Repository
from wrktalk_agent.testing import add_release

IMAGE = os.environ.get("WRKTALK_IMAGE", "")
NGINX_IMAGE = os.environ.get("WRKTALK_NGINX_IMAGE", "")
if not (IMAGE and NGINX_IMAGE):
    pytest.skip(
        "no images to test: `nox -s image` builds them and sets WRKTALK_IMAGE and "
        "WRKTALK_NGINX_IMAGE",
        allow_module_level=True,
    )

pytestmark = pytest.mark.e2e

_compose = plugin_test_fixtures("compose")
docker_engine = _compose.docker_engine
app_image = _compose.app_image
compose_project = _compose.compose_project
support = plugin_test_module("compose", "compose_support")

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 180


def docker(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, env=env, timeout=300)


def get(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError as exc:
        return 0, str(exc)


@dataclass
class Stack:
    project: str
    files: list[str]
    env: dict[str, str]
    nginx_port: int
    app_port: int
    gateway: str

    def compose(self, *args: str) -> subprocess.CompletedProcess[str]:
        files = [a for f in self.files for a in ("-f", f)]
        return docker("compose", "-p", self.project, *files, *args, env=self.env)

    def logs(self) -> str:
        result = self.compose("logs", "--no-color")
        return (result.stdout + result.stderr)[-6000:]


@pytest.fixture
def stack(docker_engine, database_url, compose_project, tmp_path) -> Iterator[Stack]:
    for image in (IMAGE, NGINX_IMAGE):
        if docker("image", "inspect", image).returncode != 0:
            pytest.fail(f"{image} is not on this engine: build it with `nox -s image`")
    if not support.compose_available("v2"):
        pytest.fail("Compose v2 is not installed: scripts/install-compose-v2.sh")
    # where host.docker.internal (host-gateway) points from a container
    hosts = docker("run", "--rm", "--add-host", "gw:host-gateway", "--entrypoint", "getent",
                   NGINX_IMAGE, "hosts", "gw")  # fmt: skip
    assert hosts.returncode == 0, hosts.stderr
    gateway = hosts.stdout.split()[0]

    app_port = support.free_loopback_port()
    workdir = tmp_path / "stack"
    workdir.mkdir()
    shutil.copy2(ROOT / "deploy" / "compose" / "docker-compose.yml", workdir)
    nginx_conf = (ROOT / "deploy" / "compose" / "nginx.conf").read_text()
    assert "host.docker.internal:8080;" in nginx_conf
    (workdir / "nginx.conf").write_text(
        nginx_conf.replace("host.docker.internal:8080;", f"host.docker.internal:{app_port};")
    )
    (workdir / "host-network.yml").write_text("services:\n  agent:\n    network_mode: host\n")
    (workdir / "agent.env").write_text(
        f"WRKTALK_AGENT_DATABASE_URL={database_url}\n"
        "WRKTALK_AGENT_AGENT_ID=wrktalk-stack-test\n"
        "WRKTALK_AGENT_NOTIFIERS=\n"
        f"WRKTALK_AGENT_COMPOSE_PROJECT_NAME={compose_project.name}\n"
        "WRKTALK_AGENT_HTTP_HOST=127.0.0.1\n"
        f"WRKTALK_AGENT_HTTP_PORT={support.free_loopback_port()}\n"
        "WRKTALK_AGENT_POLL_INTERVAL=1\n"
        "WRKTALK_AGENT_SHUTDOWN_GRACE=120\n"
        f"WRKTALK_AGENT_HEALTHCHECK_URL=http://{gateway}:{app_port}/\n"
        "WRKTALK_AGENT_HEALTHCHECK_INTERVAL=0.5\n"
        "WRKTALK_AGENT_HEALTHCHECK_RETRIES=40\n"
    )
    # the releases' directory, at the same path on the host and in the agent
    compose_dir = Path(tempfile.mkdtemp(prefix="wrktalk-stack-", dir="/var/tmp")) / "compose"
    compose_dir.mkdir()
    for directory in (compose_dir.parent, compose_dir):
        os.chown(directory, 10001, 10001)
    nginx_port = support.free_loopback_port()
    env = {
        **os.environ,
        "AGENT_IMAGE": IMAGE,
        "NGINX_IMAGE": NGINX_IMAGE,
        "NGINX_PORT": f"127.0.0.1:{nginx_port}",
        "WRKTALK_COMPOSE_DIR": str(compose_dir),
        "DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid),
    }
    stack = Stack(
        project=f"wrktalk-stack-{uuid.uuid4().hex[:8]}",
        files=[str(workdir / "docker-compose.yml"), str(workdir / "host-network.yml")],
        env=env,
        nginx_port=nginx_port,
        app_port=app_port,
        gateway=gateway,
    )
    try:
        up = stack.compose("up", "-d")
        assert up.returncode == 0, up.stdout + up.stderr
        yield stack
    finally:
        stack.compose("down", "-v", "--timeout", "60")
        shutil.rmtree(compose_dir.parent, ignore_errors=True)


async def test_a_deploy_through_the_stack_shows_503_during_and_200_after(
    stack, database_url, app_image, tmp_path
) -> None:
    # nginx answers at once; there is no WrkTalk behind it yet
    await eventually(lambda: get(stack.nginx_port)[0] == 502, timeout=60, what="nginx up")
    published = f'"{stack.gateway}:${{APP_PORT}}:8080"'
    slow = support.compose_file(
        app_image.tag,
        command="sleep 4; exec /bin/busybox httpd -f -p 8080 -h /www",
        extra="      start_period: 60s\n",  # continues the healthcheck block
    ).replace('"127.0.0.1:${APP_PORT}:8080"', published)
    files = {
        "docker-compose.yml": slow,
        "www/index.html": "1.0.0\n",
        "images/app.tar": app_image.saved,
    }
    settings = AgentSettings(database_url=database_url, work_dir=tmp_path, db_pool_min_size=1)  # type: ignore[arg-type]
    repo = await Repository.connect(settings)
    try:
        release = await add_release(
            repo, "1.0.0", files, env_data=f"APP_PORT={stack.app_port}\nAPP_VERSION=1.0.0\n"
        )
        task = await repo.create_task("deploy", release.id)
        seen: set[int] = set()

        async def finished():
            seen.add(get(stack.nginx_port)[0])
            done = await repo.get_task(task.id)
            return done if done.status in ("completed", "failed") else None

        done = await eventually(finished, timeout=TIMEOUT, interval=0.2, what="deploy")
        assert done.status == "completed", f"{done.error_message}\n{stack.logs()}"
    finally:
        await repo.close()
    assert 503 in seen, f"no maintenance page during the deploy: {seen}\n{stack.logs()}"
    assert get(stack.nginx_port) == (200, "1.0.0\n")
