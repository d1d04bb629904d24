"""Deploy (or rollback): hand the extracted release to the deployer, bounded in time."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Literal

from wrktalk_agent.artifacts import ENV_FILE, VALUES_FILE
from wrktalk_agent.db.models import ArtifactInfo
from wrktalk_agent.guard import cancel_requested, describe
from wrktalk_agent.interfaces import BackendError, DeployError, DeployOutcome, DeployRequest
from wrktalk_agent.pipeline.state import StepFailed, TaskState
from wrktalk_agent.results import ToolOutput

Purpose = Literal["deploy", "rollback", "auto-rollback"]


async def deploy(run: TaskState) -> None:
    """The task's own deploy or rollback of its target."""
    assert run.target is not None and run.workdir is not None
    version = run.target.release_version
    purpose: Literal["deploy", "rollback"] = run.task.type
    async with run.step(purpose, f"{purpose} {version} with {run.deployer.name}", slow=True):
        run.deploy_started = True
        outcome = await call_deployer(run, purpose, run.target, run.workdir)
        run.result.deployer = ToolOutput(
            run.tail(outcome.output), run.secrets.redact_value(outcome.details)
        )
        await run.event(purpose, "succeeded", f"{version} applied")


def request_for(
    run: TaskState,
    purpose: Purpose,
    release: ArtifactInfo,
    workdir: Path,
    current: ArtifactInfo | None,
) -> DeployRequest:
    """What the deployer is handed for ``release`` extracted in ``workdir``."""
    env_file = workdir / ENV_FILE
    values_file = workdir / VALUES_FILE
    step = "auto-rollback" if purpose == "auto-rollback" else purpose

    async def report(message: str) -> None:
        await run.event(step, "info", message, flush=True)

    return DeployRequest(
        task_id=run.task.id,
        purpose=purpose,
        release=release.as_release(),
        workdir=workdir,
        env_file=env_file if env_file.exists() else None,
        values_file=values_file if values_file.exists() else None,
        current=current.as_release() if current else None,
        report=report,
    )


async def call_deployer(
    run: TaskState,
    purpose: Purpose,
    release: ArtifactInfo,
    workdir: Path,
    current: ArtifactInfo | None = None,
) -> DeployOutcome:
    """The deployer's deploy (or rollback), its failures as :class:`StepFailed`."""
    deployer = run.deployer
    request = request_for(run, purpose, release, workdir, current or run.current)
    method = deployer.deploy if purpose == "deploy" else deployer.rollback
    limit = run.settings.deploy_timeout
    try:
        # A hung deployer would hold the one-deployment slot for ever while its
        # heartbeat says all is well: stop it (plugins kill their child processes).
        async with asyncio.timeout(limit):
            return await method(request)
    except TimeoutError:
        raise StepFailed(
            f"{purpose} did not finish within {limit:g}s (WRKTALK_AGENT_DEPLOY_TIMEOUT)",
            system_changed=True,
        ) from None
    except asyncio.CancelledError:
        if cancel_requested():
            raise
        raise StepFailed(
            f"deployer {deployer.name!r} {purpose} was cancelled from within",
            system_changed=True,
        ) from None
    except DeployError as exc:
        run.result.deployer = ToolOutput(run.tail(exc.output))
        raise StepFailed(str(exc), system_changed=exc.system_changed, output=exc.output) from None
    except BackendError as exc:
        raise StepFailed(str(exc), system_changed=True) from None
    except Exception as exc:  # a plugin bug: the target may have changed all the same
        run.log.exception("deployer.crashed", method=purpose)
        raise StepFailed(
            f"deployer {deployer.name!r} failed: {describe(exc)}", system_changed=True
        ) from None
