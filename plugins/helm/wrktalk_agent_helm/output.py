"""What helm prints, made into task output and error messages.

Helm's cause comes last (cobra prints the error after everything else), so output is cut
from its start and an error message in its middle.
"""

from __future__ import annotations

import re

from wrktalk_agent.process import tail

#: the output kept for the task result: the core's byte bound, and at most this many lines
MAX_OUTPUT_LINES = 100
#: the length a Helm error is cut to in a task's error message (its end is kept)
MAX_ERROR_CHARS = 1000
#: how helm says that the release it was asked about does not exist
RELEASE_NOT_FOUND = "release: not found"
#: Helm 3 writes "Kubernetes cluster unreachable", Helm 4 "kubernetes cluster unreachable"
UNREACHABLE = re.compile(r"kubernetes cluster unreachable", re.IGNORECASE)
#: all Helm says when its uninstall could not delete a resource: the cause goes to its
#: debug log only
DELETE_FAILED = "failed to delete release:"
#: how Helm's upgrade and rollback say that they could not build the objects of a stored
#: revision (Helm 3 and 4 alike): the current one, or for a rollback also its target
_STORED_MANIFEST = re.compile(r"unable to build kubernetes objects from (current|new) release")


def bounded(text: str) -> str:
    """The end of some helm output, as kept in task results and errors."""
    return tail("\n".join(text.splitlines()[-MAX_OUTPUT_LINES:]))


def helm_error(output: str, returncode: int) -> str:
    """Helm's own ``Error: ...`` (with the lines that continue it), or the last line it
    printed.

    Cobra prints the error last, and an error can span lines: Helm 3's wrapped lists are
    indented, Helm 4 joins several errors (each resource its wait gave up on, then
    ``context deadline exceeded``) one per line; a blank line ends it (usage follows)."""
    lines = output.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("Error:"):
            text = line.strip()
            for following in lines[index + 1 :]:
                if not following.strip():
                    break
                indented = following.startswith((" ", "\t", "*"))
                text += (" " if indented else "; ") + following.strip()
            return shorten(text, MAX_ERROR_CHARS)
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    return f"exit status {returncode}" + (f": {last[:300]}" if last else "")


def explained(error: str) -> str:
    """Helm's error, with what to do when the release's stored manifest names a kind the
    API server no longer serves: Helm then refuses upgrade, rollback and uninstall alike,
    and no retry helps."""
    if _STORED_MANIFEST.search(error) and "no matches for kind" in error:
        return (
            f"{error} (the release's stored manifest names a kind the cluster no longer "
            "serves: reinstall its CRD, or rewrite the stored release with the "
            "helm-mapkubeapis plugin; until then Helm cannot upgrade, roll back or "
            "uninstall the release)"
        )
    return error


def shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters in the middle: Helm's cause comes last."""
    if len(text) <= limit:
        return text
    keep = (limit - 5) // 2
    return f"{text[:keep]} ... {text[-keep:]}"
