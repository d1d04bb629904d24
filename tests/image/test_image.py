"""The built image, end to end (``nox -s image`` builds it and runs this with
``WRKTALK_IMAGE=wrktalk-agent:dev``): a real container on the host's Docker engine, against
a fresh database on the test PostgreSQL server, deploying real compose bundles through the
Compose v2 inside the image.

Every container runs as the image says (uid 10001, tini as PID 1) with a read-only root
file system; only ``/tmp`` and the work dir are writable (tmpfs), plus the compose working
dir, bind-mounted at the same path as on the host because the host's daemon resolves the
release's bind mounts. ``--network host``: the agent reaches the loopback-only PostgreSQL
and the apps it deploys, and the test reaches its HTTP endpoint.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import tempfile
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from e2e_support import eventually, plugin_test_fixtures, plugin_test_module, release_flags

from wrktalk_agent.config import AgentSettings
from wrktalk_agent.db.repository import Repository
from wrktalk_agent.testing import PgServer, add_release

IMAGE = os.environ.get("WRKTALK_IMAGE", "")
if not IMAGE:
    pytest.skip(
        "no image to test: `nox -s image` builds one and sets WRKTALK_IMAGE",
        allow_module_level=True,
    )

pytestmark = pytest.mark.e2e

_compose = plugin_test_fixtures("compose")
docker_engine = _compose.docker_engine
app_image = _compose.app_image
compose_project = _compose.compose_project
support = plugin_test_module("compose", "compose_support")

WORK_DIR = "/var/lib/wrktalk-agent/work"
TASK_TIMEOUT = 180
SOCKET = "/var/run/docker.sock"


def docker(
    *args: str, check: bool = False, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=check, timeout=timeout
    )


@pytest.fixture(scope="module")
def image(docker_engine: None) -> str:
    if docker("image", "inspect", IMAGE).returncode != 0:
        pytest.fail(f"{IMAGE} is not on this engine: build it with `nox -s image`")
    return IMAGE


@pytest.fixture(scope="module")
def compose_dir() -> Iterator[Path]:
    """The compose working dir, at the same path on the host and in the container."""
    root = Path(tempfile.mkdtemp(prefix="wrktalk-image-", dir="/var/tmp"))
    path = root / "compose"
    path.mkdir()
    for directory in (root, path):
        os.chown(directory, 10001, 10001)
    yield path
    # the agent wrote as uid 10001; we are root here (the engine needs it anyway)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def image_db(image: str, pg_server: PgServer, compose_dir: Path) -> Iterator[str]:
    """A fresh, empty database, initialised by `db init` in the image; dropped afterwards."""
    url = pg_server.create_database(migrated=False)
    try:
        result = run_image(image, url, compose_dir, "wrktalk-agent", "db", "init")
        assert result.returncode == 0, result.stdout + result.stderr
        yield url
    finally:
        pg_server.drop_database(url)


def container_args(
    url: str, compose_dir: Path, *, socket: bool = True, env: dict[str, str] | None = None
) -> list[str]:
    args = [
        "--network", "host",
        "--read-only",
        "--tmpfs", "/tmp",
        "--tmpfs", f"{WORK_DIR}:uid=10001,gid=10001,mode=0700",
        "-v", f"{compose_dir}:{compose_dir}",
        "-e", f"WRKTALK_AGENT_DATABASE_URL={url}",
        "-e", f"WRKTALK_AGENT_COMPOSE_WORKING_DIR={compose_dir}",
        "-e", "WRKTALK_AGENT_COMPOSE_COMMAND=v2",
        "-e", "WRKTALK_AGENT_NOTIFIERS=",
        "-e", "WRKTALK_AGENT_MAINTENANCE_MODE_HANDLER=none",
    ]  # fmt: skip
    if socket:
        args += ["-v", f"{SOCKET}:{SOCKET}", "--group-add", str(os.stat(SOCKET).st_gid)]
    for key, value in (env or {}).items():
        args += ["-e", f"{key}={value}"]
    return args


def run_image(
    image: str, url: str, compose_dir: Path, *command: str, socket: bool = True
) -> subprocess.CompletedProcess[str]:
    return docker("run", "--rm", *container_args(url, compose_dir, socket=socket), image, *command)


@pytest.fixture
def start_agent(image: str, image_db: str, compose_dir: Path) -> Iterator[Callable[..., str]]:
    """``start_agent(**env)``: `wrktalk-agent run` (the image's default command) in a
    detached container; returns its name. Removed after the test."""
    names: list[str] = []

    def start(**env: str) -> str:
        name = f"wrktalk-image-test-{uuid.uuid4().hex[:10]}"
        names.append(name)
        result = docker(
            "run", "-d", "--name", name,
            "--health-interval", "1s", "--health-start-period", "60s",
            *container_args(image_db, compose_dir, env=env),
            image,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return name

    yield start
    for name in names:
        docker("rm", "-f", "-v", name)


@pytest.fixture
async def image_repo(image_db: str, tmp_path: Path) -> Iterator[Repository]:
    settings = AgentSettings(database_url=image_db, work_dir=tmp_path, db_pool_min_size=1)  # type: ignore[arg-type]
    repo = await Repository.connect(settings)
    try:
        yield repo  # type: ignore[misc]
    finally:
        await repo.close()


def bundle(image, version: str, compose: str | None = None) -> dict[str, bytes | str]:
    return {
        "docker-compose.yml": compose if compose is not None else support.compose_file(image.tag),
        "www/index.html": f"{version}\n",
        "images/app.tar": image.saved,
    }


def logs(name: str) -> str:
    result = docker("logs", name)
    return result.stdout + result.stderr


async def finished(repo: Repository, task_id: uuid.UUID, container: str):
    async def done():
        task = await repo.get_task(task_id)
        if task is not None and task.status in ("completed", "failed"):
            return task
        state = docker("inspect", "-f", "{{.State.Status}}", container).stdout.strip()
        assert state == "running", f"the agent container is {state}:\n{logs(container)[-4000:]}"
        return None

    return await eventually(done, timeout=TASK_TIMEOUT, interval=0.2, what=f"task {task_id}")


def health(name: str) -> str:
    return docker("inspect", "-f", "{{.State.Health.Status}}", name).stdout.strip()


# -- the image as such ---------------------------------------------------------------------
def test_runs_as_uid_10001_under_tini(image: str) -> None:
    result = docker("run", "--rm", "--read-only", image, "sh", "-c", "id -u; cat /proc/1/comm")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["10001", "tini"]


def test_compose_v2_and_no_helm_in_the_compose_flavour(image: str) -> None:
    script = "docker compose version; command -v helm || echo no-helm"
    result = docker("run", "--rm", "--read-only", "--tmpfs", "/tmp", image, "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Docker Compose version 2.")
    assert result.stdout.split()[-1] == "no-helm"


def test_check_passes_with_the_docker_socket(image: str, image_db: str, compose_dir: Path) -> None:
    result = run_image(image, image_db, compose_dir, "wrktalk-agent", "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "deployer compose: compose" in result.stdout and "v2" in result.stdout


def test_without_the_docker_socket_the_entrypoint_names_it_and_exits(
    image: str, image_db: str, compose_dir: Path
) -> None:
    result = run_image(image, image_db, compose_dir, socket=False)  # the default: run
    assert result.returncode == 1
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 1, result.stdout
    assert "deployer compose: docker" in failed[0] and SOCKET in failed[0]
    assert "preflight check failed" in result.stderr


# -- the agent in the image ----------------------------------------------------------------
async def test_deploy_upgrade_and_rollback_through_compose_v2(
    image_repo, start_agent, app_image, compose_project
) -> None:
    port = support.free_loopback_port()
    http_port = support.free_loopback_port()
    env_data = lambda v: f"APP_PORT={port}\nAPP_VERSION={v}\n"  # noqa: E731
    app_image.remove()  # the engine can only get it from the bundle
    v1 = await add_release(
        image_repo, "1.0.0", bundle(app_image, "1.0.0"), env_data=env_data("1.0.0")
    )
    v2 = await add_release(
        image_repo, "1.1.0", bundle(app_image, "1.1.0"), env_data=env_data("1.1.0")
    )
    name = start_agent(
        WRKTALK_AGENT_COMPOSE_PROJECT_NAME=compose_project.name,
        WRKTALK_AGENT_HTTP_HOST="127.0.0.1",
        WRKTALK_AGENT_HTTP_PORT=str(http_port),
        WRKTALK_AGENT_POLL_INTERVAL="1",
        WRKTALK_AGENT_HEALTHCHECK_URL=f"http://127.0.0.1:{port}/",
        WRKTALK_AGENT_HEALTHCHECK_INTERVAL="0.5",
        WRKTALK_AGENT_HEALTHCHECK_RETRIES="40",
    )

    for kind, release, served in (
        ("deploy", v1, "1.0.0"),
        ("deploy", v2, "1.1.0"),
        ("rollback", None, "1.0.0"),
    ):
        task = await image_repo.create_task(kind, release.id if release else None)
        done = await finished(image_repo, task.id, name)
        assert done.status == "completed", f"{done.error_message}\n{logs(name)[-4000:]}"
        assert support.http_get(port) == f"{served}\n"
    assert await release_flags(image_repo) == ("1.0.0", "1.1.0")
    assert app_image.present()  # loaded from the bundle by the docker CLI in the image
    [container] = compose_project.inspect()
    assert "APP_VERSION=1.0.0" in container["Config"]["Env"]
    assert container["Config"]["Labels"]["com.docker.compose.version"].startswith("2.")

    await eventually(lambda: health(name) == "healthy", timeout=90, interval=0.5, what="healthy")
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as response:
        metrics = response.read().decode()
    assert "wrktalk_" in metrics

    # nothing was written outside the writable mounts (the root file system is read-only):
    # the only changes are the mount points the engine created
    # (/var/run is a symlink to /run in Debian)
    destinations = docker("inspect", "-f", "{{range .Mounts}}{{.Destination}} {{end}}", name)
    mounts = [Path(m.replace("/var/run/", "/run/", 1)) for m in destinations.stdout.split()]
    allowed = {str(p) for m in mounts for p in (m, *m.parents)}
    changed = {line.split(maxsplit=1)[1] for line in docker("diff", name).stdout.splitlines()}
    assert changed <= allowed, changed - allowed
    stopped = docker("stop", "-t", "60", name)
    assert stopped.returncode == 0, stopped.stderr
    assert docker("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip() == "0"


async def test_docker_stop_during_a_deploy_lets_it_finish(
    image_repo, start_agent, app_image, compose_project
) -> None:
    port = support.free_loopback_port()
    # the app needs a few seconds before it answers: the deploy waits for it to be healthy
    slow = support.compose_file(
        app_image.tag,
        command="sleep 4; exec /bin/busybox httpd -f -p 8080 -h /www",
        extra="      start_period: 60s\n",  # continues the healthcheck block
    )
    release = await add_release(
        image_repo, "2.0.0", bundle(app_image, "2.0.0", slow),
        env_data=f"APP_PORT={port}\nAPP_VERSION=2.0.0\n",
    )  # fmt: skip
    name = start_agent(
        WRKTALK_AGENT_COMPOSE_PROJECT_NAME=compose_project.name,
        WRKTALK_AGENT_HTTP_PORT="0",
        WRKTALK_AGENT_POLL_INTERVAL="1",
    )
    task = await image_repo.create_task("deploy", release.id)

    async def deploying() -> bool:
        events = await image_repo.task_events(task.id)
        return ("deploy", "started") in [(e.step, e.status) for e in events]

    await eventually(deploying, timeout=TASK_TIMEOUT, interval=0.1, what="deploy started")
    # SIGTERM reaches the agent through tini; it drains the running deploy, then exits
    stopped = await asyncio.to_thread(docker, "stop", "-t", "120", name)
    assert stopped.returncode == 0, stopped.stderr
    done = await image_repo.get_task(task.id)
    assert done.status == "completed", f"{done.error_message}\n{logs(name)[-4000:]}"
    assert docker("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip() == "0"
    assert "drain" in logs(name).lower() or "shutdown" in logs(name).lower()
    assert support.http_get(port) == "2.0.0\n"


# -- the helm flavour: build arguments -------------------------------------------------------
FAKE_HELM = "#!/bin/sh\necho v3.16.3+gfake\n"


@pytest.fixture(scope="module")
def build_context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of what the Dockerfile reads, with a stand-in helm tarball in
    deploy/image/helm/ (the air-gapped path: no download)."""
    root = Path(__file__).resolve().parents[2]
    context = tmp_path_factory.mktemp("context")
    for name in ("Dockerfile", ".dockerignore", "deploy/docker-entrypoint.sh"):
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, context / name)
    shutil.copytree(root / "deploy" / "image", context / "deploy" / "image")
    helm_dir = context / "deploy" / "image" / "helm"
    helm_dir.mkdir(exist_ok=True)
    staging = tmp_path_factory.mktemp("helm") / "linux-amd64"
    staging.mkdir()
    (staging / "helm").write_text(FAKE_HELM)
    (staging / "helm").chmod(0o755)
    tarball = helm_dir / "helm-v3.16.3-linux-amd64.tar.gz"
    subprocess.run(
        ["tar", "-czf", str(tarball), "-C", str(staging.parent), "linux-amd64"], check=True
    )
    return context


