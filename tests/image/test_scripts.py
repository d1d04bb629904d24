"""The image's build scripts, for real (run by ``nox -s image``, which sets WRKTALK_IMAGE):
the Compose v2 installer, and the one-line errors of the build scripts."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from wrktalk_agent.testing import skip_unless_required

if not os.environ.get("WRKTALK_IMAGE"):
    pytest.skip("image tooling: run by `nox -s image`", allow_module_level=True)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"


def script(name: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPTS / name)],
        capture_output=True, text=True, timeout=600, env={**os.environ, **env},
    )  # fmt: skip


def test_install_compose_v2_installs_once_and_prints_its_docker_config(tmp_path) -> None:
    if shutil.which("mmdebstrap") is None:
        skip_unless_required("mmdebstrap is not installed (apt-get install mmdebstrap)")
    dest = tmp_path / "docker-config"
    first = script("install-compose-v2.sh", WRKTALK_DOCKER_CONFIG=str(dest))
    assert first.returncode == 0, first.stderr
    assert first.stdout == f"{dest}\n"
    plugin = dest / "cli-plugins" / "docker-compose"
    installed = plugin.stat()
    env = {**os.environ, "DOCKER_CONFIG": str(dest)}
    version = subprocess.run(
        ["docker", "compose", "version"], capture_output=True, text=True, env=env
    )
    assert version.returncode == 0 and "version 2." in version.stdout, version.stderr

    again = script("install-compose-v2.sh", WRKTALK_DOCKER_CONFIG=str(dest))
    assert (again.returncode, again.stdout, again.stderr) == (0, f"{dest}\n", "")
    assert plugin.stat().st_mtime_ns == installed.st_mtime_ns  # reused, not fetched again


def test_build_without_a_base_image_names_the_script_that_makes_one() -> None:
    result = script("build-image.sh", BASE_IMAGE="wrktalk-no-such-base:none")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("build-image: no base image: wrktalk-no-such-base:none")
    assert "scripts/make-base-image.sh" in last


def test_make_base_image_names_a_missing_package_list() -> None:
    result = script("make-base-image.sh", PACKAGES="deploy/image/no-such-list")
    assert result.returncode == 1
    assert result.stderr == "make-base-image: PACKAGES=deploy/image/no-such-list: no such file\n"


def test_wheelhouse_refuses_an_unknown_architecture(tmp_path) -> None:
    env = {**os.environ, "WHEELHOUSE_ARCH": "s390x", "FORCE": "1"}
    command = ["bash", str(SCRIPTS / "build-wheelhouse.sh"), str(tmp_path / "wheels")]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode == 1
    assert "unsupported architecture s390x" in result.stderr
    assert not (tmp_path / "wheels").exists()
