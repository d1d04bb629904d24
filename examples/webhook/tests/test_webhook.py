"""The webhook notifier against a real HTTP server on 127.0.0.1, alone and under the
agent's real task pipeline (wrktalk_agent.testing's task harness)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
from aiohttp import web

import wrktalk_agent_webhook
from wrktalk_agent.hookspecs import hookimpl
from wrktalk_agent.interfaces import BaseDeployer, DeployError, DeployOutcome, DeployRequest
from wrktalk_agent.testing import (
    SettingsError,
    notification_event,
    plugin_context,
    registry_with,
)


@dataclass
class HookServer:
    url: str
    #: statuses to answer, in order; 204 once they are used up
    statuses: list[int] = field(default_factory=list)
    received: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
async def hook_server() -> AsyncIterator[HookServer]:
    server = HookServer(url="")

    async def receive(request: web.Request) -> web.Response:
        server.received.append(await request.json())
        status = server.statuses.pop(0) if server.statuses else 204
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/hooks/deploy", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{port}/hooks/deploy"
    try:
        yield server
    finally:
        await runner.cleanup()


def notifier(tmp_path, url: str, **settings: Any) -> Any:
    registry = registry_with(wrktalk_agent_webhook, settings={"webhook": {"url": url, **settings}})
    return registry.instantiate("notifier", "webhook", plugin_context(tmp_path))


async def test_an_outcome_is_posted_as_json(hook_server, tmp_path) -> None:
    event = notification_event("deploy_failed", error="pods crashlooping")

    [delivery] = await notifier(tmp_path, hook_server.url).notify(event)

    assert delivery.ok and delivery.attempts == 1
    [body] = hook_server.received
    assert body["kind"] == "deploy_failed" and body["error"] == "pods crashlooping"
    assert body["task_id"] == str(event.task_id)


async def test_a_server_error_is_retried_then_reported(hook_server, tmp_path) -> None:
    hook_server.statuses = [503, 503, 503]
    [delivery] = await notifier(tmp_path, hook_server.url, attempts=3).notify(notification_event())
    assert not delivery.ok
    assert delivery.detail == "answered HTTP 503" and delivery.attempts == 3
    assert len(hook_server.received) == 3

    hook_server.statuses = [404]  # a wrong URL is not retried
    [delivery] = await notifier(tmp_path, hook_server.url).notify(notification_event())
    assert (delivery.ok, delivery.detail, delivery.attempts) == (False, "answered HTTP 404", 1)


async def test_an_unreachable_server_is_a_failed_delivery_without_credentials(
    tmp_path,
) -> None:
    from wrktalk_agent.testing import free_port

    url = f"http://bot:s3cret@127.0.0.1:{free_port()}/hook?token=s3cret"
    [delivery] = await notifier(tmp_path, url, attempts=1, timeout=2).notify(notification_event())
    assert not delivery.ok and "ClientConnectorError" in delivery.detail
    assert "s3cret" not in delivery.recipient + delivery.detail


def test_a_missing_url_is_one_readable_line(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("WRKTALK_AGENT_WEBHOOK_URL", raising=False)
    registry = registry_with(wrktalk_agent_webhook)
    with pytest.raises(SettingsError) as caught:
        registry.instantiate("notifier", "webhook", plugin_context(tmp_path))
    assert caught.value.lines == ["WRKTALK_AGENT_WEBHOOK_URL: Field required"]


# -- under the real agent ------------------------------------------------------------------
class StubDeployer(BaseDeployer):
    """Succeeds, unless the release carries a file named FAIL."""

    name: ClassVar[str] = "stub"

    async def deploy(self, request: DeployRequest) -> DeployOutcome:
        if (request.workdir / "FAIL").exists():
            raise DeployError("the stub refuses", system_changed=False)
        return DeployOutcome(output=f"stub deployed {request.release.version}")

    async def rollback(self, request: DeployRequest) -> DeployOutcome:
        return DeployOutcome()


class StubPlugin:
    @hookimpl
    def wrktalk_register_deployers(self, register) -> None:
        register(StubDeployer)


async def test_the_agent_posts_each_outcome_once(task_harness, hook_server) -> None:
    task_harness.use(wrktalk_agent_webhook).use(StubPlugin(), name="stub").select(
        deployer="stub",
        notifiers=["webhook"],
        settings={"webhook": {"url": hook_server.url}},
    )

    done = await task_harness.deploy("1.0.0")
    failed = await task_harness.deploy("1.1.0", {"FAIL": ""})

    assert (done.status, failed.status) == ("completed", "failed")
    kinds = [body["kind"] for body in hook_server.received]
    assert kinds == ["deploy_succeeded", "deploy_failed"]
    assert hook_server.received[1]["error"] == "the stub refuses"
    assert [d.ok for d in failed.deliveries["webhook"]] == [True]
    assert "webhook: 1/1 delivered" in failed.messages("notify")
    assert json.dumps(failed.result).count("1.1.0") >= 1
