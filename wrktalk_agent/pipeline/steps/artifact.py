"""Artifact: fetch, verify and extract a release into a private work dir."""

from __future__ import annotations

from pathlib import Path

from wrktalk_agent.artifacts import ArtifactError, make_private_dir, materialize
from wrktalk_agent.db.models import ArtifactInfo
from wrktalk_agent.pipeline.state import StepFailed, TaskState
from wrktalk_agent.results import ArtifactRecord


async def fetch_target(run: TaskState) -> None:
    """The task's target release, extracted (``run.workdir``)."""
    assert run.target is not None
    run.workdir = await release_root(run, run.target, "artifact")


async def release_root(run: TaskState, artifact: ArtifactInfo, step_name: str) -> Path:
    """Fetch, verify and extract ``artifact`` into a private work dir (once per task:
    a release extracted for the change summary serves the automatic rollback too)."""
    if artifact.id in run.roots:
        return run.roots[artifact.id]
    root = await _fetch_and_extract(run, artifact, step_name)
    run.roots[artifact.id] = root
    return root


async def _fetch_and_extract(run: TaskState, artifact: ArtifactInfo, step_name: str) -> Path:
    settings = run.settings
    async with run.step(step_name, f"fetching {artifact.release_version}", slow=True):
        workdir = make_private_dir(settings.work_dir, f"task-{run.task.id}-")
        run.workdirs.append(workdir)
        try:
            done = await materialize(
                run.repo,
                artifact,
                workdir,
                trusted_keys=run.services.trusted_keys,
                max_artifact_bytes=settings.max_artifact_bytes,
                max_members=settings.max_members,
                max_extracted_bytes=settings.max_extracted_bytes,
            )
        except ArtifactError as exc:
            raise StepFailed(str(exc)) from None
        run.secrets.add_release(done.env_data, done.values_data)
        fetched = done.fetched
        await run.event(
            step_name, "info", f"fetched {fetched.size} bytes in {fetched.seconds:.3f}s"
        )
        await run.event(
            step_name, "info", f"verified sha256 {fetched.sha256[:12]}…; {done.signature}"
        )
        run.result.artifacts[artifact.release_version] = ArtifactRecord(
            fetched.size, fetched.sha256, done.files
        )
        await run.event(step_name, "succeeded", f"extracted {done.files} files ({done.size} bytes)")
    return done.root
