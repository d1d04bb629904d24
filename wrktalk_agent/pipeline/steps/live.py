"""What is live: the deployer's answer (its optional ``live_release()``), in words.

A task interrupted mid-deploy asks before maintenance goes off
(:func:`after_interruption`); a recovery asks before it decides the outcome."""

from __future__ import annotations

from wrktalk_agent.contract import DEPLOYER
from wrktalk_agent.guard import bounded
from wrktalk_agent.interfaces import BackendError, LiveState
from wrktalk_agent.pipeline.state import TaskState
from wrktalk_agent.services import Services


async def ask_live(services: Services) -> LiveState:
    """What the deployer says the target runs (its optional ``live_release()``)."""
    query = DEPLOYER.optional_method(services.deployer, "live_release")
    if query is None:
        return LiveState(
            None, "unknown", f"deployer {services.deployer.name!r} cannot tell what is live"
        )
    try:
        live = await bounded(
            query(), services.settings.backend_timeout, f"{services.deployer.name} live_release"
        )
    except BackendError as exc:
        return LiveState(None, "unknown", str(exc))
    if not isinstance(live, LiveState):
        return LiveState(None, "unknown", f"live_release returned {type(live).__name__}")
    return live


def live_text(live: LiveState) -> str:
    if live.state == "deployed":
        text = f"{live.version} live"
    elif live.state == "half-applied":
        text = f"{live.version or 'a release'} half-applied"
    elif live.state == "absent":
        text = "nothing deployed"
    else:
        text = "live release unknown"
    return f"{text} ({live.detail})" if live.detail else text


async def after_interruption(run: TaskState) -> None:
    """The deploy was interrupted (a second SIGTERM): ask the deployer what is live
    before maintenance goes off, and say so."""
    live = await ask_live(run.services)
    text = live_text(live)
    run.result.live = {"version": live.version, "state": live.state, "detail": live.detail}
    target = run.target.release_version if run.target else None
    current = run.current.release_version if run.current else None
    if live.state == "deployed" and live.version in (target, current):
        run.interrupted_live = f"found {text}"
        await run.event("interrupted", "info", f"live: {text}")
        return
    nxt = (
        f"check the site, then deploy {target} again or roll back"
        if target
        else "check what the target runs, then deploy the release you want"
    )
    run.result.next_step = nxt
    run.interrupted_live = f"found {text}; next: {nxt}"
    run.log.warning("task.interrupted_live", live=text, next_step=nxt)
    await run.event("interrupted", "info", f"live: {text}: maintenance goes off anyway; {nxt}")
