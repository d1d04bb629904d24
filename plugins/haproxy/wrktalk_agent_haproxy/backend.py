"""Maintenance mode for HAProxy through its Runtime API.

``enable`` forces the configured servers into ``maint``; with no server left, HAProxy
answers 503 from the backend's ``http-error`` page (see :mod:`wrktalk_agent_haproxy.snippet`).
``disable`` sets them ``ready`` again. HAProxy itself holds the state, so ``status`` asks
it rather than trusting what this process remembers (it may have crashed in between).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from wrktalk_agent.interfaces import BackendError, CheckResult, PluginContext
from wrktalk_agent_haproxy.runtime_api import (
    NAME_PATTERN,
    RuntimeApi,
    ServerState,
    TcpAddress,
    UnixAddress,
    parse_address,
)

__all__ = ["HaproxyMaintenance", "HaproxySettings", "Target"]


@dataclass(frozen=True)
class Target:
    """One entry of ``WRKTALK_AGENT_HAPROXY_SERVERS``; ``server=None``: the whole backend."""

    backend: str
    server: str | None

    def __str__(self) -> str:
        return self.backend if self.server is None else f"{self.backend}/{self.server}"


class HaproxySettings(BaseSettings):
    """Settings of the HAProxy maintenance handler (``WRKTALK_AGENT_HAPROXY_*``)."""

    model_config = SettingsConfigDict(env_prefix="WRKTALK_AGENT_HAPROXY_", extra="ignore")

    socket: str = Field(
        "/run/haproxy/admin.sock",
        description="Runtime API address from HAProxy's `stats socket ... level admin` line: "
        "a unix socket path, or host:port / tcp://host:port.",
    )
    servers: Annotated[list[str], NoDecode] = Field(
        description="Comma list of backend/server to put into maintenance; a bare backend "
        "name means every server of that backend (looked up at each change).",
    )
    timeout: float = Field(5.0, gt=0, description="Seconds each Runtime API command may take.")

    @field_validator("socket")
    @classmethod
    def _address(cls, value: str) -> str:
        parse_address(value)  # raises ValueError with the accepted forms
        return value.strip()

    @field_validator("servers", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("servers")
    @classmethod
    def _targets(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("list at least one backend or backend/server")
        for entry in value:
            names = entry.split("/")
            if len(names) > 2 or not all(NAME_PATTERN.fullmatch(n) for n in names):
                raise ValueError(
                    f"{entry!r} is not 'backend' or 'backend/server' (names may contain "
                    "letters, digits, '.', '_', ':' and '-')"
                )
        return value

    @property
    def address(self) -> UnixAddress | TcpAddress:
        return parse_address(self.socket)

    @property
    def targets(self) -> list[Target]:
        return [
            Target(*entry.split("/")) if "/" in entry else Target(entry, None)
            for entry in self.servers
        ]


class HaproxyMaintenance:
    """Maintenance handler ``haproxy``: servers into ``maint`` and back to ``ready``."""

    name: ClassVar[str] = "haproxy"
    settings_model: ClassVar[type[BaseSettings]] = HaproxySettings

    def __init__(self, settings: HaproxySettings, context: PluginContext) -> None:
        self.settings = settings
        self.context = context
        self.api = RuntimeApi(settings.address, settings.timeout)

    async def check(self) -> Sequence[CheckResult]:
        try:
            level = await self.api.cli_level()
        except BackendError as exc:
            return [CheckResult("haproxy runtime api", False, str(exc))]
        results = [_level_result(str(self.api.address), level)]
        states: dict[str, list[ServerState]] = {}
        for target in self.settings.targets:
            try:
                servers = await self._resolve_target(target, states)
            except BackendError as exc:
                results.append(CheckResult(f"haproxy {target}", False, str(exc)))
            else:
                names = ", ".join(s.server for s in servers)
                results.append(CheckResult(f"haproxy {target}", True, f"servers: {names}"))
        return results

    async def enable(self, reason: str) -> None:
        # Resolve every name before changing anything: a typo in the settings fails the
        # task before the deploy, with the site untouched.
        servers = await self._resolve()
        changed: list[ServerState] = []
        try:
            for server in servers:
                await self.api.set_server_state(server.backend, server.server, "maint")
                changed.append(server)
        except BackendError:
            # Half the servers in maintenance is neither a working site nor a maintenance
            # page: put back what was changed, then report the original error.
            for server in changed:
                with contextlib.suppress(BackendError):
                    await self.api.set_server_state(server.backend, server.server, "ready")
            raise

    async def disable(self) -> None:
        # Best effort over every entry: one wrong name must not keep the others in
        # maintenance. The errors are reported together afterwards.
        errors: list[str] = []
        states: dict[str, list[ServerState]] = {}
        for target in self.settings.targets:
            try:
                servers = await self._resolve_target(target, states)
            except BackendError as exc:
                errors.append(str(exc))
                continue
            for server in servers:
                try:
                    await self.api.set_server_state(server.backend, server.server, "ready")
                except BackendError as exc:
                    errors.append(str(exc))
        if errors:
            raise BackendError("; ".join(dict.fromkeys(errors)))

    async def status(self) -> bool:
        # Only the "forced" bit counts: it is what enable sets and disable clears. A server
        # in maintenance by configuration or by tracking another server is not ours, and
        # reporting it would make the agent try to switch off what it cannot.
        return any(server.forced_maintenance for server in await self._resolve())

    async def _resolve(self) -> list[ServerState]:
        """Every configured server, each once, with its current state."""
        states: dict[str, list[ServerState]] = {}
        found: dict[tuple[str, str], ServerState] = {}
        for target in self.settings.targets:
            for server in await self._resolve_target(target, states):
                found.setdefault((server.backend, server.server), server)
        return list(found.values())

    async def _resolve_target(
        self, target: Target, states: dict[str, list[ServerState]]
    ) -> list[ServerState]:
        if target.backend not in states:
            try:
                states[target.backend] = await self.api.servers_state(target.backend)
            except BackendError as exc:
                raise BackendError(f"{exc} (check WRKTALK_AGENT_HAPROXY_SERVERS)") from exc
        servers = states[target.backend]
        if target.server is None:
            if not servers:
                raise BackendError(f"HAProxy backend {target.backend!r} has no servers")
            return servers
        matching = [s for s in servers if s.server == target.server]
        if not matching:
            known = ", ".join(s.server for s in servers) or "none"
            raise BackendError(
                f"HAProxy backend {target.backend!r} has no server {target.server!r} "
                f"(it has: {known}; check WRKTALK_AGENT_HAPROXY_SERVERS)"
            )
        return matching


def _level_result(address: str, level: str) -> CheckResult:
    name = "haproxy runtime api"
    if level == "admin":
        return CheckResult(name, True, f"{address} (level admin)")
    if level in ("operator", "user"):
        return CheckResult(
            name, False, f"{address} has level {level}; 'set server' needs 'level admin'"
        )
    # `show cli level` is missing from old HAProxy versions: reachable is all we know.
    return CheckResult(name, True, f"{address} (level unknown)")
