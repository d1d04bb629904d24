"""Command lines, variant detection, preflight, the subprocess runner, and the whole v2
deploy path against a fake `docker` CLI (v2 is not installed on every test host)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from compose_support import ReleaseBuilder, Reports

from wrktalk_agent import process
from wrktalk_agent.interfaces import DeployError, DeployRequest, ValidationError
from wrktalk_agent.process import NOT_FOUND, TAIL_BYTES, TIMED_OUT, run
from wrktalk_agent_compose import ComposeDeployer, ComposeSettings
from wrktalk_agent_compose.commands import (
    ComposeCommand,
    detect_variant,
    project_containers,
    resolve_variant,
)

RELEASE = Path("/var/lib/wrktalk-agent/compose/releases/1.2.3")


def command(variant: str, *, env: bool = True) -> ComposeCommand:
    return ComposeCommand(
        variant=variant,  # type: ignore[arg-type]
        docker="docker",
        compose_v1="docker-compose",
        project="wrktalk",
        compose_file=RELEASE / "docker-compose.yml",
        env_file=RELEASE / ".env" if env else None,
    )


def test_v2_up_removes_orphans_and_leaves_the_wait_to_the_agent() -> None:
    assert command("v2").up() == [
        "docker", "compose", "-p", "wrktalk",
        "-f", "/var/lib/wrktalk-agent/compose/releases/1.2.3/docker-compose.yml",
        "--env-file", "/var/lib/wrktalk-agent/compose/releases/1.2.3/.env",
        "up", "-d", "--remove-orphans",
    ]  # fmt: skip


def test_v1_up_with_the_label_override() -> None:
    with_labels = ComposeCommand(
        variant="v1",
        docker="docker",
        compose_v1="docker-compose",
        project="wrktalk",
        compose_file=RELEASE / "docker-compose.yml",
        env_file=RELEASE / ".env",
        overrides=(RELEASE / ".wrktalk-release.yml",),
    )
    assert with_labels.up() == [
        "docker-compose", "-p", "wrktalk",
        "-f", "/var/lib/wrktalk-agent/compose/releases/1.2.3/docker-compose.yml",
        "-f", "/var/lib/wrktalk-agent/compose/releases/1.2.3/.wrktalk-release.yml",
        "--env-file", "/var/lib/wrktalk-agent/compose/releases/1.2.3/.env",
        "up", "-d", "--remove-orphans",
    ]  # fmt: skip


def test_without_env_file_and_with_recreate() -> None:
    assert command("v2", env=False).up(force_recreate=True) == [
        "docker", "compose", "-p", "wrktalk",
        "-f", "/var/lib/wrktalk-agent/compose/releases/1.2.3/docker-compose.yml",
        "up", "-d", "--remove-orphans", "--force-recreate",
    ]  # fmt: skip
    assert command("v1", env=False).up(force_recreate=True)[-4:] == [
        "up", "-d", "--remove-orphans", "--force-recreate",
    ]  # fmt: skip


def test_listing_containers_uses_docker_ps_with_compose_labels() -> None:
    assert project_containers("docker", "wrktalk", "--quiet") == [
        "docker", "ps", "--all", "--no-trunc",
        "--filter", "label=com.docker.compose.project=wrktalk",
        "--filter", "label=com.docker.compose.oneoff=False",
        "--quiet",
    ]  # fmt: skip


# -- a fake docker CLI ---------------------------------------------------------------

FAKE_DOCKER = """\
#!{python}
# Answers like docker 27 with the compose v2 plugin; appends its argv to $FAKE_LOG.
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
broken = os.environ.get("FAKE_BROKEN", "")
def fail(message, code=1):
    sys.stderr.write(message + "\\n")
    sys.exit(code)
if "engine" in broken:
    fail("Cannot connect to the Docker daemon at unix:///var/run/docker.sock.")
if args[:2] == ["compose", "version"]:
    if "compose" in broken:
        fail("docker: 'compose' is not a docker command.")
    print("Docker Compose version v2.29.7")
elif args[:1] == ["version"]:
    print("27.3.1")
elif args[:2] == ["load", "-i"]:
    if open(args[2], "rb").read().startswith(b"bad"):
        fail("Error processing tar file(exit status 1): unexpected EOF")
    print("Loaded image: app:1")
elif args[0] == "compose" and "up" in args:
    if "up-fails" in broken:
        fail("dependency failed to start: container wrktalk-web-1 is unhealthy")
    print(" Container wrktalk-web-1  Started")
elif args[:2] == ["ps", "--all"]:
    print("0123456789ab")
