"""When a container counts as ready: the rule the v1 wait applies (v2's --wait rule)."""

from __future__ import annotations

import pytest

from wrktalk_agent_compose.health import ContainerState, Readiness, readiness


def state(
    status: str, health: str | None = None, exit_code: int = 0, service: str = "web"
) -> ContainerState:
    return ContainerState(
        id="abc", name="p-web-1", service=service, status=status, health=health, exit_code=exit_code
    )


@pytest.mark.parametrize(
    ("container", "expected"),
    [
        (state("running"), Readiness.READY),
        (state("running", "healthy"), Readiness.READY),
        (state("running", "starting"), Readiness.PENDING),
        (state("running", "unhealthy"), Readiness.FAILED),
        (state("created"), Readiness.PENDING),
        (state("restarting"), Readiness.PENDING),
        (state("exited", exit_code=0), Readiness.FAILED),
        (state("exited", exit_code=3), Readiness.FAILED),
        (state("dead"), Readiness.FAILED),
        (state("exited", exit_code=0, service="migrate"), Readiness.READY),
        (state("exited", exit_code=1, service="migrate"), Readiness.FAILED),
        (state("running", service="migrate"), Readiness.PENDING),
    ],
)
def test_readiness(container: ContainerState, expected: Readiness) -> None:
    assert readiness(container, one_shot_services=frozenset({"migrate"})) is expected


def test_state_from_docker_inspect() -> None:
    inspected = {
        "Id": "0123456789abcdef0123",
        "Name": "/wrktalk-web-1",
        "Config": {"Labels": {"com.docker.compose.service": "web"}},
        "State": {"Status": "exited", "ExitCode": 137, "Health": {"Status": "unhealthy"}},
    }
    parsed = ContainerState.from_inspect(inspected)
    assert parsed == ContainerState(
        id="0123456789ab",
        name="wrktalk-web-1",
        service="web",
        status="exited",
        health="unhealthy",
        exit_code=137,
    )
    assert parsed.describe() == "exited (code 137)"
    no_health = {"Id": "x", "Name": "/a", "State": {"Status": "running"}}
    assert ContainerState.from_inspect(no_health).describe() == "running"
