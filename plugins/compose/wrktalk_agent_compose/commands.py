"""Command lines for Compose v2 (``docker compose``) and v1 (``docker-compose``).

Kept free of I/O so that the exact argument lists can be tested without Docker.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from wrktalk_agent.interfaces import DeployError
from wrktalk_agent.process import run

from .settings import ComposeSettings

Variant = Literal["v2", "v1"]

#: `docker compose version` and friends answer at once when Docker is healthy.
QUERY_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class ComposeCommand:
    """One project's compose invocation, with the flags every subcommand shares."""

    variant: Variant
    docker: str
    compose_v1: str
    project: str
    compose_file: Path
    env_file: Path | None
    #: more compose files merged over ``compose_file`` (the agent's release labels)
    overrides: tuple[Path, ...] = ()

    def base(self) -> list[str]:
        program = [self.docker, "compose"] if self.variant == "v2" else [self.compose_v1]
        args = [*program, "-p", self.project, "-f", str(self.compose_file)]
        for override in self.overrides:
            args += ["-f", str(override)]
        # Passed explicitly to v1 too: where v1 looks for .env by default changed
        # between releases (working directory vs. project directory).
        if self.env_file is not None:
            args += ["--env-file", str(self.env_file)]
        return args

    def up(self, *, force_recreate: bool = False) -> list[str]:
        # No v2 `--wait`: the agent waits itself for both variants, reacting to Docker's
        # events within ~100 ms (v2's own wait polls more coarsely).
        args = [*self.base(), "up", "-d", "--remove-orphans"]
        if force_recreate:
            args.append("--force-recreate")
        return args

    def config(self) -> list[str]:
        """Validate and print the resolved model (interpolated: may hold secrets)."""
        return [*self.base(), "config"]


#: labels Compose puts on the containers it creates (both variants)
PROJECT_LABEL = "com.docker.compose.project"
ONE_OFF_LABEL = "com.docker.compose.oneoff"
SERVICE_LABEL = "com.docker.compose.service"
CONFIG_FILES_LABEL = "com.docker.compose.project.config_files"


def project_containers(docker: str, project: str, *extra: str) -> list[str]:
    """`docker ps` of the project's service containers, stopped ones too (one-off `run`
    containers are not part of a release). Cheaper than a compose `ps`, same answer."""
    return [
        docker, "ps", "--all", "--no-trunc",
        "--filter", f"label={PROJECT_LABEL}={project}",
        "--filter", f"label={ONE_OFF_LABEL}=False",
        *extra,
    ]  # fmt: skip


def version_command(settings: ComposeSettings, variant: Variant) -> list[str]:
    if variant == "v2":
        return [settings.docker_binary, "compose", "version"]
    return [settings.compose_v1_binary, "version"]


async def probe(settings: ComposeSettings, variant: Variant) -> tuple[bool, str]:
    """Whether ``variant`` works here, with its version line or the reason it does not.
    The answer is the plugin's: not streamed into a task's timeline."""
    result = await run(
        version_command(settings, variant), timeout=QUERY_TIMEOUT_SECONDS, stream=False
    )
    if not result.ok:
        return False, result.summary()
    lines = result.output.strip().splitlines()
    return True, lines[0] if lines else ""


#: Where the docker CLI looks for its plugins besides ``$DOCKER_CONFIG/cli-plugins``
#: (docker/cli's cli-plugins/manager, Linux defaults).
CLI_PLUGIN_DIRS = (
    "/usr/local/lib/docker/cli-plugins",
    "/usr/local/libexec/docker/cli-plugins",
    "/usr/lib/docker/cli-plugins",
    "/usr/libexec/docker/cli-plugins",
)


def compose_plugin(environ: os._Environ[str] | dict[str, str] | None = None) -> Path | None:
    """The Compose v2 CLI plugin the docker CLI would run, found without running it."""
    env = os.environ if environ is None else environ
    config = env.get("DOCKER_CONFIG") or str(Path(env.get("HOME", "/")) / ".docker")
    for directory in (str(Path(config) / "cli-plugins"), *CLI_PLUGIN_DIRS):
        candidate = Path(directory) / "docker-compose"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


async def resolve_variant(settings: ComposeSettings) -> Variant:
    """The configured variant, or the one found for ``command=auto`` with as few
    processes as possible (see :func:`find_variant`)."""
    if settings.command != "auto":
        return settings.command
    variant, _ = await find_variant(settings)
    return variant


async def find_variant(settings: ComposeSettings) -> tuple[Variant, str]:
    """The variant a task uses under ``command=auto``, cheaply: v2 when the docker CLI
    has the compose plugin (a file where the CLI looks, else `docker compose version`,
    a Go binary that answers in milliseconds), else v1 when ``docker-compose`` is on the
    PATH — not started here: v1 is Python, and the release's `config` call that follows
    proves it works. Raises :class:`DeployError` as :func:`detect_variant` does."""
    plugin = compose_plugin()
    if plugin is not None and settings.docker_binary == "docker":
        return "v2", f"docker CLI plugin {plugin}"
    works, detail = await probe(settings, "v2")
    if works:
        return "v2", detail
    v1 = shutil.which(settings.compose_v1_binary)
    if v1 is not None:
        return "v1", f"{v1} (docker compose: {detail})"
    return await detect_variant(settings)


async def detect_variant(settings: ComposeSettings) -> tuple[Variant, str]:
    """v2 when `docker compose version` works, else v1 when `docker-compose version`
    does; with the version line. Raises :class:`DeployError` when neither works."""
    reasons = []
    preference: tuple[Variant, ...] = ("v2", "v1")
    for variant in preference:
        works, detail = await probe(settings, variant)
        if works:
            return variant, detail
        reasons.append(f"`{' '.join(version_command(settings, variant))}`: {detail}")
    raise DeployError(
        "no Docker Compose command found ("
        + "; ".join(reasons)
        + "); install the compose plugin (v2) or docker-compose (v1), "
        "or set WRKTALK_AGENT_COMPOSE_COMMAND",
        system_changed=False,
    )
