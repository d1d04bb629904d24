"""Settings, registration and the shipped snippets of the nginx plugin."""

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
from wrktalk_agent_nginx import NginxMaintenance, NginxSettings, render_snippets
from wrktalk_agent_nginx.testing import find_nginx, free_port, plugin_context

PLUGIN_DIR = Path(__file__).resolve().parents[1]
REPO_DOCS = PLUGIN_DIR.parents[1] / "docs" / "maintenance.md"


def test_entry_point_registers_the_nginx_handler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (entry_point,) = md.entry_points(group="wrktalk_agent", name="nginx")
    registry = PluginRegistry(entry_points=False)
    registry.register_module(entry_point.load(), name="nginx")
    assert registry.names("maintenance handler") == ["nginx"]

    monkeypatch.setenv("WRKTALK_AGENT_NGINX_FLAG_FILE", str(tmp_path / "flag"))
    monkeypatch.setenv("WRKTALK_AGENT_NGINX_RELOAD_COMMAND", '["nginx", "-s", "reload"]')
    backend = registry.instantiate("maintenance handler", "nginx", plugin_context(tmp_path))
    assert isinstance(backend, NginxMaintenance)
    assert backend.settings.flag_file == tmp_path / "flag"
    assert backend.settings.reload_command == ["nginx", "-s", "reload"]


def test_defaults() -> None:
    settings = NginxSettings()
    assert settings.flag_file == Path("/var/run/wrktalk/maintenance")
    assert settings.reload_command is None


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("FLAG_FILE", "run/maintenance", "must be an absolute path"),
        ("RELOAD_COMMAND", "[]", "must name a program"),
        ("RELOAD_COMMAND", "nginx -s reload", "JSON"),
        ("RELOAD_TIMEOUT", "0", "greater than 0"),
    ],
)
def test_invalid_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(f"WRKTALK_AGENT_NGINX_{name}", value)
    with pytest.raises(SettingsError) as excinfo:
        load_backend_settings(NginxMaintenance)
    assert f"WRKTALK_AGENT_NGINX_{name}" in str(excinfo.value)
    assert message in str(excinfo.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"flag_file": "/run/wrktalk/maintenance; return 200"},
        {"flag_file": "relative/maintenance"},
        {"page_file": "/srv/page.html}"},
        {"admin_networks": ["10.0.0.0/33"]},
        {"exempt_paths": ["/healthz; allow all"]},
        {"exempt_paths": ["healthz"]},
    ],
)
def test_render_rejects_values_that_would_change_the_config(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        render_snippets(**kwargs)  # type: ignore[arg-type]


def test_default_snippets_are_valid_nginx_config(tmp_path: Path) -> None:
    nginx = find_nginx()
    if nginx is None:
        skip_unless_required("nginx is not installed (Debian: apt-get install nginx-light)")
    snippets = render_snippets()
    (tmp_path / "http.conf").write_text(snippets.http)
    (tmp_path / "server.conf").write_text(snippets.server)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\n"
        "events {}\n"
        # `nginx -t` opens the logs and binds the listen address, so keep both unprivileged.
        f"http {{ access_log off; include {tmp_path}/http.conf;"
        f" server {{ listen 127.0.0.1:{free_port()}; include {tmp_path}/server.conf; }} }}\n"
    )
    result = subprocess.run(
        [
            nginx,
            "-t",
            "-p",
            str(tmp_path),
            "-c",
            str(tmp_path / "nginx.conf"),
            "-e",
            str(tmp_path / "error.log"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("document", [PLUGIN_DIR / "README.md", REPO_DOCS], ids=["readme", "docs"])
def test_documented_snippets_match_the_shipped_ones(document: Path) -> None:
    if document == REPO_DOCS and not document.exists():
        pytest.skip("docs/maintenance.md is only there in a checkout of the whole repository")
    text = document.read_text()
    snippets = render_snippets()
    assert snippets.http in text
    assert snippets.server in text
