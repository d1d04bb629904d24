"""Health: after a deploy, the site must answer its health URL as expected."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request

from wrktalk_agent.pipeline.state import StepFailed, TaskState
from wrktalk_agent.results import HealthRecord


async def health_check(run: TaskState) -> None:
    settings = run.settings
    url = settings.healthcheck_url
    if not url:
        return
    expecting = f"GET {url} expecting {settings.healthcheck_status}"
    async with run.step("health", expecting, slow=True):
        last = ""
        for attempt in range(1, settings.healthcheck_retries + 1):
            status, last = await asyncio.to_thread(http_status, url, settings.healthcheck_timeout)
            if status == settings.healthcheck_status:
                run.result.health = HealthRecord(attempt, status=status)
                await run.event("health", "succeeded", f"{url} answered {status}")
                return
            if attempt < settings.healthcheck_retries:
                await asyncio.sleep(settings.healthcheck_interval)
        run.result.health = HealthRecord(
            settings.healthcheck_retries, error=run.secrets.redact(last)
        )
        raise StepFailed(
            f"health check failed: {url} {last} after {settings.healthcheck_retries} attempts",
            system_changed=True,
        )


def http_status(url: str, timeout: float) -> tuple[int | None, str]:
    """The status ``url`` answers a GET with, and how to say it."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (operator's URL)
            return response.status, f"answered {response.status}"
    except urllib.error.HTTPError as exc:
        return exc.code, f"answered {exc.code}"
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        return None, f"unreachable ({reason})"
