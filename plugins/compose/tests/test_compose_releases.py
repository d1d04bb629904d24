"""Stable release directories: atomic install, .env handling, pruning."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from unittest import mock

import pytest

from wrktalk_agent_compose.layout import read_layout
from wrktalk_agent_compose.releases import InstalledRelease, install_release, prune_releases


def extracted(
    tmp_path: Path, version: str, env: str | None = "TOKEN=abc\n"
) -> tuple[Path, Path | None]:
    root = Path(tempfile.mkdtemp(prefix="task-", dir=tmp_path))
    (root / "images").mkdir()
    (root / "config").mkdir()
    (root / "docker-compose.yml").write_text("services:\n  web:\n    image: app\n")
    (root / "config" / "app.conf").write_text(f"version={version}\n")
    (root / "images" / "app.tar").write_bytes(b"image bytes")
    (root / "link").symlink_to("config/app.conf")
    env_file = None
    if env is not None:
        env_file = root / ".env"
        env_file.write_text(env)
        env_file.chmod(0o600)
    return root, env_file


def install(tmp_path: Path, version: str, env: str | None = "TOKEN=abc\n") -> InstalledRelease:
    root, env_file = extracted(tmp_path, version, env)
    return install_release(tmp_path / "work", version, read_layout(root), env_file)


def release_names(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "work" / "releases").iterdir())


def test_install_copies_the_release_without_image_tars(tmp_path: Path) -> None:
    installed = install(tmp_path, "1.0.0")
    assert installed.path == tmp_path / "work" / "releases" / "1.0.0"
    assert installed.compose_file == installed.path / "docker-compose.yml"
    assert installed.env_file == installed.path / ".env"
    assert installed.replaced is False
    assert (installed.path / "config" / "app.conf").read_text() == "version=1.0.0\n"
    assert os.readlink(installed.path / "link") == "config/app.conf"
    assert not (installed.path / "images").exists()
    assert installed.env_file.read_text() == "TOKEN=abc\n"
    assert installed.env_file.stat().st_mode & 0o777 == 0o600
    assert release_names(tmp_path) == ["1.0.0"]  # no scratch directory left behind


def test_env_file_outside_the_workdir_is_copied_private(tmp_path: Path) -> None:
    root, _ = extracted(tmp_path, "1.0.0", env=None)
    outside = tmp_path / "secrets.env"
    outside.write_text("TOKEN=xyz\n")
    outside.chmod(0o644)
    installed = install_release(tmp_path / "work", "1.0.0", read_layout(root), outside)
    assert installed.env_file is not None
    assert installed.env_file.read_text() == "TOKEN=xyz\n"
    assert installed.env_file.stat().st_mode & 0o777 == 0o600


def test_release_without_env_has_no_env_file(tmp_path: Path) -> None:
    assert install(tmp_path, "1.0.0", env=None).env_file is None


def test_reinstalling_a_version_replaces_it_whole(tmp_path: Path) -> None:
    first = install(tmp_path, "1.0.0")
    (first.path / "stale").write_text("from the first copy")
    second = install(tmp_path, "1.0.0")
    assert second.replaced is True
    assert not (second.path / "stale").exists()
    assert release_names(tmp_path) == ["1.0.0"]


def test_failed_copy_leaves_no_directory(tmp_path: Path) -> None:
    root, env_file = extracted(tmp_path, "1.0.0")
    layout = read_layout(root)
    with (
        mock.patch("shutil.copyfile", side_effect=OSError(28, "No space left on device")),
        pytest.raises(OSError, match="No space left"),
    ):
        install_release(tmp_path / "work", "1.0.0", layout, env_file)
    assert release_names(tmp_path) == []


def test_leftovers_of_an_interrupted_install_are_removed(tmp_path: Path) -> None:
    releases = tmp_path / "work" / "releases"
    (releases / ".tmp-1.0.0-abcd").mkdir(parents=True)
    (releases / ".old-0.9.0-1234").mkdir()
    install(tmp_path, "1.0.0")
    assert release_names(tmp_path) == ["1.0.0"]


def aged(tmp_path: Path, versions: list[str]) -> Path:
    """Release dirs whose mtimes follow the list order (oldest first)."""
    releases = tmp_path / "releases"
    for age, version in enumerate(versions):
        (releases / version).mkdir(parents=True)
        os.utime(releases / version, (1_000_000 + age, 1_000_000 + age))
    return releases


def test_prune_keeps_the_newest_and_the_protected(tmp_path: Path) -> None:
    releases = aged(tmp_path, ["0.8.0", "0.9.0", "1.0.0", "1.1.0"])
    removed = prune_releases(tmp_path, keep=2, protected={"1.1.0", "1.0.0"})
    assert removed == ["0.8.0", "0.9.0"]
    assert sorted(p.name for p in releases.iterdir()) == ["1.0.0", "1.1.0"]


def test_prune_never_removes_the_replaced_release_even_when_oldest(tmp_path: Path) -> None:
    # Rollback to 0.8.0 from 1.1.0: both stay, whatever their age.
    releases = aged(tmp_path, ["0.8.0", "0.9.0", "1.0.0", "1.1.0"])
    assert prune_releases(tmp_path, keep=2, protected={"0.8.0", "1.1.0"}) == ["0.9.0", "1.0.0"]
    assert sorted(p.name for p in releases.iterdir()) == ["0.8.0", "1.1.0"]


def test_prune_with_a_larger_keep_keeps_the_newest_others(tmp_path: Path) -> None:
    aged(tmp_path, ["0.8.0", "0.9.0", "1.0.0", "1.1.0"])
    assert prune_releases(tmp_path, keep=3, protected={"1.1.0"}) == ["0.8.0"]


def test_prune_leaves_foreign_entries_alone(tmp_path: Path) -> None:
    releases = aged(tmp_path, ["0.9.0", "1.0.0", "1.1.0"])
    (releases / ".tmp-2.0.0-x").mkdir()
    (releases / "notes.txt").write_text("operator notes")
    (releases / "0.1.0").symlink_to(releases / "0.9.0")
    assert prune_releases(tmp_path, keep=2, protected={"1.1.0"}) == ["0.9.0"]
    assert sorted(p.name for p in releases.iterdir()) == [
        ".tmp-2.0.0-x",
        "0.1.0",
        "1.0.0",
        "1.1.0",
        "notes.txt",
    ]


def test_prune_without_releases_dir_is_a_noop(tmp_path: Path) -> None:
    assert prune_releases(tmp_path / "missing", keep=2, protected=set()) == []
