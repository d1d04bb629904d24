"""Stable release directories: ``WORKING_DIR/releases/<version>/``.

The core deletes its temp dir after every task, but containers keep bind-mounting files
of the release (config, static assets), so each release is copied to a directory that
outlives the task. Current and previous are kept; older ones are pruned.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from wrktalk_agent.interfaces import VERSION_PATTERN

from .layout import IMAGES_DIR, ReleaseLayout

RELEASES_DIR = "releases"
ENV_FILE_NAME = ".env"
#: the agent's own compose file, merged over the release's: labels every service's
#: containers with the release version (what ``live_release`` reads back)
LABELS_FILE_NAME = ".wrktalk-release.yml"
RELEASE_LABEL = "io.wrktalk.release"
#: prefixes of our own scratch directories inside releases/; never valid versions
_STAGING_PREFIX = ".tmp-"
_REPLACED_PREFIX = ".old-"


@dataclass(frozen=True)
class InstalledRelease:
    path: Path
    compose_file: Path
    env_file: Path | None
    labels_file: Path
    #: a directory for this version existed and was replaced: containers still running
    #: from it bind-mount the removed copy, so they must be recreated
    replaced: bool


def install_release(
    working_dir: Path, version: str, layout: ReleaseLayout, env_file: Path | None
) -> InstalledRelease:
    """Copy the extracted release to ``releases/<version>`` atomically.

    The copy is built in a hidden sibling and renamed into place, so the directory either
    is complete or does not exist. Bundled image tars are not copied: they are loaded
    from the task's temp dir and would only fill the disk. ``version`` must already be
    validated (it becomes a path component).
    """
    releases = working_dir / RELEASES_DIR
    releases.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(releases)
    staging = Path(tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{version}-", dir=releases))
    try:
        shutil.copytree(
            layout.root,
            staging,
            symlinks=True,
            dirs_exist_ok=True,
            ignore=_skip_images(layout.root),
        )
        staged_env = staging / ENV_FILE_NAME
        if env_file is not None:
            shutil.copyfile(env_file, staged_env)
        if staged_env.exists():
            staged_env.chmod(0o600)
        (staging / LABELS_FILE_NAME).write_text(labels_override(version, layout.services))
        # mtime orders releases for pruning; copytree copied the source's.
        os.utime(staging)
        target = releases / version
        replaced = target.exists()
        _move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    installed_env = target / ENV_FILE_NAME
    return InstalledRelease(
        path=target,
        compose_file=target / layout.compose_file.relative_to(layout.root),
        env_file=installed_env if installed_env.exists() else None,
        labels_file=target / LABELS_FILE_NAME,
        replaced=replaced,
    )


def labels_override(version: str, services: Iterable[str]) -> str:
    """A compose file that adds the release label to each service (JSON is YAML)."""
    model = {"services": {name: {"labels": {RELEASE_LABEL: version}} for name in services}}
    return json.dumps(model, indent=2) + "\n"


def prune_releases(working_dir: Path, keep: int, protected: Iterable[str]) -> list[str]:
    """Delete the oldest release directories beyond ``keep``; never those in ``protected``
    (the release just applied and the one it replaced). Returns the removed versions."""
    releases = working_dir / RELEASES_DIR
    if not releases.is_dir():
        return []
    protected = set(protected)
    candidates = [
        path
        for path in releases.iterdir()
        if VERSION_PATTERN.fullmatch(path.name) and path.is_dir() and not path.is_symlink()
    ]
    room = max(keep - sum(1 for p in candidates if p.name in protected), 0)
    others = sorted(
        (p for p in candidates if p.name not in protected),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    removed = others[room:]
    for path in removed:
        shutil.rmtree(path)
    return sorted(p.name for p in removed)


def _move_into_place(staging: Path, target: Path) -> None:
    if not target.exists():
        staging.rename(target)
        return
    # rename() cannot replace a non-empty directory: swap through a hidden name.
    aside = target.with_name(f"{_REPLACED_PREFIX}{target.name}-{uuid.uuid4().hex[:8]}")
    target.rename(aside)
    try:
        staging.rename(target)
    except BaseException:
        aside.rename(target)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _remove_leftovers(releases: Path) -> None:
    """Scratch directories of an interrupted install (only one deploy runs at a time)."""
    for path in releases.iterdir():
        if path.name.startswith((_STAGING_PREFIX, _REPLACED_PREFIX)) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def _skip_images(root: Path) -> Callable[[str, list[str]], list[str]]:
    top = os.fspath(root)

    def ignore(directory: str, names: list[str]) -> list[str]:
        return [IMAGES_DIR] if directory == top and IMAGES_DIR in names else []

    return ignore
