"""Settings, registration and the shipped snippet of the haproxy plugin."""

from __future__ import annotations

import importlib.metadata as md
import subprocess
from pathlib import Path

import pytest

from wrktalk_agent.testing import (
    PluginRegistry,
    SettingsError,
    load_backend_settings,
    skip_unless_required,
)
from wrktalk_agent_haproxy import HaproxyMaintenance, render_config
from wrktalk_agent_haproxy.backend import Target
from wrktalk_agent_haproxy.runtime_api import TcpAddress, UnixAddress, parse_address
from wrktalk_agent_haproxy.testing import find_haproxy, plugin_context

PLUGIN_DIR = Path(__file__).resolve().parents[1]
REPO_DOCS = PLUGIN_DIR.parents[1] / "docs" / "maintenance.md"


def test_entry_point_registers_the_haproxy_handler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (entry_point,) = md.entry_points(group="wrktalk_agent", name="haproxy")
    registry = PluginRegistry(entry_points=False)
    registry.register_module(entry_point.load(), name="haproxy")
    assert registry.names("maintenance handler") == ["haproxy"]

    monkeypatch.setenv("WRKTALK_AGENT_HAPROXY_SOCKET", "tcp://127.0.0.1:9999")
    monkeypatch.setenv("WRKTALK_AGENT_HAPROXY_SERVERS", " wrktalk/app1, api ,")
    backend = registry.instantiate("maintenance handler", "haproxy", plugin_context(tmp_path))
    assert isinstance(backend, HaproxyMaintenance)
    assert backend.settings.address == TcpAddress("127.0.0.1", 9999)
    assert backend.settings.targets == [Target("wrktalk", "app1"), Target("api", None)]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/run/haproxy/admin.sock", UnixAddress("/run/haproxy/admin.sock")),
        ("127.0.0.1:9999", TcpAddress("127.0.0.1", 9999)),
        ("tcp://haproxy.internal:9999", TcpAddress("haproxy.internal", 9999)),
        ("[::1]:9999", TcpAddress("::1", 9999)),
    ],
)
def test_socket_forms(value: str, expected: UnixAddress | TcpAddress) -> None:
    assert parse_address(value) == expected


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SOCKET", "run/haproxy.sock", "neither an absolute unix socket path nor host:port"),
        ("SOCKET", "127.0.0.1", "neither an absolute unix socket path nor host:port"),
        ("SOCKET", "127.0.0.1:99999", "neither an absolute unix socket path nor host:port"),
        ("SOCKET", "http://127.0.0.1:9999", "neither an absolute unix socket path nor host:port"),
        ("SERVERS", "", "list at least one backend"),
        ("SERVERS", "wrktalk/app1/x", "is not 'backend' or 'backend/server'"),
        # The Runtime API runs ';'-separated commands: a name must not smuggle one in.
        ("SERVERS", "wrktalk/app1;shutdown frontend web", "is not 'backend' or 'backend/server'"),
        ("TIMEOUT", "0", "greater than 0"),
    ],
)
def test_invalid_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv("WRKTALK_AGENT_HAPROXY_SERVERS", "wrktalk")
    monkeypatch.setenv(f"WRKTALK_AGENT_HAPROXY_{name}", value)
    with pytest.raises(SettingsError) as excinfo:
        load_backend_settings(HaproxyMaintenance)
    assert f"WRKTALK_AGENT_HAPROXY_{name}" in str(excinfo.value)
    assert message in str(excinfo.value)


def test_servers_are_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WRKTALK_AGENT_HAPROXY_SERVERS", raising=False)
    with pytest.raises(SettingsError, match="WRKTALK_AGENT_HAPROXY_SERVERS: Field required"):
        load_backend_settings(HaproxyMaintenance)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"socket": "/run/haproxy/admin.sock level admin"},
        {"backend": "wrktalk\n    server evil 192.0.2.1:80"},
        {"servers": [("app1", "10.0.0.1:8080 backup")]},
        {"page_file": "/etc/haproxy/my page.html"},
    ],
)
def test_render_rejects_values_that_would_change_the_config(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        render_config(**kwargs)  # type: ignore[arg-type]


def test_default_snippet_is_valid_haproxy_config(tmp_path: Path) -> None:
    haproxy = find_haproxy()
    if haproxy is None:
        skip_unless_required("haproxy is not installed (Debian: apt-get install haproxy)")
    page = tmp_path / "maintenance.html"
    page.write_text("<p>maintenance</p>")  # HAProxy loads the page while checking
    (tmp_path / "maintenance.cfg").write_text(
        render_config(socket=str(tmp_path / "a.sock"), page_file=page)
    )
    result = subprocess.run(
        [haproxy, "-c", "-f", str(tmp_path / "maintenance.cfg")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("document", [PLUGIN_DIR / "README.md", REPO_DOCS], ids=["readme", "docs"])
def test_documented_snippet_matches_the_shipped_one(document: Path) -> None:
    if document == REPO_DOCS and not document.exists():
        pytest.skip("docs/maintenance.md is only there in a checkout of the whole repository")
    assert render_config() in document.read_text()
