"""Recovery of a release an interrupted helm left unfinished, before a deploy or a
rollback changes it again."""

from __future__ import annotations

from wrktalk_agent.interfaces import DeployError, DeployRequest
from wrktalk_agent_helm.client import HelmClient
from wrktalk_agent_helm.history import PENDING_STATUSES
from wrktalk_agent_helm.output import DELETE_FAILED

#: the statuses :func:`recover_pending` acts on; a deploy or rollback over them fails
STUCK_STATUSES = PENDING_STATUSES | {"uninstalling"}


async def recover_pending(
    helm: HelmClient, request: DeployRequest, transcript: list[str], *, hard_timeout: float
) -> str | None:
    """Unblock a release an interrupted helm left unfinished; returns what was done
    (``None``: nothing to do). ``hard_timeout`` bounds each helm command it runs.

    The core runs one deployment per installation at a time, so such a release is not
    another helm still at work but the remains of one that was stopped — by the agent
    (its runner gives helm 5 s after SIGTERM, less than Helm's own cancellation
    rollback or uninstall may take) or by a crash:

    * ``pending-install``/``pending-upgrade``/``pending-rollback`` (killed mid-run, or
      during the rollback Helm started itself after a cancelled upgrade, which leaves
      ``failed`` + ``pending-rollback``): rolled back to the last deployed revision
      (else the newest superseded one), or uninstalled when nothing ever ran;
    * ``uninstalling`` (Helm's own uninstall after a cancelled first install, which in
      Helm 4 waits for the deletion, or an interrupted or failed uninstall of ours):
      Helm refuses an upgrade only when no revision is ``deployed`` any more — the
      usual case, since an uninstall marks the newest revision — but either way the
      release's resources may be half deleted, so the uninstall is run again (Helm
      accepts it) and the release is then installed afresh;
    * ``failed``: Helm upgrades and rolls back from it as it is; nothing to do.
    """
    latest = await helm.latest()
    if latest is None:
        return None  # first install
    state, stuck = latest.get("status"), latest.get("revision")
    if state not in STUCK_STATUSES:
        return None
    release, namespace = helm.settings.release_name, helm.settings.namespace
    await request.report(
        f"Helm release {release} is stuck in {state} (revision {stuck}) after an "
        "interrupted run; recovering it"
    )
    history = await helm.history() or []
    deployed = [int(e["revision"]) for e in history if e.get("status") == "deployed"]
    superseded = [int(e["revision"]) for e in history if e.get("status") == "superseded"]
    if state == "uninstalling" or (state == "pending-install" and not deployed):
        if state == "uninstalling":
            note = f"finished the interrupted uninstall of revision {stuck}"
        else:
            note = f"uninstalled revision {stuck} ({state}); the release was never deployed"
        note += await _uninstall(helm, request, str(state), transcript, hard_timeout=hard_timeout)
    elif deployed or superseded:
        target = max(deployed) if deployed else max(superseded)
        which = "the last deployed one" if deployed else "the newest that once ran"
        await helm.action(
            ["rollback", release, str(target), *await helm.wait_flags()],
            what=f"helm rollback of the stuck release to revision {target}",
            hard_timeout=hard_timeout,
            transcript=transcript,
        )
        note = f"rolled back revision {stuck} ({state}) to revision {target}, {which}"
    else:
        raise DeployError(
            f"Helm release {release} is stuck in {state} (revision {stuck}) and has no "
            "deployed revision to return to; inspect it with `helm history "
            f"{release} -n {namespace}`, then `helm rollback {release} REVISION -n "
            f"{namespace}` to a good revision or `helm uninstall {release} -n {namespace}`",
            system_changed=False,
        )
    await request.report(f"recovered Helm release {release}: {note}")
    return note


async def _uninstall(
    helm: HelmClient,
    request: DeployRequest,
    state: str,
    transcript: list[str],
    *,
    hard_timeout: float,
) -> str:
    """``helm uninstall --wait``; when it fails, Helm's storage tells what happened.

    Helm can fail after it purged the release ("uninstallation completed with N
    error(s)": the wait for the deletion or a post-delete hook failed), which is done
    as far as the next install is concerned; or before, with only "failed to delete
    release: NAME" (the cause goes to Helm's debug log), which leaves the release
    ``uninstalling``. Returns a remark for the recovery note (empty when it went fine).
    """
    release, namespace = helm.settings.release_name, helm.settings.namespace
    try:
        await helm.action(
            ["uninstall", release, "--namespace", namespace, await helm.wait_flag(),
             "--timeout", helm.settings.timeout],
            what=f"helm uninstall of the {state} release",
            hard_timeout=hard_timeout,
            transcript=transcript,
        )  # fmt: skip
        return ""
    except DeployError as failed:
        try:
            left = await helm.latest()
        except DeployError as unreadable:
            raise DeployError(
                f"{failed}; the release's history could not be read afterwards: {unreadable}",
                output=failed.output,
            ) from None
        if left is None or left.get("status") == "uninstalled":
            remark = f" (Helm removed the release but reported: {failed})"
            await request.report(
                f"helm uninstall removed Helm release {release} but reported errors; "
                f"installing it afresh: {failed}"
            )
            return remark
        hint = ""
        if DELETE_FAILED in str(failed):
            hint = (
                f"; Helm logs the cause only with --debug: run `helm uninstall {release} "
                f"-n {namespace} --debug` to see it (a resource kind the cluster no "
                "longer serves is a common one)"
            )
        raise DeployError(
            f"{failed}; Helm release {release} is still {left.get('status')} (revision "
            f"{left.get('revision')}), and the next deploy or rollback tries the "
            f"uninstall again{hint}",
            output=failed.output,
        ) from None
