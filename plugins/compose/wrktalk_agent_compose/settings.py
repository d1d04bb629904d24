"""Settings of the compose deployer (``WRKTALK_AGENT_COMPOSE_*``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Compose's own rule for project names; anything else is rejected by `docker compose`
#: only at deploy time, so we reject it at startup instead.
PROJECT_NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*$")

CommandChoice = Literal["auto", "v2", "v1"]


class ComposeSettings(BaseSettings):
    """How the compose deployer finds Docker and where it keeps releases."""

    model_config = SettingsConfigDict(env_prefix="WRKTALK_AGENT_COMPOSE_", extra="ignore")

    project_name: str = Field(
        default="wrktalk",
        description="Compose project name (-p): lowercase letters, digits, '-' and '_', "
        "starting with a letter or digit.",
    )
    working_dir: Path = Field(
        default=Path("/var/lib/wrktalk-agent/compose"),
        description="Stable directory holding releases/<version>/; bind mounts point here.",
    )
    command: CommandChoice = Field(
        default="auto",
        description="'v2' (docker compose), 'v1' (docker-compose) or 'auto' (v2 when "
        "`docker compose version` works, else v1).",
    )
    keep_releases: int = Field(
        default=2, ge=2, description="Release directories kept (at least current and previous)."
    )
    wait_timeout: int = Field(
        default=300, ge=1, description="Seconds to wait for containers to be running and healthy."
    )
    docker_binary: str = Field(
        default="docker", description="Docker CLI executable (name or path)."
    )
    on_validation_unavailable: Literal["fail", "warn"] = Field(
        default="fail",
        description="When a release's validation cannot run (no compose command, Docker "
        "unreachable): fail the task before maintenance, or deploy anyway with a warning in "
        "the task's timeline.",
    )
    compose_v1_binary: str = Field(
        default="docker-compose", description="Compose v1 executable (name or path)."
    )

    @field_validator("project_name")
    @classmethod
    def _compose_project_name(cls, value: str) -> str:
        if not PROJECT_NAME_PATTERN.fullmatch(value):
            raise ValueError(
                "must contain only lowercase letters, digits, dashes and underscores, "
                "and start with a lowercase letter or digit"
            )
        return value
