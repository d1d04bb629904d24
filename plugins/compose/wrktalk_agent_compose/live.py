"""What the compose project runs now, read from its containers' labels (read-only)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from wrktalk_agent.interfaces import LiveState
from wrktalk_agent.process import run

from .commands import CONFIG_FILES_LABEL, QUERY_TIMEOUT_SECONDS, SERVICE_LABEL, project_containers
from .releases import RELEASE_LABEL, RELEASES_DIR
from .settings import ComposeSettings

_EXITED_OK = re.compile(r"^Exited \(0\)")
_RELEASE_DIR = re.compile(rf"/{RELEASES_DIR}/([0-9A-Za-z][0-9A-Za-z.+_-]*)/[^/,]+$")
_FORMAT = "\t".join(
    [
        "{{.Names}}",
        "{{.State}}",
        "{{.Status}}",
        f'{{{{.Label "{SERVICE_LABEL}"}}}}',
        f'{{{{.Label "{RELEASE_LABEL}"}}}}',
        f'{{{{.Label "{CONFIG_FILES_LABEL}"}}}}',
    ]
)


@dataclass(frozen=True)
class LiveContainer:
    name: str
    state: str  # running, exited, restarting, created, paused, dead
    status: str  # "Up 3 minutes (healthy)", "Exited (0) 2 minutes ago"
    service: str
    version: str | None

    @property
    def settled(self) -> bool:
        """Running, or a one-shot job that finished with 0 (a migration, say)."""
        if self.state == "running":
            return "(unhealthy)" not in self.status
        return self.state == "exited" and bool(_EXITED_OK.match(self.status))


def parse_containers(output: str) -> list[LiveContainer]:
    containers = []
    for line in output.splitlines():
        fields = line.split("\t")
        if len(fields) != 6:
            continue
        name, state, status, service, label, config_files = fields
        version = label or _version_from_config_files(config_files)
        containers.append(LiveContainer(name, state, status, service, version))
    return containers


def _version_from_config_files(config_files: str) -> str | None:
    """Containers deployed before the release label existed: compose records the compose
    file's path, ``.../releases/<version>/docker-compose.yml``."""
    first = config_files.split(",")[0]
    match = _RELEASE_DIR.search(first)
    return match.group(1) if match else None


def judge(containers: list[LiveContainer]) -> LiveState:
    """deployed: every container of one version, all settled; half-applied: versions
    mixed or some not running (the most common version is the guess); absent: none."""
    if not containers:
        return LiveState(None, "absent", "no containers in the compose project")
    versions = Counter(c.version for c in containers)
    guess = max(versions, key=lambda v: (versions[v], v is not None))
    unsettled = [c for c in containers if not c.settled]
    if len(versions) == 1 and guess is not None and not unsettled:
        return LiveState(guess, "deployed", f"{len(containers)} container(s) of {guess}")
    parts = []
    if len(versions) > 1:
        mixed = ", ".join(
            f"{v or 'unlabelled'}: {_names(c for c in containers if c.version == v)}"
            for v in sorted(versions, key=lambda v: v or "")
        )
        parts.append(f"mixed releases ({mixed})")
    if unsettled:
        parts.append(
            "not running: "
            + ", ".join(f"{c.name} ({c.status})" for c in sorted(unsettled, key=lambda c: c.name))
        )
    if guess is None:
        parts.append("no release label")
    return LiveState(guess, "half-applied", "; ".join(parts))


def _names(containers: Iterable[LiveContainer]) -> str:
    return ", ".join(sorted(c.name for c in containers))


async def live_state(settings: ComposeSettings) -> LiveState:
    listed = await run(
        project_containers(settings.docker_binary, settings.project_name, "--format", _FORMAT),
        timeout=QUERY_TIMEOUT_SECONDS,
        capture_stdout=True,
    )
    if not listed.ok:
        return LiveState(None, "unknown", f"docker ps failed: {listed.summary()}")
    return judge(parse_containers(listed.stdout))
