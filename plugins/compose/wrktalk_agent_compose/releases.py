"""Stable release directories: ``WORKING_DIR/releases/<version>/``.

The core deletes its temp dir after every task, but containers keep bind-mounting files
of the release (config, static assets), so each release is copied to a directory that
outlives the task. Current and previous are kept; older ones are pruned.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from wrktalk_agent import releases

from .layout import IMAGES_DIR, ReleaseLayout

RELEASES_DIR = releases.RELEASES_DIR
ENV_FILE_NAME = ".env"
#: the agent's own compose file, merged over the release's: labels every service's
#: containers with the release version (what ``live_release`` reads back)
LABELS_FILE_NAME = ".wrktalk-release.yml"
RELEASE_LABEL = "io.wrktalk.release"


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
    """Copy the extracted release to ``releases/<version>`` atomically (complete or
    absent; see :mod:`wrktalk_agent.releases`). Bundled image tars are not copied: they
    are loaded from the task's temp dir and would only fill the disk. ``version`` must
    already be validated (it becomes a path component).
    """

    def finish(staging: Path) -> None:
        staged_env = staging / ENV_FILE_NAME
        if env_file is not None:
            shutil.copyfile(env_file, staged_env)
        if staged_env.exists():
            staged_env.chmod(0o600)
        (staging / LABELS_FILE_NAME).write_text(labels_override(version, layout.services))

    done = releases.install(
        working_dir, version, layout.root, ignore=_skip_images(layout.root), finish=finish
    )
    target = done.path
    installed_env = target / ENV_FILE_NAME
    return InstalledRelease(
        path=target,
        compose_file=target / layout.compose_file.relative_to(layout.root),
        env_file=installed_env if installed_env.exists() else None,
        labels_file=target / LABELS_FILE_NAME,
        replaced=done.replaced,
    )


def labels_override(version: str, services: Iterable[str]) -> str:
    """A compose file that adds the release label to each service (JSON is YAML)."""
    model = {"services": {name: {"labels": {RELEASE_LABEL: version}} for name in services}}
    return json.dumps(model, indent=2) + "\n"


def prune_releases(working_dir: Path, keep: int, protected: Iterable[str]) -> list[str]:
    """Delete the oldest release directories beyond ``keep``; never those in ``protected``
    (the release just applied and the one it replaced). Returns the removed versions."""
    return releases.prune(working_dir, keep, protected)


def _skip_images(root: Path) -> Callable[[str, list[str]], list[str]]:
    top = os.fspath(root)

    def ignore(directory: str, names: list[str]) -> list[str]:
        return [IMAGES_DIR] if directory == top and IMAGES_DIR in names else []

    return ignore