elif args[0] == "events":
    pass  # no events: the wait falls back to polling
elif args[0] == "inspect":
    health = "unhealthy" if "unhealthy" in broken or "up-fails" in broken else "healthy"
    print(json.dumps([{{
        "Id": "0123456789abcdef", "Name": "/wrktalk-web-1",
        "Config": {{"Labels": {{"com.docker.compose.service": "web"}}}},
        "State": {{"Status": "running", "ExitCode": 0, "Health": {{"Status": health}}}},
    }}]))
elif args[0] == "logs":
    print("web: cannot reach the database")
else:
    fail("fake docker: unexpected arguments " + " ".join(args), 2)
"""

FAKE_COMPOSE_V1 = """\
#!/bin/sh
echo '["docker-compose"]' >> "$FAKE_LOG"
echo "docker-compose version 1.29.2, build unknown"
"""


@pytest.fixture
def fake_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory with a fake `docker` (v2 plugin included) and `docker-compose`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER.format(python=sys.executable))
    (bin_dir / "docker-compose").write_text(FAKE_COMPOSE_V1)
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "calls.jsonl"))
    return bin_dir


def calls(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "calls.jsonl"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def fake_settings(bin_dir: Path, **overrides: object) -> ComposeSettings:
    return ComposeSettings(
        docker_binary=str(bin_dir / "docker"),
        compose_v1_binary=str(bin_dir / "docker-compose"),
        **overrides,  # type: ignore[arg-type]
    )


async def test_auto_prefers_v2(fake_bin: Path, tmp_path: Path) -> None:
    assert await detect_variant(fake_settings(fake_bin)) == ("v2", "Docker Compose version v2.29.7")
    assert calls(tmp_path) == [["compose", "version"]]


async def test_auto_falls_back_to_v1(fake_bin: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_BROKEN", "compose")
    assert await resolve_variant(fake_settings(fake_bin)) == "v1"


async def test_auto_takes_v1_without_starting_it(
    fake_bin: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """v1 is Python and takes a second to start: a task's detection does not run it (the
    release's `config` call that follows proves it works); v2's probe says nothing into
    the task's timeline."""
    monkeypatch.setenv("FAKE_BROKEN", "compose")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    seen: list[str] = []
    with process.streaming_output(seen.append):
        assert await resolve_variant(fake_settings(fake_bin)) == "v1"
    assert calls(tmp_path) == [["compose", "version"]]
    assert seen == []


async def test_auto_finds_the_v2_plugin_without_a_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugins = tmp_path / "docker-config" / "cli-plugins"
    plugins.mkdir(parents=True)
    (plugins / "docker-compose").write_text("#!/bin/sh\nexit 99\n")
    (plugins / "docker-compose").chmod(0o755)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no docker, no docker-compose
    assert await resolve_variant(ComposeSettings()) == "v2"


async def test_the_variant_is_found_once_per_agent(
    fake_bin: Path,
    tmp_path: Path,
    builder: ReleaseBuilder,
    monkeypatch: pytest.MonkeyPatch,
    make_deployer: Callable[..., ComposeDeployer],
) -> None:
    monkeypatch.setenv("FAKE_BROKEN", "compose")
    deployer = make_deployer(
        docker_binary=str(fake_bin / "docker"), compose_v1_binary=str(fake_bin / "docker-compose")
    )
    for version in ("1.0.0", "1.0.1"):
        request = builder.request(version, {"docker-compose.yml": COMPOSE_ONLY})
        await deployer.validate(request)
    probes = [c for c in calls(tmp_path) if c[:2] == ["compose", "version"]]
    v1_runs = [c for c in calls(tmp_path) if c == ["docker-compose"]]
    assert (len(probes), len(v1_runs)) == (1, 2)  # one probe; one `config` per task


async def test_configured_variant_is_used_without_probing(fake_bin: Path, tmp_path: Path) -> None:
    assert await resolve_variant(fake_settings(fake_bin, command="v1")) == "v1"
    assert calls(tmp_path) == []


async def test_no_compose_at_all_is_a_clear_error(tmp_path: Path) -> None:
    settings = ComposeSettings(docker_binary=str(tmp_path / "docker"), compose_v1_binary="/no/dc")
    with pytest.raises(DeployError) as failure:
        await detect_variant(settings)
    message = str(failure.value)
    assert message.startswith("no Docker Compose command found (")
    assert f"`{tmp_path}/docker compose version`" in message
    assert "`/no/dc version`" in message
    assert message.endswith("or set WRKTALK_AGENT_COMPOSE_COMMAND")
    assert failure.value.system_changed is False


