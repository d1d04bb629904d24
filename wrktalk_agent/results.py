"""The result a task records (``agent_task.result``), as types.

One dataclass per part, written by the pipeline step that owns it and turned into the
JSON the dashboard, the CLI and the backend read by :meth:`TaskResult.to_json` — the keys
are the stored format, kept stable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class StepRecord:
    step: str
    ok: bool
    seconds: float


@dataclass
class ReleaseRecord:
    version: str
    #: the release live before the task (None on a first deploy)
    previous: str | None


@dataclass
class ArtifactRecord:
    size: int
    sha256: str
    files: int


@dataclass
class ToolOutput:
    """What a tool printed (its tail, secrets masked) and small facts a deployer kept."""

    output: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class HealthRecord:
    attempts: int
    status: int | None = None
    error: str | None = None


@dataclass
class AutoRollbackRecord:
    to: str
    ok: bool
    output: str | None = None
    error: str | None = None


@dataclass
class TaskResult:
    agent_id: str
    steps: list[StepRecord] = field(default_factory=list)
    release: ReleaseRecord | None = None
    artifacts: dict[str, ArtifactRecord] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)
    rejected_before_deploy: bool = False
    validation: ToolOutput | None = None
    deployer: ToolOutput | None = None
    health: HealthRecord | None = None
    auto_rollback: AutoRollbackRecord | None = None
    outcome: Literal["completed", "failed"] | None = None
    error: str | None = None
    #: what the deployer found live (after an interrupted deploy) and what to do next
    live: dict[str, Any] | None = None
    next_step: str | None = None
    #: maintenance stayed on after the task: for how long, or still on
    maintenance: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "agent_id": self.agent_id,
            "steps": [{"step": s.step, "ok": s.ok, "seconds": s.seconds} for s in self.steps],
        }
        if self.release is not None:
            data["release"] = {"version": self.release.version, "from": self.release.previous}
        if self.artifacts:
            data["artifacts"] = {
                version: {"bytes": a.size, "sha256": a.sha256, "files": a.files}
                for version, a in self.artifacts.items()
            }
        if self.changes:
            data["changes"] = list(self.changes)
        if self.rejected_before_deploy:
            data["rejected_before_deploy"] = True
        if self.validation is not None:
            data["validation"] = {"output": self.validation.output}
        if self.deployer is not None:
            data["deployer"] = {"output": self.deployer.output, "details": self.deployer.details}
        if self.health is not None:
            data["health"] = _without_none(
                {"status": self.health.status, "error": self.health.error}
            ) | {"attempts": self.health.attempts}
        if self.auto_rollback is not None:
            rollback = self.auto_rollback
            data["auto_rollback"] = {"to": rollback.to, "ok": rollback.ok} | _without_none(
                {"output": rollback.output, "error": rollback.error}
            )
        if self.outcome is not None:
            data["outcome"] = self.outcome
        if self.error:
            data["error"] = self.error
        if self.live is not None:
            data["live"] = self.live
        if self.next_step:
            data["next_step"] = self.next_step
        if self.maintenance:
            data["maintenance"] = self.maintenance
        return data


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}
