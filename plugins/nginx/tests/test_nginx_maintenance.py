"""The nginx handler against a real nginx running the shipped snippets."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from wrktalk_agent.interfaces import BackendError, MaintenanceHandler
from wrktalk_agent.testing import skip_unless_required
from wrktalk_agent_nginx import NginxMaintenance, NginxSettings
from wrktalk_agent_nginx.testing import (
    ADMIN_SOURCE_ADDRESS,
    UPSTREAM_BODY,
    HttpResponse,
    NginxProxy,
    find_nginx,
    plugin_context,
)

PAGE_TITLE = "WrkTalk is being updated"


def handler(settings: NginxSettings, tmp_path: Path) -> NginxMaintenance:
    return NginxMaintenance(settings, plugin_context(tmp_path))


def assert_upstream(response: HttpResponse) -> None:
    assert (response.status, response.body) == (200, UPSTREAM_BODY)


def assert_maintenance_page(response: HttpResponse) -> None:
    assert response.status == 503
    assert PAGE_TITLE in response.body
    assert response.headers["retry-after"] == "300"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-type"].startswith("text/html")


async def test_enable_and_disable_switch_the_site(nginx_proxy: NginxProxy, tmp_path: Path) -> None:
    maintenance = handler(nginx_proxy.settings, tmp_path)
    assert isinstance(maintenance, MaintenanceHandler)
    assert_upstream(nginx_proxy.get("/"))
    assert await maintenance.status() is False

    await maintenance.enable("deploy 1.2.3")
    assert_maintenance_page(nginx_proxy.get("/"))
    assert_maintenance_page(nginx_proxy.get("/api/messages"))
    assert await maintenance.status() is True

    await maintenance.enable("deploy 1.2.3, again")  # idempotent
    assert_maintenance_page(nginx_proxy.get("/"))
    assert await maintenance.status() is True

    await maintenance.disable()
    assert_upstream(nginx_proxy.get("/"))
    assert await maintenance.status() is False

    await maintenance.disable()  # idempotent: nothing to remove is fine
    assert_upstream(nginx_proxy.get("/"))
    assert await maintenance.status() is False


async def test_writes_get_the_page_not_a_405(nginx_proxy: NginxProxy, tmp_path: Path) -> None:
    await handler(nginx_proxy.settings, tmp_path).enable("deploy")
    for method in ("POST", "PUT", "DELETE"):
        assert_maintenance_page(nginx_proxy.get("/api/messages", method=method, body=b"{}"))


async def test_allow_list_bypasses_maintenance(nginx_proxy: NginxProxy, tmp_path: Path) -> None:
    await handler(nginx_proxy.settings, tmp_path).enable("deploy")
    assert_maintenance_page(nginx_proxy.get("/healthz/extra"))  # exact paths only
    assert_upstream(nginx_proxy.get("/healthz"))
    assert_upstream(nginx_proxy.get("/", source_address=ADMIN_SOURCE_ADDRESS))
    # The page's own URI is exempt (error_page re-enters the server checks) but internal,
    # so it is no way around maintenance and not reachable from outside.
    assert nginx_proxy.get("/wrktalk-maintenance.html").status == 404


async def test_flag_holds_reason_time_and_agent(tmp_path: Path) -> None:
    flag = tmp_path / "does" / "not" / "exist" / "maintenance"
    await handler(NginxSettings(flag_file=flag), tmp_path).enable("deploy 2.0.0")

    content = json.loads(flag.read_text())
    assert content["reason"] == "deploy 2.0.0"
    assert content["agent_id"] == "test-agent"
    assert content["since"].endswith("+00:00")
    assert stat.S_IMODE(flag.stat().st_mode) == 0o644
    assert [p.name for p in flag.parent.iterdir()] == ["maintenance"]  # no temp file left


async def test_enable_names_the_flag_when_it_cannot_write(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    flag = blocker / "maintenance"
    with pytest.raises(BackendError, match=f"cannot create the maintenance flag {flag}"):
        await handler(NginxSettings(flag_file=flag), tmp_path).enable("deploy")


async def test_real_nginx_reload_command(nginx_proxy: NginxProxy, tmp_path: Path) -> None:
    settings = nginx_proxy.settings.model_copy(
        update={"reload_command": nginx_proxy.command("-s", "reload")}
    )
    maintenance = handler(settings, tmp_path)
    await maintenance.enable("deploy")
    assert_maintenance_page(nginx_proxy.get("/"))
    await maintenance.disable()
    assert_upstream(nginx_proxy.get("/"))


async def test_reload_runs_after_every_change(tmp_path: Path) -> None:
    log = tmp_path / "reloads"
    script = "import sys; open(sys.argv[1], 'a').write('reload\\n')"
    settings = NginxSettings(
        flag_file=tmp_path / "maintenance", reload_command=[sys.executable, "-c", script, str(log)]
    )
    maintenance = handler(settings, tmp_path)
    await maintenance.enable("deploy")
    await maintenance.disable()
    await maintenance.disable()  # also when already off: an earlier reload may have failed
    assert log.read_text().splitlines() == ["reload"] * 3


async def test_failing_reload_is_an_error_with_its_stderr(tmp_path: Path) -> None:
    nginx = find_nginx()
    if nginx is None:
        skip_unless_required("nginx is not installed (Debian: apt-get install nginx-light)")
    missing = tmp_path / "missing.conf"
    settings = NginxSettings(
        flag_file=tmp_path / "maintenance",
        reload_command=[
            nginx,
            "-e",
            str(tmp_path / "error.log"),
            "-c",
            str(missing),
            "-s",
            "reload",
        ],
    )
    with pytest.raises(BackendError, match=r"failed with exit code 1: .*missing\.conf"):
        await handler(settings, tmp_path).enable("deploy")
    assert await handler(settings, tmp_path).status() is True  # the flag is still written


async def test_reload_command_not_found(tmp_path: Path) -> None:
    settings = NginxSettings(
        flag_file=tmp_path / "maintenance", reload_command=["/nonexistent/nginx", "-s", "reload"]
    )
    with pytest.raises(BackendError, match="could not start"):
        await handler(settings, tmp_path).disable()


async def test_reload_timeout_kills_the_command(tmp_path: Path) -> None:
    settings = NginxSettings(
        flag_file=tmp_path / "maintenance",
        reload_command=[sys.executable, "-c", "import time; time.sleep(30)"],
        reload_timeout=0.3,
    )
    with pytest.raises(BackendError, match=r"did not finish within 0\.3s"):
        await handler(settings, tmp_path).enable("deploy")


async def test_check_reports_directory_and_command(tmp_path: Path) -> None:
    good = NginxSettings(
        flag_file=tmp_path / "new" / "maintenance", reload_command=[sys.executable, "-V"]
    )
    results = await handler(good, tmp_path).check()
    assert [r.ok for r in results] == [True, True]
    assert "will be created" in results[0].detail

    blocker = tmp_path / "file"
    blocker.write_text("")
    bad = NginxSettings(flag_file=blocker / "maintenance", reload_command=["no-such-nginx-bin"])
    results = await handler(bad, tmp_path).check()
    assert [r.ok for r in results] == [False, False]
    assert "is not a directory" in results[0].detail
    assert "'no-such-nginx-bin' not found" in results[1].detail
