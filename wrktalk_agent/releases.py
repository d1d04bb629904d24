"""Release directories that outlive a task: ``WORKING_DIR/releases/<version>/`` (for
deployers).

The core securely deletes a task's work dir when the task ends, but what a deploy starts
keeps using the release's files (a container bind-mounting its config, a service reading
its static assets). A deployer copies the release here:

* :func:`install` builds the copy in a hidden sibling and renames it into place, so a
  release directory is either complete or absent, also after a crash mid-copy;
* :func:`point_current` switches a ``current`` symlink atomically;
* :func:`prune` removes the oldest directories beyond a count, never the protected ones
  (the release just applied and the one it replaced);
* :func:`remove` deletes one release directory (after an automatic rollback: the release
  that failed, keeping the one before it for a later rollback).

``version`` must be validated first (it becomes a path component): see
:func:`wrktalk_agent.interfaces.validate_version`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from wrktalk_agent.interfaces import VERSION_PATTERN

__all__ = ["RELEASES_DIR", "Installed", "install", "point_current", "prune", "remove"]

RELEASES_DIR = "releases"
#: prefixes of scratch directories inside releases/; never valid versions
_STAGING_PREFIX = ".tmp-"
_REPLACED_PREFIX = ".old-"


@dataclass(frozen=True)
class Installed:
    path: Path
    #: a directory for this version existed and was replaced (whatever ran from it has
    #: its files deleted under it and must be restarted)
    replaced: bool


def install(
    working_dir: Path,
    version: str,
    source: Path,
    *,
    ignore: Callable[[str, list[str]], Iterable[str]] | None = None,
    finish: Callable[[Path], None] | None = None,
) -> Installed:
    """Copy ``source`` to ``working_dir/releases/<version>`` atomically. ``ignore`` is
    :func:`shutil.copytree`'s; ``finish`` may add or change files in the staged copy
    before it is moved into place."""
    releases = working_dir / RELEASES_DIR
    releases.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(releases)
    staging = Path(tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{version}-", dir=releases))
    try:
        shutil.copytree(source, staging, symlinks=True, dirs_exist_ok=True, ignore=ignore)
        if finish is not None:
            finish(staging)
        os.utime(staging)  # mtime orders releases for pruning; copytree copied the source's
        target = releases / version
        replaced = target.exists()
        _move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Installed(target, replaced)


def point_current(working_dir: Path, target: Path, name: str = "current") -> None:
    """Make ``working_dir/<name>`` a symlink to ``target``, atomically."""
    link = working_dir / name
    temp = link.with_name(f".{name}.tmp")
    temp.unlink(missing_ok=True)
    temp.symlink_to(target)
    os.replace(temp, link)


def prune(working_dir: Path, keep: int, protected: Iterable[str]) -> list[str]:
    """Delete the oldest release directories beyond ``keep``; never those in
    ``protected``. Returns the removed versions."""
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


def remove(working_dir: Path, version: str) -> bool:
    """Delete one release directory (never the one ``current`` points to). Returns
    whether it existed."""
    path = working_dir / RELEASES_DIR / version
    if not VERSION_PATTERN.fullmatch(version) or not path.is_dir() or path.is_symlink():
        return False
    current = working_dir / "current"
    if current.is_symlink() and current.resolve() == path.resolve():
        return False
    shutil.rmtree(path)
    return True


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
    """Scratch directories of an interrupted install (one deploy runs at a time)."""
    for path in releases.iterdir():
        if path.name.startswith((_STAGING_PREFIX, _REPLACED_PREFIX)) and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