async def test_preflight_reports_each_part(
    fake_bin: Path, make_deployer: Callable[..., ComposeDeployer]
) -> None:
    deployer = make_deployer(
        docker_binary=str(fake_bin / "docker"), compose_v1_binary=str(fake_bin / "docker-compose")
    )
    results = [(r.name, r.ok, r.detail) for r in await deployer.check()]
    assert results == [
        ("docker", True, "engine 27.3.1"),
        ("compose", True, "v2 (detected): Docker Compose version v2.29.7"),
        ("working dir", True, f"{deployer.settings.working_dir}/releases is writable"),
    ]


async def test_preflight_failures_say_why(
    fake_bin: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_deployer: Callable[..., ComposeDeployer],
) -> None:
    monkeypatch.setenv("FAKE_BROKEN", "engine compose")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    deployer = make_deployer(
        docker_binary=str(fake_bin / "docker"),
        compose_v1_binary="/no/docker-compose",
        working_dir=blocker / "compose",
    )
    docker, compose, working_dir = await deployer.check()
    assert not docker.ok and "Cannot connect to the Docker daemon" in docker.detail
    assert not compose.ok and compose.detail.startswith("no Docker Compose command found")
    assert not working_dir.ok and working_dir.detail.startswith(
        f"{blocker}/compose/releases is not writable"
    )


async def test_preflight_with_configured_v1_checks_v1(
    fake_bin: Path, make_deployer: Callable[..., ComposeDeployer]
) -> None:
    deployer = make_deployer(
        command="v1",
        docker_binary=str(fake_bin / "docker"),
        compose_v1_binary=str(fake_bin / "docker-compose"),
    )
    compose = (await deployer.check())[1]
    assert (compose.ok, compose.detail) == (
        True,
        "v1 (configured): docker-compose version 1.29.2, build unknown",
    )


def v2_release(
    builder: ReleaseBuilder, image: bytes = b"image", reports: Reports | None = None
) -> DeployRequest:
    files: dict[str, bytes | str] = {
        "compose.yaml": "services:\n  web:\n    image: app:1\n",
        "images/app.tar": image,
    }
    return builder.request("1.2.3", files, env_data="TOKEN=secret\n", reports=reports)


async def test_v2_deploy_runs_exactly_these_commands(
    fake_bin: Path,
    tmp_path: Path,
    builder: ReleaseBuilder,
    make_deployer: Callable[..., ComposeDeployer],
) -> None:
    deployer = make_deployer(
        docker_binary=str(fake_bin / "docker"), project_name="wrktalk", wait_timeout=120
    )
    reports = Reports()
    request = v2_release(builder, reports=reports)
    outcome = await deployer.deploy(request)
    release_dir = deployer.settings.working_dir / "releases" / "1.2.3"
    base = [
        "compose", "-p", "wrktalk", "-f", f"{release_dir}/compose.yaml",
        "-f", f"{release_dir}/.wrktalk-release.yml", "--env-file", f"{release_dir}/.env",
    ]  # fmt: skip
    listing = [
        "ps", "--all", "--no-trunc", "--filter", "label=com.docker.compose.project=wrktalk",
        "--filter", "label=com.docker.compose.oneoff=False", "--quiet",
    ]  # fmt: skip
    done = calls(tmp_path)
    # the event stream runs beside the listing: its place in the log varies
    [events] = [c for c in done if c[0] == "events"]
    done.remove(events)
    assert events[:2] == ["events", "--since"]
    assert "label=com.docker.compose.project=wrktalk" in events
    assert done == [
        ["compose", "version"],
        ["load", "-i", f"{request.workdir}/images/app.tar"],
        [*base, "up", "-d", "--remove-orphans"],
        listing,
        ["inspect", "0123456789ab"],
    ]
    assert outcome.output.strip() == "Container wrktalk-web-1  Started"
    assert outcome.details["compose"] == "v2"
    assert outcome.details["containers"] == {"wrktalk-web-1": "running, healthy"}
    assert reports.lines == [
        "compose: docker load -i images/app.tar",
        f"compose: release 1.2.3 installed in {release_dir}",
        "compose: v2 up of project wrktalk (deploy 1.2.3)",
        "compose: 1 container(s) ready",
    ]


