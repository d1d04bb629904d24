"""Against a real Docker engine, once per installed compose variant: what the deployer
does before maintenance (validate, prepare) and what it reads back afterwards
(live_release from the containers' labels)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from compose_support import (
    AppImage,
    ComposeProject,
    ReleaseBuilder,
    compose_file,
    docker,
    free_loopback_port,
    http_get,
)
from test_compose_docker import app_files, env_data

from wrktalk_agent.interfaces import LiveState, ValidationError
from wrktalk_agent_compose import ComposeDeployer

pytestmark = pytest.mark.e2e


# -- validate ---------------------------------------------------------------------------


async def test_a_good_release_validates_with_the_image_only_in_its_bundle(
    deployer: ComposeDeployer, builder: ReleaseBuilder, app_image: AppImage
) -> None:
    app_image.remove()
    port = free_loopback_port()
    request = builder.request(
        "1.0.0", app_files(app_image, "1.0.0"), env_data=env_data(port, "1.0.0")
    )
    assert await deployer.validate(request) == []
    assert not app_image.present(), "validate must not load anything"


async def test_a_variable_the_env_does_not_set_is_a_warning(
    deployer: ComposeDeployer, builder: ReleaseBuilder, app_image: AppImage
) -> None:
    port = free_loopback_port()
    request = builder.request("1.0.0", app_files(app_image, "1.0.0"), env_data=f"APP_PORT={port}\n")
    [warning] = await deployer.validate(request)
    assert "APP_VERSION" in warning
    assert "variable is not set" in warning


async def test_a_typo_in_the_compose_file_is_refused_with_compose_s_message(
    deployer: ComposeDeployer, builder: ReleaseBuilder, app_image: AppImage
) -> None:
    compose = compose_file(app_image.tag).replace("    image:", "    imgae:")
    port = free_loopback_port()
    request = builder.request(
        "1.0.0", app_files(app_image, "1.0.0", compose), env_data=env_data(port, "1.0.0")
    )
    with pytest.raises(ValidationError) as refused:
        await deployer.validate(request)
    assert str(refused.value).startswith("compose config rejects the release: ")
    assert "imgae" in str(refused.value)  # v1 and v2 both name the unknown key
    assert "imgae" in refused.value.output
    assert "s3cr3t" not in str(refused.value) + refused.value.output


async def test_an_image_neither_bundled_nor_present_is_refused(
    deployer: ComposeDeployer, builder: ReleaseBuilder, app_image: AppImage
) -> None:
    missing = "wrktalk-compose-test/not-bundled:9.9"
    files = app_files(app_image, "1.0.0", compose_file(missing))
    request = builder.request("1.0.0", files, env_data=env_data(free_loopback_port(), "1.0.0"))
    with pytest.raises(ValidationError) as refused:
        await deployer.validate(request)
    assert str(refused.value) == (
        f"image(s) neither in the release's images/ nor present on this host: {missing}"
    )
    assert f"No such image: {missing}" in refused.value.output  # docker's own words


async def test_a_port_taken_by_another_process_is_refused(
    deployer: ComposeDeployer,
    builder: ReleaseBuilder,
    app_image: AppImage,
    compose_project: ComposeProject,
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        request = builder.request(
            "1.0.0", app_files(app_image, "1.0.0"), env_data=env_data(port, "1.0.0")
        )
        with pytest.raises(ValidationError) as refused:
            await deployer.validate(request)
    assert str(refused.value) == (
        f"published port(s) 127.0.0.1:{port}/tcp already in use by another process "
        f"(not by compose project {compose_project.name})"
    )


async def test_a_port_held_by_this_project_is_fine(
    deployer: ComposeDeployer, builder: ReleaseBuilder, app_image: AppImage
) -> None:
    port = free_loopback_port()
    first = builder.request(
        "1.0.0", app_files(app_image, "1.0.0"), env_data=env_data(port, "1.0.0")
    )
    await deployer.deploy(first)
    second = builder.request(
        "1.1.0",
        app_files(app_image, "1.1.0"),
        env_data=env_data(port, "1.1.0"),
        current=first.release,
    )
    assert await deployer.validate(second) == []


# -- prepare ----------------------------------------------------------------------------


async def test_prepare_stages_without_touching_the_live_release(
    deployer: ComposeDeployer,
    builder: ReleaseBuilder,
    app_image: AppImage,
    compose_project: ComposeProject,
    working_dir: Path,
) -> None:
    port = free_loopback_port()
    first = builder.request(
        "1.0.0", app_files(app_image, "1.0.0"), env_data=env_data(port, "1.0.0")
    )
    await deployer.deploy(first)
    [live] = compose_project.containers()
    app_image.remove()

    second = builder.request(
        "1.1.0",
        app_files(app_image, "1.1.0"),
        env_data=env_data(port, "1.1.0"),
        current=first.release,
    )
    await deployer.prepare(second)
    assert app_image.present()
    assert (working_dir / "releases" / "1.1.0" / "www" / "index.html").read_text() == "1.1.0\n"
    assert compose_project.containers() == [live]
    assert http_get(port) == "1.0.0\n"

    outcome = await deployer.deploy(second)
    assert http_get(port) == "1.1.0\n"
    # nothing staged is done twice: the deploy itself only brought the project up
    assert next(c.split()[:2] for c in outcome.details["commands"]) == ["docker", "load"]
    assert len(outcome.details["commands"]) == 2
    assert outcome.details["images_loaded"] == ["images/app.tar"]


async def test_prepare_leaves_re_installing_the_live_version_to_the_deploy(
    deployer: ComposeDeployer,
    builder: ReleaseBuilder,
    app_image: AppImage,
    working_dir: Path,
) -> None:
    port = free_loopback_port()
    first = builder.request(
        "2.0.0", app_files(app_image, "2.0.0"), env_data=env_data(port, "2.0.0")
    )
    await deployer.deploy(first)
    files = app_files(app_image, "2.0.0")
    files["www/index.html"] = "2.0.0 again\n"
    again = builder.request("2.0.0", files, env_data=env_data(port, "2.0.0"), current=first.release)
    await deployer.prepare(again)
    # the live containers bind-mount this directory: it is not replaced before maintenance
    assert (working_dir / "releases" / "2.0.0" / "www" / "index.html").read_text() == "2.0.0\n"
    await deployer.deploy(again)
    assert http_get(port) == "2.0.0 again\n"


# -- live_release -------------------------------------------------------------------------


async def test_live_release_follows_the_project(
    deployer: ComposeDeployer,
    builder: ReleaseBuilder,
    app_image: AppImage,
    compose_project: ComposeProject,
) -> None:
    assert await deployer.live_release() == LiveState(
        None, "absent", "no containers in the compose project"
    )
    port = free_loopback_port()
    first = builder.request(
        "1.0.0", app_files(app_image, "1.0.0"), env_data=env_data(port, "1.0.0")
    )
    await deployer.deploy(first)
    [container] = compose_project.inspect()
    assert container["Config"]["Labels"]["io.wrktalk.release"] == "1.0.0"
    assert await deployer.live_release() == LiveState(
        "1.0.0", "deployed", "1 container(s) of 1.0.0"
    )

    docker("stop", container["Id"])
    live = await deployer.live_release()
    assert (live.version, live.state) == ("1.0.0", "half-applied")
    assert live.detail.startswith(f"not running: {container['Name'].lstrip('/')} (Exited")


async def test_live_release_sees_an_interrupted_upgrade_as_half_applied(
    deployer: ComposeDeployer,
    builder: ReleaseBuilder,
    app_image: AppImage,
    compose_project: ComposeProject,
    compose_variant: str,
    working_dir: Path,
) -> None:
    worker = (
        "  worker:\n"
        f"    image: {app_image.tag}\n"
        '    command: ["/bin/busybox", "sleep", "3600"]\n'
        "    stop_grace_period: 1s\n"
    )
    port = free_loopback_port()
    first = builder.request(
        "1.0.0",
        app_files(app_image, "1.0.0", compose_file(app_image.tag) + worker),
        env_data=env_data(port, "1.0.0"),
    )
    await deployer.deploy(first)
    second = builder.request(
        "1.1.0",
        app_files(app_image, "1.1.0", compose_file(app_image.tag) + worker),
        env_data=env_data(port, "1.1.0"),
        current=first.release,
    )
    await deployer.prepare(second)
    # An agent that died after compose recreated `web` but before `worker`:
    release = working_dir / "releases" / "1.1.0"
    program = ["docker", "compose"] if compose_variant == "v2" else ["docker-compose"]
    import subprocess

    subprocess.run(
        [
            *program, "-p", compose_project.name, "-f", str(release / "docker-compose.yml"),
            "-f", str(release / ".wrktalk-release.yml"), "--env-file", str(release / ".env"),
            "up", "-d", "--no-deps", "web",
        ],
        cwd=release,
        check=True,
        capture_output=True,
    )  # fmt: skip
    live = await deployer.live_release()
    assert live.state == "half-applied"
    assert live.detail.startswith("mixed releases (1.0.0: ")
    assert "1.1.0: " in live.detail


async def test_live_release_is_unknown_when_docker_fails(
    make_deployer: Callable[..., ComposeDeployer], tmp_path: Path
) -> None:
    deployer = make_deployer(docker_binary=str(tmp_path / "no-docker"))
    live = await deployer.live_release()
    assert (live.version, live.state) == (None, "unknown")
    assert live.detail == f"docker ps failed: {tmp_path}/no-docker: No such file or directory"


def _served_until_server_closes(port: int) -> bytes:
    """One request read to the end of the stream: the server side closes first, so the
    TIME-WAIT is left on the published port (a client that closes first keeps it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


def _time_wait_on(port: int) -> int:
    """TCP sockets of this host in TIME-WAIT whose local port is ``port``."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            if state == "06" and int(local.rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


async def test_a_stack_stopped_right_after_serving_deploys_again_at_once(
    deployer: ComposeDeployer,
    builder: ReleaseBuilder,
    app_image: AppImage,
    compose_project: ComposeProject,
) -> None:
    """Connections the stack served leave TIME-WAIT sockets on its published port for up
    to a minute; Docker binds the port anyway, so the port check must too."""
    port = free_loopback_port()
    first = builder.request(
        "1.0.0", app_files(app_image, "1.0.0"), env_data=env_data(port, "1.0.0")
    )
    assert await deployer.validate(first) == []
    await deployer.deploy(first)
    assert http_get(port) == "1.0.0\n"
    for _ in range(5):
        assert _served_until_server_closes(port).endswith(b"1.0.0\n")
    compose_project.remove()  # the stack stops while those connections wind down
    # the server side closed first: its sockets wait on the published port
    assert _time_wait_on(port) > 0, "no TIME-WAIT socket: the test would prove nothing"
    again = builder.request(
        "1.1.0", app_files(app_image, "1.1.0"), env_data=env_data(port, "1.1.0")
    )
    assert await deployer.validate(again) == []
    await deployer.deploy(again)
    assert http_get(port) == "1.1.0\n"
