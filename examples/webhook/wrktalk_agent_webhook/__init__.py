"""wrktalk-agent-webhook: POSTs every task outcome as one JSON object to a URL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import ClassVar
from urllib.parse import urlsplit

from pydantic import AnyHttpUrl, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from wrktalk_agent.hookspecs import Register, hookimpl
from wrktalk_agent.interfaces import (
    BaseNotifier,
    CheckResult,
    Deliveries,
    Delivery,
    NotificationEvent,
    PluginContext,
)
from wrktalk_agent.log import get_logger

__all__ = ["WebhookNotifier", "WebhookSettings"]


class WebhookSettings(BaseSettings):
    """``WRKTALK_AGENT_WEBHOOK_*``"""

    model_config = SettingsConfigDict(env_prefix="WRKTALK_AGENT_WEBHOOK_", extra="ignore")

    url: AnyHttpUrl = Field(description="Where outcomes are POSTed (http or https).")
    timeout: float = Field(5.0, gt=0, description="Seconds per attempt.")
    attempts: int = Field(3, ge=1, le=10, description="Attempts before a delivery fails.")


def shown(url: str) -> str:
    """The URL for messages: no user, password, query or fragment (tokens hide there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class WebhookNotifier(BaseNotifier):
    name: ClassVar[str] = "webhook"
    settings_model: ClassVar[type[BaseSettings]] = WebhookSettings

    def __init__(self, settings: WebhookSettings, context: PluginContext) -> None:
        super().__init__(settings, context)
        self.url = str(settings.url)
        self.log = get_logger(backend=self.name)

    async def check(self) -> Sequence[CheckResult]:
        # Posting a test message would notify people: only say where outcomes go.
        return [CheckResult("endpoint", True, f"outcomes are POSTed to {shown(self.url)}")]

    async def notify(self, event: NotificationEvent) -> Deliveries:
        import aiohttp  # when a notification goes out, not when the plugin is loaded

        body = json.dumps(asdict(event), default=str).encode()
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout)
        problem = ""
        attempt = 0
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for attempt in range(1, self.settings.attempts + 1):
                try:
                    async with session.post(
                        self.url, data=body, headers={"Content-Type": "application/json"}
                    ) as response:
                        if 200 <= response.status < 300:
                            return [Delivery(shown(self.url), ok=True, attempts=attempt)]
                        problem = f"answered HTTP {response.status}"
                        if response.status < 500 and response.status != 429:
                            break  # the request is wrong: repeating it will not help
                except (aiohttp.ClientError, TimeoutError) as exc:
                    problem = f"{type(exc).__name__}: {exc}".rstrip(": ")
                self.log.warning("webhook.retrying", attempt=attempt, problem=problem)
                if attempt < self.settings.attempts:
                    await asyncio.sleep(0.2 * 2**attempt)
        return [Delivery(shown(self.url), ok=False, detail=problem, attempts=attempt)]


@hookimpl
def wrktalk_register_notifiers(register: Register) -> None:
    register(WebhookNotifier)