def build(context: Path, tag: str, **args: str) -> subprocess.CompletedProcess[str]:
    base = os.environ.get("WRKTALK_BASE_IMAGE", "debian:trixie-slim")
    build_args = [
        a for k, v in {"BASE_IMAGE": base, **args}.items() for a in ("--build-arg", f"{k}={v}")
    ]
    return docker("build", *build_args, "-t", tag, str(context))


@pytest.fixture
def helm_tag(docker_engine: None) -> Iterator[str]:
    tag = f"wrktalk-agent-helm-test:{uuid.uuid4().hex[:8]}"
    yield tag
    docker("rmi", "-f", tag)


def test_helm_without_its_checksum_stops_the_build(build_context, helm_tag) -> None:
    result = build(build_context, helm_tag, HELM_VERSION="3.16.3")
    assert result.returncode != 0
    assert "needs --build-arg HELM_SHA256=" in result.stdout + result.stderr


def test_helm_with_a_wrong_checksum_stops_the_build(build_context, helm_tag) -> None:
    result = build(build_context, helm_tag, HELM_VERSION="3.16.3", HELM_SHA256="0" * 64)
    assert result.returncode != 0
    assert "does not match --build-arg HELM_SHA256=" in result.stdout + result.stderr
    assert docker("image", "inspect", helm_tag).returncode != 0


def test_helm_flavour_carries_the_verified_binary(build_context, helm_tag) -> None:
    tarball = build_context / "deploy" / "image" / "helm" / "helm-v3.16.3-linux-amd64.tar.gz"
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    result = build(build_context, helm_tag, HELM_VERSION="3.16.3", HELM_SHA256=digest)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    ran = docker("run", "--rm", "--read-only", helm_tag, "helm", "version", "--short")
    assert ran.stdout.strip() == "v3.16.3+gfake"
