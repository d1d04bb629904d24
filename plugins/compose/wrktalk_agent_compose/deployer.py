"""The ``compose`` deployer: releases for a single Docker host."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Sequence
from typing import Any, ClassVar

from wrktalk_agent.interfaces import (
    CheckResult,
    DeployError,
    DeployOutcome,
    DeployRequest,
    PluginContext,
    validate_version,
)
from wrktalk_agent.process import run, tail

from .commands import (
    QUERY_TIMEOUT_SECONDS,
    ComposeCommand,
    Variant,
    detect_variant,
    probe,
    resolve_variant,
)
from .health import ProjectContainers
from .layout import ReleaseLayout, read_layout
from .releases import RELEASES_DIR, install_release, prune_releases
from .settings import ComposeSettings


class ComposeDeployer:
    """Installs a release into ``releases/<version>/``, loads its bundled images and
    brings the compose project up, waiting until every container is healthy."""

    name: ClassVar[str] = "compose"
    chart_types: ClassVar[tuple[str, ...]] = ("compose",)
    settings_model: ClassVar[type[ComposeSettings]] = ComposeSettings

    def __init__(self, settings: ComposeSettings | None, context: PluginContext) -> None:
        self.settings = settings if settings is not None else ComposeSettings()
        self.context = context
        self._variant: Variant | None = None

    # -- preflight -------------------------------------------------------------------
    async def check(self) -> Sequence[CheckResult]:
        return [await self._check_docker(), await self._check_compose(), self._check_working_dir()]

    async def _check_docker(self) -> CheckResult:
        result = await run(
            [self.settings.docker_binary, "version", "--format", "{{.Server.Version}}"],
            timeout=QUERY_TIMEOUT_SECONDS,
        )
        if result.ok:
            return CheckResult("docker", True, f"engine {result.output.strip()}")
        return CheckResult("docker", False, f"Docker engine not reachable: {result.summary()}")

    async def _check_compose(self) -> CheckResult:
        configured = self.settings.command
        if configured == "auto":
            try:
                variant, detail = await detect_variant(self.settings)
            except DeployError as exc:
                return CheckResult("compose", False, str(exc))
            return CheckResult("compose", True, f"{variant} (detected): {detail}")
        works, detail = await probe(self.settings, configured)
        return CheckResult("compose", works, f"{configured} (configured): {detail}")

    def _check_working_dir(self) -> CheckResult:
        releases = self.settings.working_dir / RELEASES_DIR
        try:
            releases.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=releases, prefix=".check-"):
                pass
        except OSError as exc:
            return CheckResult("working dir", False, f"{releases} is not writable: {exc}")
        return CheckResult("working dir", True, f"{releases} is writable")

    # -- deploy and rollback ----------------------------------------------------------
    async def deploy(self, request: DeployRequest) -> DeployOutcome:
        return await self._apply(request)

    async def rollback(self, request: DeployRequest) -> DeployOutcome:
        # The core extracts the release to return to into request.workdir (its release
        # dir may have been pruned), so a rollback is the same install-and-up.
        return await self._apply(request)

    async def _apply(self, request: DeployRequest) -> DeployOutcome:
        version = self._checked_version(request)
        layout = read_layout(request.workdir)
        variant = await self._compose_variant()
        commands: list[str] = []

        loaded = await self._load_images(request, layout, commands)
        try:
            installed = await asyncio.to_thread(
                install_release, self.settings.working_dir, version, layout, request.env_file
            )
        except OSError as exc:
            raise DeployError(
                f"could not install release {version} into {self.settings.working_dir}: {exc}",
                system_changed=False,
            ) from exc
        await request.report(f"compose: release {version} installed in {installed.path}")

        command = ComposeCommand(
            variant=variant,
            docker=self.settings.docker_binary,
            compose_v1=self.settings.compose_v1_binary,
            project=self.settings.project_name,
            compose_file=installed.compose_file,
            env_file=installed.env_file,
        )
        containers = ProjectContainers(command, installed.path, layout.one_shot_services)
        up_args = command.up(
            wait_timeout=self.settings.wait_timeout, force_recreate=installed.replaced
        )
        commands.append(" ".join(up_args))
        await request.report(
            f"compose: {variant} up of project {command.project} ({request.purpose} {version})"
        )
        up = await run(up_args, cwd=installed.path)
        if not up.ok:
            bad = await containers.unready()
            message = f"compose up failed for release {version}: {up.summary()}"
            if bad:
                raise await containers.failure(f"{message}; not ready", bad, up.output)
            raise DeployError(message, output=up.output)
        if variant == "v1":  # v1 has no --wait: it returns once containers are started
            states = await containers.wait_until_ready(self.settings.wait_timeout)
        else:
            states = await containers.current()
        await request.report(f"compose: {len(states)} container(s) ready")

        pruned = await self._prune(request, version)
        details: dict[str, Any] = {
            "compose": variant,
            "project": command.project,
            "release_dir": str(installed.path),
            "images_loaded": loaded,
            "containers": {s.name: s.describe() for s in states},
            "pruned_releases": pruned,
            "commands": commands,
        }
        return DeployOutcome(output=tail(up.output), details=details)

    def _checked_version(self, request: DeployRequest) -> str:
        # The core validates too; this is the last check before the version becomes a
        # directory name and part of command lines.
        try:
            return validate_version(request.release.version)
        except ValueError as exc:
            raise DeployError(str(exc), system_changed=False) from exc

    async def _compose_variant(self) -> Variant:
        if self._variant is None:  # detect once: the host does not change under us
            self._variant = await resolve_variant(self.settings)
        return self._variant

    async def _load_images(
        self, request: DeployRequest, layout: ReleaseLayout, commands: list[str]
    ) -> list[str]:
        loaded = []
        for image in layout.images:
            relative = image.relative_to(layout.root).as_posix()
            await request.report(f"compose: docker load -i {relative}")
            args = [self.settings.docker_binary, "load", "-i", str(image)]
            commands.append(" ".join(args))
            result = await run(args, cwd=layout.root)
            if not result.ok:
                raise DeployError(
                    f"docker load of {relative} failed: {result.summary()}",
                    output=result.output,
                    system_changed=False,
                )
            loaded.append(relative)
        return loaded

    async def _prune(self, request: DeployRequest, version: str) -> list[str]:
        protected = {version}
        if request.current is not None:
            protected.add(request.current.version)
        try:
            pruned = await asyncio.to_thread(
                prune_releases, self.settings.working_dir, self.settings.keep_releases, protected
            )
        except OSError as exc:
            # The release is live; stale directories only cost disk space.
            await request.report(f"compose: could not prune old releases: {exc}")
            return []
        if pruned:
            await request.report(f"compose: pruned release dir(s) {', '.join(pruned)}")
        return pruned
