"""The HAProxy handler against a real HAProxy running the shipped snippet."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from wrktalk_agent.interfaces import BackendError, MaintenanceHandler
from wrktalk_agent_haproxy import HaproxyMaintenance, HaproxySettings
from wrktalk_agent_haproxy.testing import UPSTREAM_BODY, HaproxyProxy, HttpResponse, plugin_context

PAGE_TITLE = "WrkTalk is being updated"


def handler(settings: HaproxySettings, tmp_path: Path) -> HaproxyMaintenance:
    return HaproxyMaintenance(settings, plugin_context(tmp_path))


def with_servers(settings: HaproxySettings, *servers: str) -> HaproxySettings:
    return HaproxySettings(socket=settings.socket, servers=list(servers))


def assert_upstream(response: HttpResponse) -> None:
    assert (response.status, response.body) == (200, UPSTREAM_BODY)


def assert_maintenance_page(response: HttpResponse) -> None:
    assert response.status == 503
    assert PAGE_TITLE in response.body
    assert response.headers["retry-after"] == "300"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-type"] == "text/html; charset=utf-8"


def admin_states(proxy: HaproxyProxy) -> dict[str, int]:
    """srv_admin_state of each server, read straight from HAProxy."""
    lines = proxy.runtime_api(f"show servers state {proxy.backend}").splitlines()[2:]
    return {fields[3]: int(fields[6]) for fields in (line.split() for line in lines)}


@pytest.mark.parametrize("transport", ["unix", "tcp"])
async def test_enable_and_disable_switch_the_site(
    haproxy_proxy: HaproxyProxy, tmp_path: Path, transport: str
) -> None:
    settings = haproxy_proxy.settings if transport == "unix" else haproxy_proxy.tcp_settings
    maintenance = handler(settings, tmp_path)
    assert isinstance(maintenance, MaintenanceHandler)
    assert_upstream(haproxy_proxy.get("/"))
    assert await maintenance.status() is False

    await maintenance.enable("deploy 1.2.3")
    assert_maintenance_page(haproxy_proxy.get("/"))
    assert_maintenance_page(haproxy_proxy.get("/api/messages", method="POST", body=b"{}"))
    assert admin_states(haproxy_proxy) == {"app1": 1, "app2": 1}
    assert await maintenance.status() is True

    await maintenance.enable("deploy 1.2.3, again")  # idempotent
    assert_maintenance_page(haproxy_proxy.get("/"))
    assert await maintenance.status() is True

    await maintenance.disable()
    assert_upstream(haproxy_proxy.get("/"))
    assert admin_states(haproxy_proxy) == {"app1": 0, "app2": 0}
    assert await maintenance.status() is False

    await maintenance.disable()  # idempotent
    assert_upstream(haproxy_proxy.get("/"))
    assert await maintenance.status() is False


async def test_listed_servers_only(haproxy_proxy: HaproxyProxy, tmp_path: Path) -> None:
    one = handler(with_servers(haproxy_proxy.settings, "wrktalk/app1"), tmp_path)
    await one.enable("drain app1")
    assert admin_states(haproxy_proxy) == {"app1": 1, "app2": 0}
    assert_upstream(haproxy_proxy.get("/"))  # app2 still serves
    assert await one.status() is True

    both = handler(with_servers(haproxy_proxy.settings, "wrktalk/app1", "wrktalk/app2"), tmp_path)
    await both.enable("deploy")
    assert_maintenance_page(haproxy_proxy.get("/"))
    await both.disable()
    assert admin_states(haproxy_proxy) == {"app1": 0, "app2": 0}


async def test_status_reads_haproxy_not_memory(haproxy_proxy: HaproxyProxy, tmp_path: Path) -> None:
    # Maintenance set by someone else (an operator, or an agent that crashed since) counts.
    assert haproxy_proxy.runtime_api("set server wrktalk/app2 state maint") == ""
    assert await handler(haproxy_proxy.settings, tmp_path).status() is True
    await handler(haproxy_proxy.settings, tmp_path).disable()
    assert await handler(haproxy_proxy.settings, tmp_path).status() is False
    assert_upstream(haproxy_proxy.get("/"))


@pytest.mark.parametrize(
    ("servers", "message"),
    [
        (["nosuch"], "HAProxy has no backend 'nosuch'"),
        (["nosuch/app1"], "HAProxy has no backend 'nosuch'"),
        (["wrktalk/app9"], "HAProxy backend 'wrktalk' has no server 'app9' (it has: app1, app2"),
    ],
)
async def test_wrong_names_fail_before_anything_changes(
    haproxy_proxy: HaproxyProxy, tmp_path: Path, servers: list[str], message: str
) -> None:
    # The good entry comes first: enable must not have touched it when it fails.
    settings = with_servers(haproxy_proxy.settings, "wrktalk/app1", *servers)
    maintenance = handler(settings, tmp_path)
    for call in (lambda: maintenance.enable("deploy"), maintenance.status):
        with pytest.raises(BackendError, match=re.escape(message)):
            await call()
    assert admin_states(haproxy_proxy) == {"app1": 0, "app2": 0}
    assert_upstream(haproxy_proxy.get("/"))


async def test_disable_restores_what_it_can_and_reports_the_rest(
    haproxy_proxy: HaproxyProxy, tmp_path: Path
) -> None:
    haproxy_proxy.runtime_api("set server wrktalk/app1 state maint")
    haproxy_proxy.runtime_api("set server wrktalk/app2 state maint")
    settings = with_servers(haproxy_proxy.settings, "nosuch", "wrktalk")
    with pytest.raises(BackendError, match="HAProxy has no backend 'nosuch'"):
        await handler(settings, tmp_path).disable()
    assert admin_states(haproxy_proxy) == {"app1": 0, "app2": 0}
    assert_upstream(haproxy_proxy.get("/"))


async def test_socket_without_admin_level_is_refused(
    haproxy_proxy: HaproxyProxy, tmp_path: Path
) -> None:
    settings = HaproxySettings(socket=str(haproxy_proxy.operator_socket), servers=["wrktalk"])
    with pytest.raises(BackendError, match=r"permission denied .*needs 'level admin'"):
        await handler(settings, tmp_path).enable("deploy")
    assert admin_states(haproxy_proxy) == {"app1": 0, "app2": 0}

    results = await handler(settings, tmp_path).check()
    assert results[0].ok is False
    assert "has level operator" in results[0].detail


async def test_check_reports_level_and_each_entry(
    haproxy_proxy: HaproxyProxy, tmp_path: Path
) -> None:
    settings = with_servers(haproxy_proxy.tcp_settings, "wrktalk", "wrktalk/app2", "other")
    results = await handler(settings, tmp_path).check()
    assert [(r.name, r.ok) for r in results] == [
        ("haproxy runtime api", True),
        ("haproxy wrktalk", True),
        ("haproxy wrktalk/app2", True),
        ("haproxy other", False),
    ]
    assert results[1].detail == "servers: app1, app2"
    assert "no backend 'other'" in results[3].detail


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("kind", ["missing unix socket", "refused tcp port"])
async def test_unreachable_runtime_api_is_a_clear_error(tmp_path: Path, kind: str) -> None:
    address = (
        str(tmp_path / "nothing.sock")
        if kind.startswith("missing")
        else (f"127.0.0.1:{closed_port()}")
    )
    maintenance = handler(HaproxySettings(socket=address, servers=["wrktalk"]), tmp_path)
    for call in (lambda: maintenance.enable("deploy"), maintenance.disable, maintenance.status):
        with pytest.raises(BackendError, match="cannot reach the HAProxy Runtime API at"):
            await call()
    (result,) = await maintenance.check()
    assert result.ok is False
    assert "cannot reach" in result.detail


async def test_silent_runtime_api_times_out(tmp_path: Path) -> None:
    # A listener that accepts and never answers, e.g. a wrong service on that port.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        settings = HaproxySettings(socket=address, servers=["wrktalk"], timeout=0.3)
        with pytest.raises(BackendError, match=r"did not answer .* within 0\.3s"):
            await handler(settings, tmp_path).status()
