"""wrktalk-agent-symlink: release directories and an atomically switched ``current`` link.

``ROOT/releases/<version>/`` holds each installed release; ``ROOT/current`` is a symlink
to the live one. Switching is one ``rename`` of a fresh symlink over ``current``, so a
reader sees either the old release or the new one, never a mix.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from wrktalk_agent.hookspecs import Register, hookimpl
from wrktalk_agent.interfaces import (
    BaseDeployer,
    CheckResult,
    DeployError,
    DeployOutcome,
    DeployRequest,
    LiveState,
    PluginContext,
    ValidationError,
    validate_version,
)

__all__ = ["SymlinkDeployer", "SymlinkSettings"]

CURRENT = "current"
RELEASES = "releases"


class SymlinkSettings(BaseSettings):
    """``WRKTALK_AGENT_SYMLINK_*``"""

    model_config = SettingsConfigDict(env_prefix="WRKTALK_AGENT_SYMLINK_", extra="ignore")

    root: Path = Field(description="Directory holding releases/ and the current link.")
    keep: int = Field(3, ge=2, description="Release directories kept (at least 2).")


class SymlinkDeployer(BaseDeployer):
    name: ClassVar[str] = "symlink"
    chart_types: ClassVar[tuple[str, ...]] = ()  # any release: it is just files
    settings_model: ClassVar[type[BaseSettings]] = SymlinkSettings

    def __init__(self, settings: SymlinkSettings, context: PluginContext) -> None:
        super().__init__(settings, context)
        self.root = settings.root
        self.releases = settings.root / RELEASES
        self.current = settings.root / CURRENT

    async def check(self) -> Sequence[CheckResult]:
        if not self.root.is_dir() or not os.access(self.root, os.W_OK | os.X_OK):
            return [CheckResult("root", False, f"{self.root} is not a writable directory")]
        live = await self.live_release()
        return [CheckResult("root", True, f"{self.root}; live: {live.version or 'nothing'}")]

    # -- optional methods: before maintenance --------------------------------------------
    async def validate(self, request: DeployRequest) -> Sequence[str]:
        files = [p for p in request.workdir.iterdir() if p.name not in (".env", "values.yaml")]
        if not files:
            raise ValidationError(f"release {request.release.version} contains no files")
        return []

    async def prepare(self, request: DeployRequest) -> None:
        await self._install(request)

    async def live_release(self) -> LiveState:
        if not self.current.is_symlink():
            if self.current.exists():
                return LiveState(None, "unknown", f"{self.current} is not a symlink")
            return LiveState(None, "absent")
        target = Path(os.readlink(self.current))
        if not (self.releases / target.name).is_dir():
            return LiveState(target.name, "half-applied", f"{self.current} → missing {target}")
        return LiveState(target.name, "deployed")

    # -- the switch ------------------------------------------------------------------------
    async def deploy(self, request: DeployRequest) -> DeployOutcome:
        return await self._switch(request)

    async def rollback(self, request: DeployRequest) -> DeployOutcome:
        # the release to return to is extracted in request.workdir: reinstall if pruned
        return await self._switch(request)

    async def _switch(self, request: DeployRequest) -> DeployOutcome:
        version = validate_version(request.release.version)
        installed = await self._install(request)
        before = await self.live_release()
        try:
            await asyncio.to_thread(self._point_current_at, installed)
        except OSError as exc:
            message = f"could not switch {self.current}: {exc}"
            raise DeployError(message, system_changed=False) from None
        await request.report(f"{CURRENT} → {RELEASES}/{version}")
        pruned = await asyncio.to_thread(self._prune, {version, before.version or ""})
        return DeployOutcome(
            output=f"{self.current} now points to {installed}",
            details={"from": before.version, "to": version, "pruned": pruned},
        )

    async def _install(self, request: DeployRequest) -> Path:
        version = validate_version(request.release.version)
        target = self.releases / version
        if target.is_dir():
            return target
        try:
            await asyncio.to_thread(self._copy_release, request.workdir, target)
        except OSError as exc:
            raise DeployError(f"could not install {target}: {exc}", system_changed=False) from None
        await request.report(f"installed {RELEASES}/{version}")
        return target

    def _copy_release(self, source: Path, target: Path) -> None:
        self.releases.mkdir(mode=0o755, parents=True, exist_ok=True)
        staging = self.releases / f".{target.name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        # copy2 keeps modes: the release's .env stays 0600
        shutil.copytree(source, staging, symlinks=True)
        staging.rename(target)  # a half-copied release never has the real name

    def _point_current_at(self, release_dir: Path) -> None:
        fresh = self.root / f".{CURRENT}.new"
        fresh.unlink(missing_ok=True)
        fresh.symlink_to(Path(RELEASES) / release_dir.name)  # relative: the root may move
        os.replace(fresh, self.current)

    def _prune(self, protected: set[str]) -> list[str]:
        """Delete all but the newest ``keep`` release directories; the live one and the
        one it replaced (needed for a rollback) always stay."""
        others = sorted(
            (
                p
                for p in self.releases.iterdir()
                if p.is_dir() and not p.name.startswith(".") and p.name not in protected
            ),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        room = max(0, self.settings.keep - len(protected - {""}))
        for path in others[room:]:
            shutil.rmtree(path)
        return sorted(p.name for p in others[room:])


@hookimpl
def wrktalk_register_deployers(register: Register) -> None:
    register(SymlinkDeployer)
