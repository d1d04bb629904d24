"""Checks of a release against this host, before maintenance goes on: every image it
needs is bundled or already present, every host port it publishes is free or held by
this project. The services come from `compose config` (see
:meth:`~wrktalk_agent_compose.deployer.ComposeDeployer.validate`)."""

from __future__ import annotations

import asyncio
from typing import Any

from wrktalk_agent.interfaces import ValidationError
from wrktalk_agent.process import run

from .commands import QUERY_TIMEOUT_SECONDS, project_containers
from .layout import ReleaseLayout
from .settings import ComposeSettings
from .validation import (
    bundled_images,
    normalize_image,
    port_in_use,
    ports_from_docker_ps,
    published_ports,
)


def unavailable(settings: ComposeSettings, message: str) -> list[str]:
    """Validation that cannot run: a failure, or (on_validation_unavailable=warn) a
    warning the core writes into the timeline before deploying anyway."""
    if settings.on_validation_unavailable == "fail":
        raise ValidationError(
            f"{message} (WRKTALK_AGENT_COMPOSE_ON_VALIDATION_UNAVAILABLE=warn deploys anyway)"
        )
    return [message]


async def check_images(
    settings: ComposeSettings, layout: ReleaseLayout, services: dict[str, dict[str, Any]]
) -> list[str]:
    """Refuse an image that is neither in the release's ``images/`` nor on this host;
    returns a warning when docker cannot tell (and the settings allow it)."""
    wanted = sorted({str(s["image"]) for s in services.values() if s.get("image")})
    bundled = await asyncio.to_thread(bundled_images, layout.images)
    elsewhere = [image for image in wanted if normalize_image(image) not in bundled]
    if not elsewhere:
        return []
    present = await run(
        [settings.docker_binary, "image", "inspect", "--format", "{{.Id}}", *elsewhere],
        timeout=QUERY_TIMEOUT_SECONDS,
        stream=False,
    )
    if present.ok:
        return []
    missing = [i for i in elsewhere if f"no such image: {i}".lower() in present.output.lower()]
    if not missing:  # not an answer about the images: docker itself failed
        return unavailable(settings, f"could not check the images: {present.summary()}")
    raise ValidationError(
        f"image(s) neither in the release's images/ nor present on this host: {', '.join(missing)}",
        output=present.output,
    )


async def check_ports(settings: ComposeSettings, services: dict[str, dict[str, Any]]) -> None:
    """Refuse a published host port another process holds (one the project's own
    containers hold is fine: the deploy replaces them)."""
    ports = sorted({p for s in services.values() for p in published_ports(s)})
    taken = [p for p in ports if await asyncio.to_thread(port_in_use, p)]
    if not taken:
        return
    listed = await run(
        project_containers(settings.docker_binary, settings.project_name, "--format", "{{.Ports}}"),
        timeout=QUERY_TIMEOUT_SECONDS,
        capture_stdout=True,
        stream=False,
    )
    if not listed.ok:
        raise ValidationError(f"could not check the published ports: {listed.summary()}")
    ours = ports_from_docker_ps(listed.stdout.splitlines())
    others = [p for p in taken if (p.port, p.protocol) not in ours]
    if others:
        raise ValidationError(
            f"published port(s) {', '.join(map(str, others))} already in use by another "
            f"process (not by compose project {settings.project_name})"
        )
