"""wrktalk-agent-flagfile: maintenance mode is a file the web server checks."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from wrktalk_agent.errors import BackendError
from wrktalk_agent.hookspecs import Register, hookimpl
from wrktalk_agent.interfaces import BaseMaintenanceHandler, CheckResult, PluginContext

__all__ = ["FlagFileMaintenance", "FlagFileSettings"]


class FlagFileSettings(BaseSettings):
    """``WRKTALK_AGENT_FLAGFILE_*``"""

    model_config = SettingsConfigDict(env_prefix="WRKTALK_AGENT_FLAGFILE_", extra="ignore")

    path: Path = Field(description="The flag file; the web server answers 503 while it exists.")


class FlagFileMaintenance(BaseMaintenanceHandler):
    name: ClassVar[str] = "flagfile"
    settings_model: ClassVar[type[BaseSettings]] = FlagFileSettings

    def __init__(self, settings: FlagFileSettings, context: PluginContext) -> None:
        super().__init__(settings, context)
        self.path = settings.path

    async def check(self) -> Sequence[CheckResult]:
        directory = self.path.parent
        if not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
            return [CheckResult("flag directory", False, f"{directory} is not writable")]
        state = "on" if await self.status() else "off"
        return [CheckResult("flag directory", True, f"{self.path} (maintenance {state})")]

    async def enable(self, reason: str) -> None:
        try:
            await asyncio.to_thread(self._write, reason)
        except OSError as exc:
            raise BackendError(f"could not write {self.path}: {exc.strerror}") from None

    async def disable(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            raise BackendError(f"could not remove {self.path}: {exc.strerror}") from None

    async def status(self) -> bool:
        return self.path.exists()

    def _write(self, reason: str) -> None:
        # a web server checking the file never sees it half-written
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".maintenance-")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(reason + "\n")
            os.chmod(tmp, 0o644)  # the web server's user reads it
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@hookimpl
def wrktalk_register_maintenance_handlers(register: Register) -> None:
    register(FlagFileMaintenance)
