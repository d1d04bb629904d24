"""Changes: what the task will change, in the deployer's words, before anything does."""

from __future__ import annotations

from wrktalk_agent.contract import DEPLOYER
from wrktalk_agent.guard import bounded
from wrktalk_agent.interfaces import BackendError
from wrktalk_agent.pipeline.state import StepFailed, TaskState
from wrktalk_agent.pipeline.steps.artifact import release_root

#: Lines of a change summary kept in the result, the timeline and the email.
MAX_CHANGE_LINES = 50


async def summarize_changes(run: TaskState) -> None:
    """The deployer's comparison of the live release with the target (its optional
    ``describe_changes``). A summary that cannot be made is a note, never a failure."""
    describe_changes = DEPLOYER.optional_method(run.deployer, "describe_changes")
    if describe_changes is None or run.target is None:
        return
    if run.current is not None and run.current.id == run.target.id:
        return
    async with run.step("changes", "comparing with the live release"):
        try:
            current_root = None
            if run.current is not None:
                current_root = await release_root(run, run.current, "changes-artifact")
            lines = await bounded(
                describe_changes(current_root, run.workdir),
                run.settings.backend_timeout,
                f"{run.deployer.name} describe_changes",
            )
        except (BackendError, StepFailed) as exc:
            await run.event("changes", "skipped", f"no summary: {exc}")
            return
        run.changes = [str(line) for line in lines or ()][:MAX_CHANGE_LINES]
        run.result.changes = run.changes
        for line in run.changes:
            await run.event("changes", "info", line)
        count = len(run.changes)
        said = "no change" if not count else f"{count} change{'s' if count != 1 else ''}"
        await run.event("changes", "succeeded", said)
