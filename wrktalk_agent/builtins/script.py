"""The ``script`` deployer: runs the release's own deploy script on the local host.

For installations that are neither Kubernetes nor Compose, and for the demo on a machine
with no Docker: the release tarball carries an executable ``deploy`` script at its root.
The release is copied to ``WORKING_DIR/releases/<version>/`` and the script runs there as

    ./deploy deploy|rollback|auto-rollback

with ``WRKTALK_RELEASE_VERSION``, ``WRKTALK_PREVIOUS_VERSION`` (may be empty),
``WRKTALK_RELEASE_DIR`` and ``WRKTALK_LIVE_DIR`` in its environment. A non-zero exit
fails the task. ``WORKING_DIR/current`` is a symlink to the live release's directory.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from wrktalk_agent import releases
from wrktalk_agent.hookspecs import hookimpl
from wrktalk_agent.interfaces import (
    CheckResult,
    DeployError,
    DeployOutcome,
    DeployRequest,
    LiveState,
    PluginContext,
    ValidationError,
    validate_version,
)
from wrktalk_agent.process import run

SCRIPT_NAME = "deploy"


class ScriptSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WRKTALK_AGENT_SCRIPT_", extra="ignore")

    working_dir: Path = Field(
        Path(tempfile.gettempdir()) / "wrktalk-agent-script",
        description="Where releases are installed (releases/<version>/) and `current` points.",
    )
    timeout: float = Field(600.0, gt=0, description="Seconds the deploy script may run.")
    keep_releases: int = Field(
        2, ge=2, description="Release directories kept (current and previous at least)."
    )


class ScriptDeployer:
    """Deploys by running the release's ``deploy`` script."""

    name: ClassVar[str] = "script"
    chart_types: ClassVar[tuple[str, ...]] = ()  # any: the script knows what it ships
    settings_model: ClassVar[type[BaseSettings]] = ScriptSettings

    def __init__(self, settings: ScriptSettings, context: PluginContext) -> None:
        self.settings = settings
        self.context = context

    async def check(self) -> Sequence[CheckResult]:
        base = self.settings.working_dir
        try:
            base.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=base):
                pass
        except OSError as exc:
            return [CheckResult("script working dir", False, f"{base}: {exc.strerror or exc}")]
        return [CheckResult("script working dir", True, f"{base} writable")]

    async def validate(self, request: DeployRequest) -> Sequence[str]:
        """The release's ``deploy`` script exists at its root as a regular, executable
        file (a symlink is refused: it could point anywhere on the host)."""
        try:
            version = validate_version(request.release.version)
        except ValueError as exc:
            raise ValidationError(str(exc)) from None
        script = request.workdir / SCRIPT_NAME
        try:
            info = script.lstat()
        except FileNotFoundError:
            raise ValidationError(
                f"release {version} has no '{SCRIPT_NAME}' script at its root"
            ) from None
        except OSError as exc:
            raise ValidationError(f"cannot read the '{SCRIPT_NAME}' script: {exc}") from None
        if stat.S_ISLNK(info.st_mode):
            raise ValidationError(
                f"'{SCRIPT_NAME}' in release {version} is a symlink; ship the script itself"
            )
        if not stat.S_ISREG(info.st_mode):
            raise ValidationError(f"'{SCRIPT_NAME}' in release {version} is not a regular file")
        if not info.st_mode & stat.S_IXUSR:
            raise ValidationError(
                f"'{SCRIPT_NAME}' in release {version} is not executable (chmod +x it "
                "before packing the release)"
            )
        return []

    async def live_release(self) -> LiveState:
        """The release ``WORKING_DIR/current`` points to (read-only)."""
        link = self.settings.working_dir / "current"
        try:
            target = os.readlink(link)
        except FileNotFoundError:
            return LiveState(None, "absent", f"{link} does not exist: nothing deployed")
        except OSError as exc:
            return LiveState(None, "unknown", f"cannot read {link}: {exc.strerror or exc}")
        version = Path(target).name
        if not (link.parent / target).is_dir():
            return LiveState(None, "unknown", f"{link} points to {target}, which is missing")
        try:
            validate_version(version)
        except ValueError:
            return LiveState(None, "unknown", f"{link} points to {target}, not a release")
        return LiveState(version, "deployed", f"{link} -> {target}")

    async def deploy(self, request: DeployRequest) -> DeployOutcome:
        return await self._apply(request)

    async def rollback(self, request: DeployRequest) -> DeployOutcome:
        return await self._apply(request)

    async def _apply(self, request: DeployRequest) -> DeployOutcome:
        version = validate_version(request.release.version)
        script = request.workdir / SCRIPT_NAME
        info = script.lstat() if script.exists() or script.is_symlink() else None
        if info is None or not stat.S_ISREG(info.st_mode):
            raise DeployError(
                f"release {version} has no '{SCRIPT_NAME}' script at its root", system_changed=False
            )
        target = self._install(request.workdir, version)
        await request.report(f"installed into {target}")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/"),
            "WRKTALK_RELEASE_VERSION": version,
            "WRKTALK_PREVIOUS_VERSION": request.current.version if request.current else "",
            "WRKTALK_RELEASE_DIR": str(target),
            "WRKTALK_LIVE_DIR": str(self.settings.working_dir / "current"),
        }
        result = await run(
            [str(target / SCRIPT_NAME), request.purpose],
            cwd=target,
            timeout=self.settings.timeout,
            env=env,
        )
        if not result.ok:
            raise DeployError(
                f"./{SCRIPT_NAME} {request.purpose} failed for {version}: {result.summary()}",
                output=result.output,
            )
        self._point_current(target)
        if request.purpose == "auto-rollback":
            # Back on the release that was live: the failed one (request.current here)
            # goes, and the release before it stays — the database still calls it previous
            # (what a rollback would return to), and this deployer cannot see that flag.
            failed = request.current.version if request.current else None
            if failed and failed != version:
                releases.remove(self.settings.working_dir, failed)
        else:
            self._prune(keep={version, request.current.version if request.current else ""})
        return DeployOutcome(output=result.output, details={"release_dir": str(target)})

    def _install(self, source: Path, version: str) -> Path:
        return releases.install(self.settings.working_dir, version, source).path

    def _point_current(self, target: Path) -> None:
        releases.point_current(self.settings.working_dir, target)

    def _prune(self, keep: set[str]) -> None:
        releases.prune(self.settings.working_dir, self.settings.keep_releases, keep - {""})


@hookimpl
def wrktalk_register_deployers(register: object) -> None:
    register(ScriptDeployer)  # type: ignore[operator]
