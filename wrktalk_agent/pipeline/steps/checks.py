"""Validate and prepare: the deployer's optional looks at the release before maintenance
goes on. A release they refuse fails here, with nothing changed."""

from __future__ import annotations

from wrktalk_agent.contract import DEPLOYER
from wrktalk_agent.guard import bounded
from wrktalk_agent.interfaces import BackendError, ValidationError
from wrktalk_agent.pipeline.state import StepFailed, TaskState
from wrktalk_agent.pipeline.steps.deploy import request_for
from wrktalk_agent.results import ToolOutput


async def validate(run: TaskState) -> None:
    """The deployer's ``validate``: may the target be deployed at all?"""
    check = DEPLOYER.optional_method(run.deployer, "validate")
    if check is None:
        return
    assert run.target is not None and run.workdir is not None
    name = run.deployer.name
    request = request_for(run, run.task.type, run.target, run.workdir, run.current)
    async with run.step("validate", f"{name} checks {run.target.release_version}"):
        try:
            warnings = await bounded(
                check(request), run.settings.backend_timeout, f"{name} validate"
            )
        except ValidationError as exc:
            run.result.rejected_before_deploy = True
            if exc.output:
                run.result.validation = ToolOutput(run.tail(exc.output))
            raise StepFailed(f"rejected before deploy: {exc}") from None
        except BackendError as exc:
            run.result.rejected_before_deploy = True
            raise StepFailed(f"rejected before deploy: {exc}") from None
        for warning in warnings or ():
            await run.event("validate", "info", f"warning: {warning}")
        await run.event("validate", "succeeded", "release accepted")


async def prepare(run: TaskState) -> None:
    """The deployer's ``prepare``: stage the release while the site is still up."""
    stage = DEPLOYER.optional_method(run.deployer, "prepare")
    if stage is None:
        return
    assert run.target is not None and run.workdir is not None
    request = request_for(run, run.task.type, run.target, run.workdir, run.current)
    async with run.step("prepare", "staging the release (site still up)", slow=True):
        try:
            await bounded(
                stage(request), run.settings.backend_timeout, f"{run.deployer.name} prepare"
            )
        except BackendError as exc:
            raise StepFailed(f"could not prepare the release: {exc}") from None
        await run.event("prepare", "succeeded", "staged")
