"""Helm's release history as the agent reads it (``helm history --output json``).

Every Helm revision the agent creates carries the description
``wrktalk-agent release <version>``: that is how a rollback finds the revision of a
release version, and how the live release is told.
"""

from __future__ import annotations

import re
from typing import Any

from wrktalk_agent.interfaces import LiveState

#: statuses of a revision a helm left unfinished; Helm refuses to upgrade over them
#: ("another operation (install/upgrade/rollback) is in progress")
PENDING_STATUSES = frozenset({"pending-install", "pending-upgrade", "pending-rollback"})
#: statuses of a revision that once ran fine and can be returned to
ROLLBACK_TARGET_STATUSES = frozenset({"deployed", "superseded"})
#: ``helm history`` shows the newest 256 revisions unless told otherwise; with
#: ``--history-max 0`` a release can have more, and rollback must see them all
HISTORY_ALL = 1_000_000
_ROLLBACK_TO = re.compile(r"^Rollback to (\d+)$")


def release_description(version: str) -> str:
    return f"wrktalk-agent release {version}"


def release_version(entry: dict[str, Any], history: list[dict[str, Any]]) -> str | None:
    """The release version a revision runs: from the agent's description, following
    Helm's "Rollback to N" back to the revision it copied."""
    by_revision = {int(e["revision"]): e for e in history}
    seen: set[int] = set()
    while True:
        description = str(entry.get("description") or "")
        prefix = release_description("")
        if description.startswith(prefix):
            return description[len(prefix) :] or None
        match = _ROLLBACK_TO.match(description)
        if match is None or int(match.group(1)) in seen:
            return None
        seen.add(int(match.group(1)))
        target = by_revision.get(int(match.group(1)))
        if target is None:
            return None
        entry = target


def find_revision(history: list[dict[str, Any]], version: str) -> int | None:
    """The newest revision the agent created for ``version`` that once ran fine."""
    wanted = release_description(version)
    revisions = [
        int(entry["revision"])
        for entry in history
        if entry.get("description") == wanted and entry.get("status") in ROLLBACK_TARGET_STATUSES
    ]
    return max(revisions, default=None)


def live_state(history: list[dict[str, Any]] | None, release: str, namespace: str) -> LiveState:
    """What the cluster runs according to the release's history: the newest revision's
    status, and the release version recorded in its description."""
    if not history:
        return LiveState(None, "absent", f"Helm has no release {release} in {namespace}")
    latest = history[-1]
    status, revision = str(latest.get("status")), latest.get("revision")
    if status == "deployed":
        version = release_version(latest, history)
        detail = f"Helm release {release} revision {revision} is deployed"
        if version is None:
            detail += " (not by wrktalk-agent: its description names no release)"
        return LiveState(version, "deployed", detail)
    if status == "uninstalled":
        return LiveState(None, "absent", f"Helm release {release} was uninstalled")
    # half-applied: the best guess is what the newest revision that ran fine runs
    good = [e for e in history if e.get("status") in ROLLBACK_TARGET_STATUSES]
    version = release_version(good[-1], history) if good else None
    chart = f"{latest.get('chart')}, app version {latest.get('app_version') or '-'}"
    return LiveState(
        version,
        "half-applied",
        f"Helm release {release} revision {revision} is {status} ({chart}): "
        f"{latest.get('description')}",
    )
