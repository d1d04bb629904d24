"""The ``compose`` deployer: releases for a single Docker host."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID

from wrktalk_agent.interfaces import (
    CheckResult,
    DeployError,
    DeployOutcome,
    DeployRequest,
    LiveState,
    PluginContext,
    ValidationError,
    validate_version,
)
from wrktalk_agent.process import NOT_FOUND, TIMED_OUT, run, tail

from .changes import summarize_changes
from .commands import (
    QUERY_TIMEOUT_SECONDS,
    ComposeCommand,
    Variant,
    detect_variant,
    probe,
    resolve_variant,
)
from .health import ProjectContainers
from .host_checks import check_images, check_ports, unavailable
from .layout import ReleaseLayout, read_layout
from .live import live_state
from .releases import RELEASES_DIR, InstalledRelease, install_release, prune_releases
from .settings import ComposeSettings
from .validation import resolved_services


@dataclass
class _Prepared:
    """A release staged for one task: images loaded, release directory (maybe) installed."""

    version: str
    layout: ReleaseLayout
    variant: Variant
    loaded: list[str] = field(default_factory=list)
    installed: InstalledRelease | None = None
    commands: list[str] = field(default_factory=list)


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
        #: what `prepare` staged for a task, picked up by its deploy
        self._prepared: dict[tuple[UUID, str, str], _Prepared] = {}

    # -- preflight -------------------------------------------------------------------
    async def check(self) -> Sequence[CheckResult]:
        return [await self._check_docker(), await self._check_compose(), self._check_working_dir()]

    async def _check_docker(self) -> CheckResult:
        result = await run(
            [self.settings.docker_binary, "version", "--format", "{{.Server.Version}}"],
            timeout=QUERY_TIMEOUT_SECONDS,
            stream=False,
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
            self._variant = variant  # what tasks of this agent use: no second detection
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

    # -- before maintenance: validate and prepare ---------------------------------------
    async def validate(self, request: DeployRequest) -> Sequence[str]:
        """Refuse a release that cannot come up, before anything changes: compose's own
        `config` check with the release's ``.env``, every image either bundled or already
        present, every published host port free or held by this project."""
        try:
            self._checked_version(request)
            layout = read_layout(request.workdir)
        except DeployError as exc:
            raise ValidationError(str(exc), output=exc.output) from None
        try:
            variant = await self._compose_variant()
        except DeployError as exc:
            return unavailable(self.settings, f"the release could not be validated: {exc}")
        command = self._command(variant, layout.compose_file, request.env_file)
        # The one `config` call of a task: its model serves the image and the port checks
        # below; its warnings come back as the step's warnings (not streamed: the model
        # is interpolated, and a warning is one line, not progress).
        config = await run(
            command.config(),
            cwd=layout.root,
            timeout=QUERY_TIMEOUT_SECONDS,
            capture_stdout=True,
            stream=False,
        )
        if config.returncode in (NOT_FOUND, TIMED_OUT):
            return unavailable(self.settings, f"compose config could not run: {config.summary()}")
        if not config.ok:  # stderr only: stdout would be the interpolated model
            raise ValidationError(
                f"compose config rejects the release: {config.summary()}", output=config.output
            )
        services = resolved_services(config.stdout)
        # compose's warnings (stderr), e.g. a variable the .env does not set
        warnings = [
            line.strip() for line in config.output.splitlines() if "variable is not set" in line
        ]
        for name, service in services.items():
            if not service.get("image"):
                warnings.append(f"service {name} has no image: compose will build it")
        warnings += await check_images(self.settings, layout, services)
        await check_ports(self.settings, services)
        return warnings

    async def prepare(self, request: DeployRequest) -> None:
        """Load the bundled images and install the release directory, before maintenance
        goes on: neither touches the running containers. Re-installing the live version
        is left to the deploy (its containers bind-mount that directory)."""
        await self._prepared_for(request, early=True)

    async def _prepared_for(self, request: DeployRequest, *, early: bool = False) -> _Prepared:
        key = (request.task_id, request.purpose, str(request.workdir))
        prepared = self._prepared.get(key)
        if prepared is None:
            version = self._checked_version(request)
            layout = read_layout(request.workdir)
            variant = await self._compose_variant()
            prepared = _Prepared(version, layout, variant)
            prepared.loaded = await self._load_images(request, layout, prepared.commands)
            self._prepared = {key: prepared}  # one task at a time: forget older ones
        live = request.current is not None and request.current.version == prepared.version
        if prepared.installed is None and not (early and live):
            prepared.installed = await self._install(request, prepared)
        return prepared

    async def _install(self, request: DeployRequest, prepared: _Prepared) -> InstalledRelease:
        version = prepared.version
        try:
            installed = await asyncio.to_thread(
                install_release,
                self.settings.working_dir,
                version,
                prepared.layout,
                request.env_file,
            )
        except OSError as exc:
            raise DeployError(
                f"could not install release {version} into {self.settings.working_dir}: {exc}",
                system_changed=False,
            ) from exc
        await request.report(f"compose: release {version} installed in {installed.path}")
        return installed

    # -- deploy and rollback ----------------------------------------------------------
    async def deploy(self, request: DeployRequest) -> DeployOutcome:
        return await self._apply(request)

    async def rollback(self, request: DeployRequest) -> DeployOutcome:
        # The core extracts the release to return to into request.workdir (its release
        # dir may have been pruned), so a rollback is the same install-and-up.
        return await self._apply(request)

    async def _apply(self, request: DeployRequest) -> DeployOutcome:
        # Whatever `prepare` did for this request is not done again.
        prepared = await self._prepared_for(request)
        self._prepared = {}
        installed = prepared.installed
        assert installed is not None
        version, variant, commands = prepared.version, prepared.variant, prepared.commands
        command = self._command(
            variant, installed.compose_file, installed.env_file, installed.labels_file
        )
        containers = ProjectContainers(
            self.settings.docker_binary, command.project, prepared.layout.one_shot_services
        )
        up_args = command.up(force_recreate=installed.replaced)
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
        states = await containers.wait_until_ready(self.settings.wait_timeout)
        await request.report(f"compose: {len(states)} container(s) ready")

        pruned = await self._prune(request, version)
        details: dict[str, Any] = {
            "compose": variant,
            "project": command.project,
            "release_dir": str(installed.path),
            "images_loaded": prepared.loaded,
            "containers": {s.name: s.describe() for s in states},
            "pruned_releases": pruned,
            "commands": commands,
        }
        return DeployOutcome(output=tail(up.output), details=details)

    def _command(
        self,
        variant: Variant,
        compose_file: Path,
        env_file: Path | None,
        *overrides: Path,
    ) -> ComposeCommand:
        return ComposeCommand(
            variant=variant,
            docker=self.settings.docker_binary,
            compose_v1=self.settings.compose_v1_binary,
            project=self.settings.project_name,
            compose_file=compose_file,
            env_file=env_file,
            overrides=overrides,
        )

    # -- what changes, what is live ---------------------------------------------------
    async def describe_changes(
        self, current_workdir: Path | None, target_workdir: Path
    ) -> list[str]:
        """Services added and removed, images and published ports changed (see
        :func:`~wrktalk_agent_compose.changes.summarize_changes`)."""
        return await asyncio.to_thread(summarize_changes, current_workdir, target_workdir)

    async def live_release(self) -> LiveState:
        """What the project's containers run, from the release label each carries (or,
        for containers of an older agent, the release directory in compose's own label)."""
        return await live_state(self.settings)

    def _checked_version(self, request: DeployRequest) -> str:
        # The core validates too; this is the last check before the version becomes a
        # directory name and part of command lines.
        try:
            return validate_version(request.release.version)
        except ValueError as exc:
            raise DeployError(str(exc), system_changed=False) from exc

    async def _compose_variant(self) -> Variant:
        # Found once per agent (this instance lives as long as the agent), with as few
        # processes as possible: the host does not change under us.
        if self._variant is None:
            self._variant = await resolve_variant(self.settings)
        return self._variant

    async def _load_images(
        self, request: DeployRequest, layout: ReleaseLayout, commands: list[str]
    ) -> list[str]:
        # Loading a tag that running containers use only moves the tag: they keep their
        # image, so this is safe before maintenance.
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
