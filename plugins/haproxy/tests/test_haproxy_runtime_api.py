"""Failure paths a real HAProxy cannot be made to take on demand, against a scripted
Runtime API socket (one command per connection, like HAProxy)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from wrktalk_agent.interfaces import BackendError
from wrktalk_agent_haproxy import HaproxyMaintenance, HaproxySettings
from wrktalk_agent_haproxy.testing import plugin_context

STATE = (
    "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight\n"
    "3 wrktalk 1 app1 127.0.0.1 2 0 1\n3 wrktalk 2 app2 127.0.0.1 2 0 1\n\n"
)


@dataclass
class ScriptedApi:
    """Answers each command from ``answers`` (an empty answer, i.e. success, otherwise)
    and records the commands it got."""

    socket: str
    answers: dict[str, str] = field(default_factory=lambda: {"show servers state wrktalk": STATE})
    commands: list[str] = field(default_factory=list)

    def settings(self) -> HaproxySettings:
        return HaproxySettings(socket=self.socket, servers=["wrktalk"])


@pytest.fixture
async def scripted_api(tmp_path: Path) -> AsyncIterator[ScriptedApi]:
    api = ScriptedApi(socket=str(tmp_path / "api.sock"))

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        command = (await reader.readline()).decode().strip()
        api.commands.append(command)
        writer.write(api.answers.get(command, "\n").encode())
        await writer.drain()
        writer.close()

    async with await asyncio.start_unix_server(serve, path=api.socket):
        yield api


async def test_enable_puts_back_what_it_changed_when_a_later_server_fails(
    scripted_api: ScriptedApi, tmp_path: Path
) -> None:
    scripted_api.answers["set server wrktalk/app2 state maint"] = "Permission denied\n\n"
    maintenance = HaproxyMaintenance(scripted_api.settings(), plugin_context(tmp_path))
    with pytest.raises(BackendError, match="permission denied"):
        await maintenance.enable("deploy")
    assert scripted_api.commands == [
        "show servers state wrktalk",
        "set server wrktalk/app1 state maint",
        "set server wrktalk/app2 state maint",
        "set server wrktalk/app1 state ready",
    ]


@pytest.mark.parametrize(
    ("answer_text", "message"),
    [
        ("Unknown command: 'show servers state'\n\n", "unexpected answer"),
        ("1\n# be_name srv_name\nwrktalk app1\n\n", "cannot parse"),
    ],
)
async def test_unexpected_state_output_is_an_error(
    scripted_api: ScriptedApi, tmp_path: Path, answer_text: str, message: str
) -> None:
    scripted_api.answers["show servers state wrktalk"] = answer_text
    maintenance = HaproxyMaintenance(scripted_api.settings(), plugin_context(tmp_path))
    with pytest.raises(BackendError, match=message):
        await maintenance.status()
