"""What a plugin's backends receive and return: releases, deploy requests and outcomes,
check lines, errors, what the target runs, and the context every backend is built with.
Public through :mod:`wrktalk_agent.interfaces`: plugins import them from there."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol
from uuid import UUID

from pydantic import BaseModel, ConfigDict, SecretStr

#: Release versions reach command lines (helm, docker compose) and file names, so they are
#: restricted to a conservative, semver-like alphabet. A leading dash would read as a flag.
VERSION_PATTERN = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")
#: What a release type (``release_artifact.chart_type``, a deployer's ``chart_types``)
#: may be: the core pins no names, only their shape.
RELEASE_TYPE_PATTERN = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,39}$")


def validate_version(version: str) -> str:
    """Return ``version`` unchanged, or raise ``ValueError`` naming what is allowed."""
    if not VERSION_PATTERN.fullmatch(version):
        raise ValueError(
            f"invalid release version {version!r}: use 1-64 characters from "
            "[0-9A-Za-z.+_-], starting with a letter or digit"
        )
    return version


class BackendError(Exception):
    """A backend could not do what was asked; the message is shown to operators as is."""


class DeployError(BackendError):
    """A deploy or rollback failed.

    ``system_changed`` tells the core whether the target may have been modified (so an
    automatic rollback is worth trying); ``output`` is a bounded tail of the tool's output.
    """

    def __init__(self, message: str, *, output: str = "", system_changed: bool = True) -> None:
        super().__init__(message)
        self.output = output
        self.system_changed = system_changed


class ValidationError(BackendError):
    """The release cannot be applied as it is. Raised by a deployer's optional
    ``validate(request)``: the core fails the task before maintenance goes on, with
    nothing changed and no rollback. ``output`` is the tool's own message (bounded)."""

    def __init__(self, message: str, *, output: str = "") -> None:
        super().__init__(message)
        self.output = output


@dataclass(frozen=True)
class LiveState:
    """What a deployer finds running on its target (its optional ``live_release()``).

    ``version`` is the release version the target runs (``None``: nothing, or not known);
    ``state`` is ``"deployed"`` (that version is fully applied), ``"half-applied"``
    (an interrupted deploy or rollback left it partly changed: ``version`` is the best
    guess), ``"absent"`` (nothing of the installation runs) or ``"unknown"`` (the
    deployer could not tell; ``detail`` says why). ``detail`` is shown to operators.
    """

    version: str | None
    state: Literal["deployed", "half-applied", "absent", "unknown"]
    detail: str = ""


@dataclass(frozen=True)
class Release:
    """One row of ``release_artifact``, without its bytes."""

    id: UUID
    version: str
    #: ``release_artifact.chart_type``: any text; a deployer's ``chart_types`` says which
    #: values it applies (the core does not pin the set)
    chart_type: str
    sha256: str


@dataclass(frozen=True)
class DeployRequest:
    """What a deployer gets for one deploy or rollback.

    ``workdir`` holds the extracted release (chart directory or compose files) plus
    ``.env`` (``env_file``) and ``values.yaml`` (``values_file``) when the release has
    them; the directory is private (0700) and securely deleted after the task, so a
    deployer that needs the files afterwards (compose bind mounts) copies them.
    ``current`` is the release live before this task (``None`` on a first deploy).
    ``purpose`` is ``"deploy"``, ``"rollback"`` (an operator's rollback task) or
    ``"auto-rollback"`` (the core undoing a failed deploy). ``report`` appends a line
    to the task's event timeline (use it for progress an operator should see).
    """

    task_id: UUID
    purpose: Literal["deploy", "rollback", "auto-rollback"]
    release: Release
    workdir: Path
    env_file: Path | None
    values_file: Path | None
    current: Release | None
    report: Callable[[str], Awaitable[None]]


@dataclass
class DeployOutcome:
    """A successful deploy or rollback: ``output`` is a bounded tail of the tool's output,
    ``details`` small JSON-able facts (revision numbers, commands run) kept in the task
    result."""

    output: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckResult:
    """One line of a preflight check (``wrktalk-agent check``)."""

    name: str
    ok: bool
    detail: str = ""


class Recipient(BaseModel):
    model_config = ConfigDict(defer_build=True)  # built when first used, not at import

    name: str
    email: str


class SmtpConfig(BaseModel):
    """SMTP columns of ``deployment_config`` (all optional in the database)."""

    model_config = ConfigDict(defer_build=True)

    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: SecretStr | None = None
    sender: str | None = None


class Directory(Protocol):
    """Read-only facts from the database a plugin may need at run time."""

    async def active_admins(self) -> list[Recipient]: ...

    async def smtp_config(self) -> SmtpConfig: ...


@dataclass(frozen=True)
class PluginContext:
    """Handed to every backend factory next to the backend's own settings."""

    agent_id: str
    installation: str
    work_dir: Path
    directory: Directory
