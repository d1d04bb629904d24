"""The change summary between two releases' compose files (pure: no Docker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wrktalk_agent.interfaces import DeployError
from wrktalk_agent_compose.changes import summarize_changes

OLD = """\
services:
  web:
    image: registry.example/wrktalk/web:2.3.0
    ports:
      - "127.0.0.1:${APP_PORT}:8080"
  cron:
    image: registry.example/wrktalk/cron:1.0
  db:
    image: postgres:16
"""

NEW = """\
services:
  web:
    image: registry.example/wrktalk/web:2.4.0
    ports:
      - target: 8080
        published: 8443
        host_ip: 127.0.0.1
  db:
    image: postgres:16
  worker:
    image: registry.example/wrktalk/worker:2.4.0
  assets:
    build: ./assets
"""


def release(root: Path, compose: str, name: str = "docker-compose.yml") -> Path:
    root.mkdir()
    (root / name).write_text(compose)
    return root


def test_services_added_removed_and_images_and_ports_changed(tmp_path: Path) -> None:
    old = release(tmp_path / "old", OLD)
    new = release(tmp_path / "new", NEW, "compose.yaml")
    assert summarize_changes(old, new) == [
        "service added: assets (built from source)",
        "service added: worker (registry.example/wrktalk/worker:2.4.0)",
        "service removed: cron (registry.example/wrktalk/cron:1.0)",
        "image changed: web registry.example/wrktalk/web:2.3.0"
        " → registry.example/wrktalk/web:2.4.0",
        "published ports changed: web 127.0.0.1:${APP_PORT}:8080 → 127.0.0.1:8443:8080",
    ]


def test_a_release_that_adds_a_service_and_changes_an_image(tmp_path: Path) -> None:
    old = release(tmp_path / "old", "services:\n  web:\n    image: app:1.0\n")
    new = release(
        tmp_path / "new",
        "services:\n  web:\n    image: app:1.1\n  worker:\n    image: worker:1.1\n",
    )
    assert summarize_changes(old, new) == [
        "service added: worker (worker:1.1)",
        "image changed: web app:1.0 → app:1.1",
    ]


def test_first_release_and_no_change(tmp_path: Path) -> None:
    new = release(tmp_path / "new", NEW)
    assert summarize_changes(None, new) == ["first release: services assets, db, web, worker"]
    same = release(tmp_path / "same", NEW)
    assert summarize_changes(same, new) == []  # said once, as "no change", by the agent


def test_unreadable_release_is_a_clear_error(tmp_path: Path) -> None:
    old = release(tmp_path / "old", OLD)
    broken = release(tmp_path / "broken", "services: [\n")
    with pytest.raises(DeployError, match=r"^invalid YAML in docker-compose.yml at line 2"):
        summarize_changes(old, broken)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DeployError, match=r"^no compose file in "):
        summarize_changes(old, empty)
