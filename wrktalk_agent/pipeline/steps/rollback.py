"""Auto-rollback: after a deploy that changed the site and failed, return to the release
that was live before it."""

from __future__ import annotations

from wrktalk_agent.guard import describe
from wrktalk_agent.interfaces import NotificationKind
from wrktalk_agent.pipeline.outcome import Verdict, both_causes
from wrktalk_agent.pipeline.state import StepFailed, TaskState
from wrktalk_agent.pipeline.steps.artifact import release_root
from wrktalk_agent.pipeline.steps.deploy import call_deployer
from wrktalk_agent.pipeline.steps.health import health_check
from wrktalk_agent.results import AutoRollbackRecord


async def after_failure(run: TaskState, failure: StepFailed) -> Verdict:
    """The verdict of a failed task, with the automatic rollback a changed site needs."""
    verdict = Verdict("failed", error=str(failure))
    if run.task.type != "deploy" or not failure.system_changed:
        return verdict
    rollback_error = await auto_rollback(run, failure)
    if rollback_error != "skipped":
        verdict.kind = NotificationKind.AUTO_ROLLBACK
        verdict.rollback_error = rollback_error
    if rollback_error not in (None, "skipped") and run.current is not None:
        # the site is in an unknown state: both causes, on the first line
        verdict.deploy_error = verdict.error
        verdict.error = both_causes(str(failure), run.current.release_version, str(rollback_error))
    return verdict


async def auto_rollback(run: TaskState, failure: StepFailed) -> str | None:
    """Undo a failed deploy. Returns None on success, the error text on failure, or
    ``"skipped"`` when no rollback applies."""
    if not run.settings.auto_rollback:
        await run.event("auto-rollback", "skipped", "WRKTALK_AGENT_AUTO_ROLLBACK is off")
        return "skipped"
    if run.current is None or run.target is None:
        await run.event("auto-rollback", "skipped", "no earlier release to return to")
        return "skipped"
    current, version = run.current, run.current.release_version
    try:
        workdir = await release_root(run, current, "auto-rollback-artifact")
        async with run.step("auto-rollback", f"returning to {version} after: {failure}", slow=True):
            outcome = await call_deployer(
                run, "auto-rollback", current, workdir, current=run.target
            )
            await health_check(run)
            await run.event("auto-rollback", "succeeded", f"{version} restored")
        run.result.auto_rollback = AutoRollbackRecord(
            version, True, output=run.tail(outcome.output)
        )
        return None
    except StepFailed as exc:
        error = run.secrets.redact(str(exc))
        run.result.auto_rollback = AutoRollbackRecord(version, False, error=error)
        return error
    except Exception as exc:  # a bug must not leave the task without an outcome
        run.log.exception("auto_rollback.crashed")
        error = run.secrets.redact(f"unexpected error: {describe(exc)}")
        run.result.auto_rollback = AutoRollbackRecord(version, False, error=error)
        return error
