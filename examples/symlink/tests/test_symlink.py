"""The symlink deployer on real files, and whole tasks through the agent's pipeline."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import wrktalk_agent_symlink
from wrktalk_agent.testing import plugin_context, registry_with


@pytest.fixture
def root(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    return site


@pytest.fixture
def harness(task_harness, root: Path):
    return task_harness.use(wrktalk_agent_symlink).select(
        deployer="symlink", settings={"symlink": {"root": root}}
    )


@pytest.fixture
def site_server(root: Path) -> Iterator[str]:
    """Serves ROOT/current/index.html; answers 500 when the page says it is broken."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            page = root / "current" / "index.html"
            body = page.read_bytes() if page.exists() else b"nothing deployed"
            self.send_response(500 if b"broken" in body or not page.exists() else 200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def live(root: Path) -> str:
    return os.readlink(root / "current")


async def test_deploys_switch_current_and_rollback_switches_back(harness, root) -> None:
    first = await harness.deploy("1.0.0", {"index.html": "one"}, env_data="TOKEN=x\n")
    assert first.status == "completed", first.error
    assert live(root) == "releases/1.0.0"
    assert (root / "current" / "index.html").read_text() == "one"
    assert oct((root / "current" / ".env").stat().st_mode & 0o777) == "0o600"

    second = await harness.deploy("1.1.0", {"index.html": "two"})
    assert second.status == "completed", second.error
    assert (root / "current" / "index.html").read_text() == "two"
    assert "current → releases/1.1.0" in second.messages("deploy")
    assert second.result["deployer"]["details"]["from"] == "1.0.0"

    back = await harness.rollback()
    assert back.status == "completed", back.error
    assert live(root) == "releases/1.0.0"
    [event] = back.notifications
    assert (event.kind, event.from_version, event.to_version) == (
        "rollback_succeeded",
        "1.1.0",
        "1.0.0",
    )


async def test_a_failed_health_check_rolls_current_back(harness, root, site_server) -> None:
    harness.select(healthcheck_url=site_server, healthcheck_retries=2)
    assert (await harness.deploy("1.0.0", {"index.html": "fine"})).status == "completed"

    report = await harness.deploy("1.1.0", {"index.html": "broken"})

    assert report.status == "failed" and report.exit_code == 1
    assert report.error.startswith(f"health check failed: {site_server} answered 500")
    assert ("auto-rollback", "succeeded") in report.steps()
    assert live(root) == "releases/1.0.0"
    [event] = report.notifications
    assert event.kind == "auto_rollback" and event.rollback_error is None


async def test_old_release_directories_are_pruned(harness, root) -> None:
    harness.select(settings={"symlink": {"keep": 2}})
    for version in ("1.0.0", "1.1.0", "1.2.0", "1.3.0"):
        assert (await harness.deploy(version, {"index.html": version})).status == "completed"
    assert sorted(p.name for p in (root / "releases").iterdir()) == ["1.2.0", "1.3.0"]
    assert live(root) == "releases/1.3.0"


async def test_live_release_reads_the_link_and_check_names_problems(root, tmp_path) -> None:
    registry = registry_with(wrktalk_agent_symlink, settings={"symlink": {"root": root}})
    deployer = registry.instantiate("deployer", "symlink", plugin_context(tmp_path))
    assert (await deployer.live_release()).state == "absent"

    (root / "releases" / "2.0.0").mkdir(parents=True)
    (root / "current").symlink_to("releases/2.0.0")
    state = await deployer.live_release()
    assert (state.version, state.state) == ("2.0.0", "deployed")

    (root / "releases" / "2.0.0").rmdir()
    assert (await deployer.live_release()).state == "half-applied"

    missing = registry_with(
        wrktalk_agent_symlink, settings={"symlink": {"root": tmp_path / "nowhere"}}
    ).instantiate("deployer", "symlink", plugin_context(tmp_path))
    [line] = await missing.check()
    assert not line.ok and "is not a writable directory" in line.detail
