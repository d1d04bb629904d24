"""Fixtures for the compose deployer's tests.

Docker tests run against a real engine: when ``docker info`` fails and we are root with
``dockerd`` installed, the session starts one and stops it afterwards; otherwise those
tests are skipped with the reason, or fail when ``WRKTALK_E2E=1`` (set by ``nox -s e2e``)
or ``WRKTALK_TEST_REQUIRE_DOCKER=1``, so that CI cannot go green by skipping them. The
application image is a busybox-static rootfs imported locally: no registry is involved.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from compose_support import (
    AppImage,
    ComposeProject,
    ReleaseBuilder,
    compose_available,
    docker,
    unavailable,
)

from wrktalk_agent.interfaces import PluginContext
from wrktalk_agent_compose import ComposeDeployer, ComposeSettings

BUSYBOX_APPLETS = ("sh", "httpd", "wget", "echo", "sleep", "true", "false")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: needs a real Docker engine (nox -s e2e)")


def _engine_reachable() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[None]:
    """A reachable Docker engine, started here when it is not running and we can."""
    if shutil.which("docker") is None:
        unavailable("no Docker engine: the docker CLI is not installed (apt-get install docker.io)")
    if _engine_reachable():
        yield
        return
    if shutil.which("dockerd") is None or os.geteuid() != 0:
        unavailable("no Docker engine reachable, and dockerd cannot be started here (needs root)")
    log_path = Path(tempfile.mkdtemp(prefix="wrktalk-dockerd-")) / "dockerd.log"
    with log_path.open("wb") as log:
        daemon = subprocess.Popen(["dockerd"], stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 60
    while not _engine_reachable():
        if daemon.poll() is not None or time.monotonic() > deadline:
            daemon.kill()
            unavailable(
                "no Docker engine: dockerd did not start; the end of its log:\n"
                + log_path.read_text(errors="replace")[-2000:]
            )
        time.sleep(0.5)
    try:
        yield
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()


@pytest.fixture(params=["v1", "v2"])
def compose_variant(request: pytest.FixtureRequest, docker_engine: None) -> str:
    """Docker tests run once per compose variant installed on this host."""
    variant: str = request.param
    if not compose_available(variant):
        command = "`docker compose` (v2)" if variant == "v2" else "`docker-compose` (v1)"
        pytest.skip(f"{command} is not installed on this host")
    return variant


@pytest.fixture(scope="session")
def app_image(docker_engine: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppImage]:
    """A tiny HTTP server image built from busybox-static, saved to a tar and removed from
    the engine again, so that a deploy can only get it from its bundle."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not Path(busybox).is_file():
        unavailable("busybox is not installed (apt-get install busybox-static)")
    rootfs = tmp_path_factory.mktemp("rootfs")
    for directory in ("bin", "www", "tmp"):
        (rootfs / directory).mkdir()
    shutil.copy2(busybox, rootfs / "bin" / "busybox")
    for applet in BUSYBOX_APPLETS:
        (rootfs / "bin" / applet).symlink_to("busybox")
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        tar.add(rootfs, arcname=".")
    tag = f"wrktalk-compose-test/app:{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["docker", "import", "-", tag], input=layer.getvalue(), capture_output=True, check=True
    )
    saved = tmp_path_factory.mktemp("image") / "app.tar"
    docker("save", "-o", str(saved), tag)
    image = AppImage(tag=tag, saved=saved.read_bytes())
    image.remove()
    try:
        yield image
    finally:
        image.remove()


@pytest.fixture
def compose_project(docker_engine: None) -> Iterator[ComposeProject]:
    """A unique compose project name; its containers and networks go away afterwards."""
    project = ComposeProject(name=f"wrktalk-test-{uuid.uuid4().hex[:10]}")
    try:
        yield project
    finally:
        project.remove()


@pytest.fixture
def builder(tmp_path: Path) -> ReleaseBuilder:
    root = tmp_path / "tasks"
    root.mkdir()
    return ReleaseBuilder(root)


@pytest.fixture
def working_dir(tmp_path: Path) -> Path:
    return tmp_path / "compose"


@pytest.fixture
def make_deployer(working_dir: Path, tmp_path: Path) -> Callable[..., ComposeDeployer]:
    """``make_deployer(**settings)``: a deployer whose working dir is private to the test."""

    def make(**overrides: object) -> ComposeDeployer:
        values: dict[str, object] = {"working_dir": working_dir, **overrides}
        context = PluginContext(
            agent_id="test",
            installation="test",
            work_dir=tmp_path,
            directory=None,  # type: ignore[arg-type]  # the deployer never asks
        )
        return ComposeDeployer(ComposeSettings(**values), context)  # type: ignore[arg-type]

    return make


@pytest.fixture
def deployer(
    make_deployer: Callable[..., ComposeDeployer],
    compose_project: ComposeProject,
    compose_variant: str,
) -> ComposeDeployer:
    """A deployer on the test's own compose project, for the variant under test."""
    return make_deployer(
        project_name=compose_project.name, command=compose_variant, wait_timeout=60
    )
