"""The compose deployer against a real Docker engine, once per installed compose variant.

Each release bundles the app image (``images/app.tar`` from ``docker save``), a compose
file publishing on a loopback port, and ``www/index.html`` holding its version, which
the container serves from a bind mount of the release directory.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from compose_support import (
    NEVER_HEALTHY,
    AppImage,
    ComposeProject,
    ReleaseBuilder,
    Reports,
    compose_file,
    free_loopback_port,
    http_get,
)

from wrktalk_agent.interfaces import DeployError
from wrktalk_agent_compose import ComposeDeployer

pytestmark = pytest.mark.e2e

SECRET = "s3cr3t-do-not-print"


def app_files(image: AppImage, version: str, compose: str | None = None) -> dict[str, bytes | str]:
    return {
        "docker-compose.yml": compose if compose is not None else compose_file(image.tag),
        "www/index.html": f"{version}\n",
        "images/app.tar": image.saved,
    }


def env_data(port: int, version: str) -> str:
    return f"APP_PORT={port}\nAPP_VERSION={version}\nAPI_TOKEN={SECRET}\n"


async def test_deploy_upgrade_and_rollback_serve_each_version(
    deployer: ComposeDeployer,
    builder: ReleaseBuilder,
    app_image: AppImage,
    compose_project: ComposeProject,
    working_dir: Path,
) -> None:
    port = free_loopback_port()
    releases = working_dir / "releases"
    (releases / "0.9.0").mkdir(parents=True)  # left by an earlier deploy: to be pruned
    app_image.remove()

    reports = Reports()
    first = builder.request(
        "1.0.0", app_files(app_image, "1.0.0"), env_data=env_data(port, "1.0.0"), reports=reports
    )
    outcome = await deployer.deploy(first)
    assert app_image.present(), "the image should have been loaded from images/app.tar"
    assert outcome.details["images_loaded"] == ["images/app.tar"]
    # The core deletes its temp dir after the task: the bind mount must not depend on it.
    shutil.rmtree(first.workdir)
    assert http_get(port) == "1.0.0\n"
    assert (releases / "1.0.0" / ".env").stat().st_mode & 0o777 == 0o600
    assert not (releases / "1.0.0" / "images").exists()
    assert sorted(p.name for p in releases.iterdir()) == ["0.9.0", "1.0.0"]
    assert any("installed" in line for line in reports.lines)
    assert SECRET not in outcome.output + repr(outcome.details) + repr(reports.lines)

    v1_0 = first.release
    second = builder.request(
        "1.1.0", app_files(app_image, "1.1.0"), env_data=env_data(port, "1.1.0"), current=v1_0
    )
    outcome = await deployer.deploy(second)
    assert http_get(port) == "1.1.0\n"
    assert outcome.details["pruned_releases"] == ["0.9.0"]
    assert sorted(p.name for p in releases.iterdir()) == ["1.0.0", "1.1.0"]
    assert len(compose_project.containers()) == 1

    # Rollback works from the artifact alone: the release dir may have been pruned.
    shutil.rmtree(releases / "1.0.0")
    back = builder.request(
        "1.0.0",
        app_files(app_image, "1.0.0"),
        env_data=env_data(port, "1.0.0"),
        purpose="rollback",
        current=second.release,
    )
    await deployer.rollback(back)
    assert http_get(port) == "1.0.0\n"
    assert sorted(p.name for p in releases.iterdir()) == ["1.0.0", "1.1.0"]
    [container] = compose_project.inspect()
    assert container["State"]["Health"]["Status"] == "healthy"


async def test_redeploying_the_live_version_recreates_its_containers(
    deployer: ComposeDeployer,
    builder: ReleaseBuilder,
    app_image: AppImage,
    compose_project: ComposeProject,
) -> None:
    # Replacing releases/<version> under running containers would leave their bind mounts
    # on the deleted copy; the deployer recreates them.
    port = free_loopback_port()
    first = builder.request(
        "2.0.0", app_files(app_image, "2.0.0"), env_data=env_data(port, "2.0.0")
    )
    await deployer.deploy(first)
    [before] = compose_project.containers()
    files = app_files(app_image, "2.0.0")
    files["www/index.html"] = "2.0.0 again\n"
    again = builder.request("2.0.0", files, env_data=env_data(port, "2.0.0"), current=first.release)
    await deployer.deploy(again)
    [after] = compose_project.containers()
    assert after != before
    assert http_get(port) == "2.0.0 again\n"


async def test_service_that_never_becomes_healthy_fails_with_its_logs(
    deployer: ComposeDeployer, builder: ReleaseBuilder, app_image: AppImage
) -> None:
    port = free_loopback_port()
    compose = compose_file(app_image.tag, healthcheck=NEVER_HEALTHY)
    request = builder.request(
        "3.0.0", app_files(app_image, "3.0.0", compose), env_data=env_data(port, "3.0.0")
    )
    with pytest.raises(DeployError) as failure:
        await deployer.deploy(request)
    assert failure.value.system_changed
    assert "(running, unhealthy)" in str(failure.value)
    # It fails as soon as Docker says unhealthy, not at the deadline.
    assert "not ready after" not in str(failure.value)
    assert "booting web 3.0.0" in failure.value.output  # the container's own log line


async def test_container_that_exits_fails_with_its_exit_code(
    deployer: ComposeDeployer, builder: ReleaseBuilder, app_image: AppImage
) -> None:
    port = free_loopback_port()
    compose = compose_file(app_image.tag, healthcheck=None, command="echo giving up; exit 3")
    request = builder.request(
        "3.1.0", app_files(app_image, "3.1.0", compose), env_data=env_data(port, "3.1.0")
    )
    with pytest.raises(DeployError) as failure:
        await deployer.deploy(request)
    assert "exited (code 3)" in str(failure.value)
    assert "giving up" in failure.value.output


async def test_health_still_starting_at_the_deadline_times_out(
    make_deployer: Callable[..., ComposeDeployer],
    compose_project: ComposeProject,
    compose_variant: str,
    builder: ReleaseBuilder,
    app_image: AppImage,
) -> None:
    deployer = make_deployer(
        project_name=compose_project.name, command=compose_variant, wait_timeout=3
    )
    port = free_loopback_port()
    # The first check runs only after an hour: the container stays "starting".
    compose = compose_file(app_image.tag, interval="1h")
    request = builder.request(
        "3.2.0", app_files(app_image, "3.2.0", compose), env_data=env_data(port, "3.2.0")
    )
    with pytest.raises(DeployError) as failure:
        await deployer.deploy(request)
    assert "(running, starting)" in str(failure.value)
    assert "booting web 3.2.0" in failure.value.output


async def test_one_shot_service_that_completes_is_not_a_failure(
    deployer: ComposeDeployer,
    builder: ReleaseBuilder,
    app_image: AppImage,
    compose_project: ComposeProject,
) -> None:
    migrate = (
        "    depends_on:\n"
        "      migrate:\n"
        "        condition: service_completed_successfully\n"
        "  migrate:\n"
        f"    image: {app_image.tag}\n"
        '    command: ["/bin/busybox", "echo", "migrated"]\n'
    )
    port = free_loopback_port()
    compose = compose_file(app_image.tag, extra=migrate)
    request = builder.request(
        "4.0.0", app_files(app_image, "4.0.0", compose), env_data=env_data(port, "4.0.0")
    )
    outcome = await deployer.deploy(request)
    assert http_get(port) == "4.0.0\n"
    states = sorted(outcome.details["containers"].values())
    assert states == ["exited (code 0)", "running, healthy"]


async def test_image_tar_that_fails_to_load_changes_nothing(
    deployer: ComposeDeployer,
    builder: ReleaseBuilder,
    app_image: AppImage,
    compose_project: ComposeProject,
    working_dir: Path,
) -> None:
    files = app_files(app_image, "5.0.0")
    files["images/app.tar"] = b"this is not a docker image archive"
    request = builder.request("5.0.0", files, env_data=env_data(free_loopback_port(), "5.0.0"))
    with pytest.raises(DeployError) as failure:
        await deployer.deploy(request)
    assert failure.value.system_changed is False
    assert str(failure.value).startswith("docker load of images/app.tar failed: ")
    assert failure.value.output  # docker's own message
    assert compose_project.containers() == []
    assert not (working_dir / "releases" / "5.0.0").exists()


async def test_preflight_passes_on_a_working_host(
    deployer: ComposeDeployer, compose_variant: str
) -> None:
    results = {r.name: r for r in await deployer.check()}
    assert [r.ok for r in results.values()] == [True, True, True], results
    assert results["docker"].detail.startswith("engine ")
    assert results["compose"].detail.startswith(f"{compose_variant} (configured)")
