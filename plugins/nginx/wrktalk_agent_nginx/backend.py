"""Maintenance mode for nginx: the agent creates a flag file, nginx answers 503 while it
exists (see :mod:`wrktalk_agent_nginx.snippet`).

A file is the whole interface on purpose: it works across containers through a shared
volume, needs no nginx API or reload, and its state survives an agent crash, so the
agent's startup reconciliation can find it and switch maintenance off again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from wrktalk_agent.interfaces import BackendError, CheckResult, PluginContext
from wrktalk_agent.process import NOT_FOUND, TIMED_OUT, run
from wrktalk_agent_nginx.snippet import DEFAULT_FLAG_FILE

__all__ = ["NginxMaintenance", "NginxSettings"]

#: Enough of a failing reload command's output to explain it, not enough to flood a task.
_OUTPUT_TAIL = 2000


class NginxSettings(BaseSettings):
    """Settings of the nginx maintenance handler (``WRKTALK_AGENT_NGINX_*``)."""

    model_config = SettingsConfigDict(env_prefix="WRKTALK_AGENT_NGINX_", extra="ignore")

    flag_file: Path = Field(
        DEFAULT_FLAG_FILE,
        description="Absolute path of the flag file; nginx returns 503 while it exists. "
        "Must be the path the nginx snippet tests (e.g. on a volume shared with nginx).",
    )
    reload_command: list[str] | None = Field(
        None,
        description="Optional command run after every change, as a JSON list, e.g. "
        '["nginx", "-s", "reload"]. Run without a shell; a non-zero exit is an error. '
        "Not needed with the shipped snippet, which tests the flag on every request.",
    )
    reload_timeout: float = Field(
        30.0, gt=0, description="Seconds the reload command may take before it is killed."
    )

    @field_validator("flag_file")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError("must be an absolute path (nginx tests an absolute path)")
        return value

    @field_validator("reload_command", mode="before")
    @classmethod
    def _json_list(cls, value: Any) -> Any:
        # pydantic-settings hands over the raw text when it is not valid JSON; say what
        # is expected instead of a bare "Input should be a valid list".
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise ValueError(
                    'must be a JSON list of strings, e.g. ["nginx", "-s", "reload"]'
                ) from None
        return value

    @field_validator("reload_command")
    @classmethod
    def _non_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or not value[0]):
            raise ValueError('must name a program, e.g. ["nginx", "-s", "reload"]')
        return value


class NginxMaintenance:
    """Maintenance handler ``nginx``: a flag file, plus an optional reload command."""

    name: ClassVar[str] = "nginx"
    settings_model: ClassVar[type[BaseSettings]] = NginxSettings

    def __init__(self, settings: NginxSettings, context: PluginContext) -> None:
        self.settings = settings
        self.context = context

    @property
    def flag_file(self) -> Path:
        return self.settings.flag_file

    async def check(self) -> Sequence[CheckResult]:
        results = [_check_flag_dir(self.flag_file.parent)]
        command = self.settings.reload_command
        if command:
            found = shutil.which(command[0])
            results.append(
                CheckResult(
                    name="nginx reload command",
                    ok=found is not None,
                    detail=f"{command[0]} -> {found}" if found else f"{command[0]!r} not found",
                )
            )
        return results

    async def enable(self, reason: str) -> None:
        await asyncio.to_thread(self._write_flag, reason)
        await self._reload()

    async def disable(self) -> None:
        await asyncio.to_thread(self._remove_flag)
        # Reload even when the flag was already gone: an earlier reload may have failed,
        # and running it again is what brings nginx back in line with the flag.
        await self._reload()

    async def status(self) -> bool:
        return await asyncio.to_thread(self.flag_file.exists)

    def _write_flag(self, reason: str) -> None:
        directory = self.flag_file.parent
        content = json.dumps(
            {
                "reason": reason,
                "since": datetime.now(UTC).isoformat(timespec="seconds"),
                "agent_id": self.context.agent_id,
            }
        )
        try:
            directory.mkdir(mode=0o755, parents=True, exist_ok=True)
            # Write beside the flag and rename: nginx (and a second agent) only ever sees
            # no flag or a complete one, never a half-written file.
            fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=".maintenance-")
        except OSError as exc:
            raise BackendError(
                f"cannot create the maintenance flag {self.flag_file}: {exc}"
            ) from exc
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(content + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp_name, 0o644)  # readable by nginx and by operators looking at it
            os.replace(tmp_name, self.flag_file)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise BackendError(
                f"cannot create the maintenance flag {self.flag_file}: {exc}"
            ) from exc

    def _remove_flag(self) -> None:
        try:
            self.flag_file.unlink(missing_ok=True)
        except OSError as exc:
            raise BackendError(
                f"cannot remove the maintenance flag {self.flag_file}: {exc}"
            ) from exc

    async def _reload(self) -> None:
        command = self.settings.reload_command
        if not command:
            return
        shown = " ".join(command)
        timeout = self.settings.reload_timeout
        try:
            # its own process group: a timeout or a cancelled task stops it and its children
            result = await run(command, timeout=timeout)
        except OSError as exc:  # e.g. not an executable format
            raise BackendError(f"nginx reload command {shown!r} could not start: {exc}") from exc
        if result.returncode == NOT_FOUND:
            raise BackendError(
                f"nginx reload command {shown!r} could not start: {result.output.strip()}"
            )
        if result.returncode == TIMED_OUT:
            raise BackendError(f"nginx reload command {shown!r} did not finish within {timeout:g}s")
        if not result.ok:
            output = result.output.strip()[-_OUTPUT_TAIL:]
            raise BackendError(
                f"nginx reload command {shown!r} failed with exit code {result.returncode}: "
                f"{output or '(no output)'}"
            )


def _check_flag_dir(directory: Path) -> CheckResult:
    """The flag's directory is writable, or could be created by the agent."""
    name = "nginx flag directory"
    existing = directory
    while not existing.exists():  # stops at "/" at the latest
        existing = existing.parent
    if not existing.is_dir():
        return CheckResult(name, False, f"{existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        return CheckResult(name, False, f"{existing} is not writable by this user")
    if existing == directory:
        return CheckResult(name, True, f"{directory} is writable")
    return CheckResult(name, True, f"{directory} will be created in {existing}")
