"""Resolve: which release the task deploys (or rolls back to), and what is live now."""

from __future__ import annotations

import structlog

from wrktalk_agent.interfaces import validate_version
from wrktalk_agent.pipeline.state import StepFailed, TaskState
from wrktalk_agent.results import ReleaseRecord


async def resolve(run: TaskState) -> None:
    async with run.step("resolve"):
        await _resolve(run)
    assert run.target is not None
    # plugins' own log lines carry the task too (this runs in the task's own context)
    structlog.contextvars.bind_contextvars(version=run.target.release_version)


async def _resolve(run: TaskState) -> None:
    task, repo = run.task, run.repo
    run.current = await repo.current_release()
    if task.type == "rollback":
        run.target = await repo.previous_release()
        if run.target is None:
            raise StepFailed("no previous release to roll back to")
        wanted = task.release_artifact_id
        if wanted is not None and wanted != run.target.id:
            # the operator confirmed a target that is no longer the previous release
            asked = await repo.release_by_id(wanted)
            raise StepFailed(
                f"rollback to {asked.release_version if asked else wanted} requested, "
                f"but the previous release is now {run.target.release_version}"
            )
    else:
        if task.release_artifact_id is None:
            raise StepFailed("release_artifact_id is NULL: a deploy task must name a release")
        run.target = await repo.release_by_id(task.release_artifact_id)
        if run.target is None:
            raise StepFailed(f"release artifact {task.release_artifact_id} not found")
    target, current = run.target, run.current
    try:  # the backend may have written anything: it must not reach a command line
        validate_version(target.release_version)
    except ValueError as exc:
        raise StepFailed(f"{exc} (column release_version)") from None
    if target.size == 0:
        raise StepFailed(f"artifact_data of release {target.release_version} is empty (0 bytes)")
    accepted = tuple(getattr(run.deployer, "chart_types", ()))
    if accepted and target.chart_type not in accepted:
        raise StepFailed(
            f"release {target.release_version} has chart_type "
            f"{target.chart_type!r}, but deployer {run.deployer.name!r} "
            f"accepts {', '.join(accepted)}"
        )
    run.result.release = ReleaseRecord(
        target.release_version, current.release_version if current else None
    )
    await run.event(
        "resolve",
        "succeeded",
        f"{task.type} to {target.release_version}"
        + (f" (current {current.release_version})" if current else " (first release)"),
    )