async def test_v2_unhealthy_names_the_container_and_shows_its_logs(
    fake_bin: Path,
    builder: ReleaseBuilder,
    monkeypatch: pytest.MonkeyPatch,
    make_deployer: Callable[..., ComposeDeployer],
) -> None:
    monkeypatch.setenv("FAKE_BROKEN", "up-fails")
    deployer = make_deployer(docker_binary=str(fake_bin / "docker"))
    with pytest.raises(DeployError) as failure:
        await deployer.deploy(v2_release(builder))
    assert str(failure.value) == (
        "compose up failed for release 1.2.3: dependency failed to start: container "
        "wrktalk-web-1 is unhealthy; not ready: wrktalk-web-1 (running, unhealthy)"
    )
    assert failure.value.system_changed is True
    assert failure.value.output.splitlines() == [
        "dependency failed to start: container wrktalk-web-1 is unhealthy",
        "--- docker logs wrktalk-web-1 (last 100 lines) ---",
        "web: cannot reach the database",
    ]


async def test_image_that_fails_to_load_stops_before_compose(
    fake_bin: Path,
    tmp_path: Path,
    builder: ReleaseBuilder,
    make_deployer: Callable[..., ComposeDeployer],
) -> None:
    deployer = make_deployer(docker_binary=str(fake_bin / "docker"))
    with pytest.raises(DeployError) as failure:
        await deployer.deploy(v2_release(builder, image=b"bad tar"))
    assert str(failure.value) == (
        "docker load of images/app.tar failed: "
        "Error processing tar file(exit status 1): unexpected EOF"
    )
    assert failure.value.system_changed is False
    assert [c[0] for c in calls(tmp_path)] == ["compose", "load"]


# -- the subprocess runner ------------------------------------------------------------


async def test_output_is_bounded_to_its_tail() -> None:
    result = await run([sys.executable, "-c", "print('x' * 50000); print('the end')"])
    assert result.ok
    assert len(result.output.encode()) <= TAIL_BYTES
    assert result.output.endswith("x\nthe end\n")
    assert result.summary() == "the end"


async def test_missing_executable_reads_like_a_shell() -> None:
    result = await run(["/nonexistent/docker", "info"])
    assert result.returncode == NOT_FOUND
    assert result.summary() == "/nonexistent/docker: No such file or directory"


async def test_timeout_kills_the_command() -> None:
    result = await run(["sleep", "30"], timeout=0.3)
    assert result.returncode == TIMED_OUT
    assert result.summary() == "sleep: timed out after 0.3s"


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie is dead, merely not reaped yet


async def test_cancelling_kills_the_command_and_its_children(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 60 & echo $$ $! > {pids}; wait"
    task = asyncio.create_task(run(["sh", "-c", script]))
    for _ in range(100):
        if pids.exists() and pids.read_text().strip():
            break
        await asyncio.sleep(0.05)
    shell, child = (int(p) for p in pids.read_text().split())
    assert alive(shell) and alive(child)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(50):
        if not alive(shell) and not alive(child):
            break
        await asyncio.sleep(0.05)
    assert not alive(shell) and not alive(child)


async def test_env_content_is_not_in_results(
    fake_bin: Path, builder: ReleaseBuilder, make_deployer: Callable[..., ComposeDeployer]
) -> None:
    deployer = make_deployer(docker_binary=str(fake_bin / "docker"))
    reports = Reports()
    outcome = await deployer.deploy(v2_release(builder, reports=reports))
    assert "secret" not in outcome.output + json.dumps(outcome.details) + "".join(reports.lines)
    assert os.environ.get("TOKEN") is None


COMPOSE_ONLY = "services:\n  web:\n    image: busybox:latest\n"


@pytest.mark.parametrize("mode", ["fail", "warn"])
async def test_validation_that_cannot_run_fails_or_warns_as_configured(
    make_deployer: Callable[..., ComposeDeployer], builder: ReleaseBuilder, mode: str
) -> None:
    """No compose command on the host: the release cannot be checked. By default that
    refuses it (before maintenance); with `warn` the deploy may go on, and says so."""
    deployer = make_deployer(
        command="v1",
        compose_v1_binary="/nonexistent/docker-compose",
        on_validation_unavailable=mode,
    )
    request = builder.request("1.0.0", {"docker-compose.yml": COMPOSE_ONLY})
    if mode == "fail":
        with pytest.raises(ValidationError) as refused:
            await deployer.validate(request)
        assert "could not run" in str(refused.value) or "could not be validated" in str(
            refused.value
        )
        assert "ON_VALIDATION_UNAVAILABLE=warn" in str(refused.value)
    else:
        [warning] = await deployer.validate(request)
        assert "could not run" in warning or "could not be validated" in warning
