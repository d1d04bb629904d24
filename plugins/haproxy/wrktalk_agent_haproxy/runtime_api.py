"""A small client for HAProxy's Runtime API (the "stats socket"), over a unix socket or TCP.

One command per connection: HAProxy answers a non-interactive connection and closes it,
so the answer is simply everything read until EOF. Commands that change something answer
nothing on success and a line of text on failure ("No such backend.", "Permission
denied"), so any text is an error there.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from wrktalk_agent.interfaces import BackendError

__all__ = [
    "NAME_PATTERN",
    "SRV_ADMF_FMAINT",
    "RuntimeApi",
    "ServerState",
    "TcpAddress",
    "UnixAddress",
    "parse_address",
]

#: srv_admin_state bit: "explicitly forced into maintenance" (``set server ... state maint``),
#: the one maintenance bit that ``state ready`` clears (HAProxy management guide,
#: "show servers state").
SRV_ADMF_FMAINT = 0x01

#: The characters HAProxy allows in proxy and server names. Checking them matters: the
#: Runtime API splits commands on ';', so a crafted name could append a command.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9._:-]+$")


@dataclass(frozen=True)
class UnixAddress:
    path: str

    def __str__(self) -> str:
        return self.path


@dataclass(frozen=True)
class TcpAddress:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


def parse_address(value: str) -> UnixAddress | TcpAddress:
    """``/path/to/admin.sock``, ``host:port``, ``[v6]:port`` or ``tcp://host:port``."""
    text = value.strip()
    if text.startswith("/"):
        return UnixAddress(text)
    parts = urlsplit(text if text.startswith("tcp://") else f"tcp://{text}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "tcp" or not parts.hostname or port is None or parts.path:
        raise ValueError(
            f"{value!r} is neither an absolute unix socket path nor host:port "
            "(e.g. /run/haproxy/admin.sock, 127.0.0.1:9999 or tcp://127.0.0.1:9999)"
        )
    if port == 0:
        raise ValueError(f"{value!r}: port must be between 1 and 65535")
    return TcpAddress(parts.hostname, port)


@dataclass(frozen=True)
class ServerState:
    """One line of ``show servers state``."""

    backend: str
    server: str
    operational_state: int  # 0 stopped, 1 starting, 2 running, 3 stopping
    admin_state: int  # bit mask, see SRV_ADMF_*

    @property
    def forced_maintenance(self) -> bool:
        return bool(self.admin_state & SRV_ADMF_FMAINT)


class RuntimeApi:
    """Commands against one HAProxy Runtime API address."""

    def __init__(self, address: UnixAddress | TcpAddress, timeout: float) -> None:
        self.address = address
        self.timeout = timeout

    async def execute(self, command: str) -> str:
        """Send one command; return HAProxy's answer without trailing blank lines."""
        try:
            async with asyncio.timeout(self.timeout):
                if isinstance(self.address, UnixAddress):
                    reader, writer = await asyncio.open_unix_connection(self.address.path)
                else:
                    reader, writer = await asyncio.open_connection(
                        self.address.host, self.address.port
                    )
                try:
                    writer.write(command.encode() + b"\n")
                    await writer.drain()
                    answer = await reader.read()
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except TimeoutError:
            raise BackendError(
                f"the HAProxy Runtime API at {self.address} did not answer "
                f"{command!r} within {self.timeout:g}s"
            ) from None
        except OSError as exc:
            raise BackendError(
                f"cannot reach the HAProxy Runtime API at {self.address}: "
                f"{exc.strerror or exc} (is HAProxy running with "
                f"'stats socket {_socket_spec(self.address)} level admin'?)"
            ) from exc
        return answer.decode(errors="replace").rstrip()

    async def servers_state(self, backend: str) -> list[ServerState]:
        """The servers of ``backend``; ``BackendError`` when HAProxy has no such backend."""
        answer = await self.execute(f"show servers state {_name(backend)}")
        lines = answer.splitlines()
        if not lines or lines[0] != "1":  # format version 1 is the only one so far
            if answer == "Can't find backend.":
                raise BackendError(f"HAProxy has no backend {backend!r}")
            raise BackendError(f"unexpected answer to 'show servers state {backend}': {answer!r}")
        header = lines[1].lstrip("#").split() if len(lines) > 1 else []
        try:
            column = {
                name: header.index(name)
                for name in ("be_name", "srv_name", "srv_op_state", "srv_admin_state")
            }
            return [
                ServerState(
                    backend=fields[column["be_name"]],
                    server=fields[column["srv_name"]],
                    operational_state=int(fields[column["srv_op_state"]]),
                    admin_state=int(fields[column["srv_admin_state"]]),
                )
                for fields in (line.split() for line in lines[2:] if not line.startswith("#"))
            ]
        except (ValueError, IndexError):
            raise BackendError(
                f"cannot parse HAProxy's answer to 'show servers state {backend}': {answer!r}"
            ) from None

    async def set_server_state(
        self, backend: str, server: str, state: Literal["ready", "drain", "maint"]
    ) -> None:
        command = f"set server {_name(backend)}/{_name(server)} state {state}"
        answer = await self.execute(command)
        if not answer:
            return
        if answer == "No such backend.":
            raise BackendError(f"HAProxy has no backend {backend!r}")
        if answer == "No such server.":
            raise BackendError(f"HAProxy backend {backend!r} has no server {server!r}")
        if answer == "Permission denied":
            raise BackendError(
                f"HAProxy refused {command!r} at {self.address}: permission denied "
                "(the stats socket needs 'level admin')"
            )
        raise BackendError(f"HAProxy refused {command!r}: {answer}")

    async def cli_level(self) -> str:
        """``admin``, ``operator`` or ``user``: what this socket is allowed to do."""
        return await self.execute("show cli level")


def _name(value: str) -> str:
    if not NAME_PATTERN.fullmatch(value):
        raise BackendError(f"invalid HAProxy backend or server name {value!r}")
    return value


def _socket_spec(address: UnixAddress | TcpAddress) -> str:
    if isinstance(address, UnixAddress):
        return address.path
    family = "ipv6" if ":" in address.host else "ipv4"
    return f"{family}@{address.host}:{address.port}"
