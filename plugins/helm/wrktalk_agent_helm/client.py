"""The helm binary, run with one installation's settings.

Every helm command goes through :meth:`HelmClient.run`: the core's runner (an argument
list, its own process group, stopped on timeout or cancellation), the cluster's
connection flags, and an environment without what would make helm print secrets.

The release's state is always read with ``helm history --max 1``: it reads only Helm's
storage, where ``helm status`` (in Helm 4) also asks the API server for every resource
of the stored manifest and fails when a kind is no longer served.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from wrktalk_agent.interfaces import DeployError
from wrktalk_agent.process import NOT_FOUND, TIMED_OUT, CommandResult, run
from wrktalk_agent_helm.history import HISTORY_ALL
from wrktalk_agent_helm.output import RELEASE_NOT_FOUND, bounded, explained, helm_error
from wrktalk_agent_helm.settings import HelmSettings

SUPPORTED_MAJORS = (3, 4)
#: hard limit of status/history/list/version calls (an unreachable API server makes
#: client-go retry for ~30s before it gives up)
QUERY_TIMEOUT = 120.0
#: Helm's version: ``v3.16.4``, also ``v3.16`` and ``v3.16+unreleased`` from source builds
_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?([-+]\S*)?$")
#: in helm's environment, HELM_DEBUG=true works like --debug: helm would print the
#: release's values and rendered manifests into the task's output
_DROPPED_ENVIRONMENT = frozenset({"HELM_DEBUG"})


class HelmClient:
    """Runs helm for one release: read-only queries, commands that change the cluster
    (their output joins the task's transcript), and the flags both need."""

    def __init__(self, settings: HelmSettings) -> None:
        self.settings = settings
        #: Helm's version as it printed it, known once :meth:`major` asked
        self.version: str | None = None
        self._major: int | None = None

    async def major(self) -> int:
        """Helm's major version, asked once: Helm 4 renamed --atomic to --rollback-on-failure."""
        if self._major is not None:
            return self._major
        # No cluster flags: `helm version` never talks to the cluster.
        result = await self.run(
            ["version", "--template", "{{.Version}}"],
            timeout=QUERY_TIMEOUT,
            capture_stdout=True,
            connection=False,
        )
        text = result.stdout.strip()
        if not result.ok:
            raise DeployError(
                f"could not tell the Helm version with `{self.settings.binary} version`: "
                f"{helm_error(result.output, result.returncode)} (wrktalk-agent needs Helm 3 or 4)",
                system_changed=False,
            )
        match = _VERSION.fullmatch(text)
        if match is None or int(match.group(1)) not in SUPPORTED_MAJORS:
            raise DeployError(
                f"Helm {text[:40] or '(no version)'} is not supported: "
                "wrktalk-agent needs Helm 3 or 4",
                system_changed=False,
            )
        self.version, self._major = text, int(match.group(1))
        return self._major

    # -- reading the release -----------------------------------------------------------
    async def latest(self) -> dict[str, Any] | None:
        """The release's newest revision from Helm's storage (``None``: no release)."""
        history = await self.history(limit=1)
        return history[-1] if history else None

    async def history(self, limit: int = HISTORY_ALL) -> list[dict[str, Any]] | None:
        """The release's revisions, oldest first (``None``: no release)."""
        history = await self.query(["history", self.settings.release_name, "--max", str(limit)])
        if history is not None and not (
            isinstance(history, list)
            and all(isinstance(e, dict) and isinstance(e.get("revision"), int) for e in history)
        ):
            raise DeployError("helm history printed unexpected JSON", system_changed=False)
        return history

    async def query(self, args: list[str]) -> object:
        """A read-only helm command with JSON output; ``None`` when the release does not exist."""
        argv = [*args, "--namespace", self.settings.namespace, "--output", "json"]
        result = await self.run(argv, timeout=QUERY_TIMEOUT, capture_stdout=True)
        if result.returncode == TIMED_OUT:
            raise DeployError(
                f"helm {args[0]} got no answer within {QUERY_TIMEOUT:g}s", system_changed=False
            )
        if not result.ok:
            error = helm_error(result.output, result.returncode)
            if RELEASE_NOT_FOUND in error:
                return None
            raise DeployError(
                f"helm {args[0]} failed: {error}",
                output=bounded(result.output),
                system_changed=False,
            )
        try:
            return json.loads(result.stdout)
        except json.JSONDecodeError:
            raise DeployError(
                f"helm {args[0]} printed no valid JSON", system_changed=False
            ) from None

    # -- changing the cluster ----------------------------------------------------------
    async def action(
        self,
        args: list[str],
        *,
        what: str,
        hard_timeout: float,
        transcript: list[str],
        extra: list[str] | None = None,
    ) -> CommandResult:
        """A helm command that changes the cluster; its output joins the task transcript."""
        result = await self.run(args, timeout=hard_timeout, extra=extra)
        transcript.append(result.output)
        if result.returncode == TIMED_OUT:
            raise DeployError(
                f"{what} did not finish within {hard_timeout:g}s and was stopped; a release "
                "left pending is recovered by the next deploy or rollback",
                output=bounded("\n".join(transcript)),
            )
        if not result.ok:
            raise DeployError(
                f"{what} failed: {explained(helm_error(result.output, result.returncode))}",
                output=bounded("\n".join(transcript)),
            )
        return result

    async def run(
        self,
        args: list[str],
        *,
        timeout: float,
        capture_stdout: bool = False,
        connection: bool = True,
        extra: list[str] | None = None,
    ) -> CommandResult:
        """Run helm (the core's runner: argument list, own process group, stopped on
        timeout or cancellation). ``capture_stdout`` keeps stdout whole, for JSON."""
        argv = [self.settings.binary, *args]
        if connection:
            argv += self.connection_flags()
        argv += extra or []
        environment = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENVIRONMENT}
        result = await run(argv, timeout=timeout, capture_stdout=capture_stdout, env=environment)
        if result.returncode == NOT_FOUND:
            raise DeployError(
                f"cannot run helm binary {result.output}; install Helm 3 or 4 or set "
                "WRKTALK_AGENT_HELM_BINARY",
                system_changed=False,
            )
        return result

    # -- flags ---------------------------------------------------------------------------
    def connection_flags(self) -> list[str]:
        flags: list[str] = []
        if self.settings.kube_context:
            flags += ["--kube-context", self.settings.kube_context]
        if self.settings.kubeconfig is not None:
            flags += ["--kubeconfig", str(self.settings.kubeconfig)]
        return flags

    async def wait_flag(self) -> str:
        """Helm 3: ``--wait``. Helm 4: ``--wait=STRATEGY`` — always with ``=``, since its
        optional value would otherwise be read as a bare ``--wait`` and a positional."""
        if await self.major() == 3:
            return "--wait"
        return f"--wait={self.settings.wait_strategy}"

    async def atomic_flag(self) -> str:
        """The upgrade that undoes itself on failure: Helm 4 renamed ``--atomic``."""
        return "--atomic" if await self.major() == 3 else "--rollback-on-failure"

    async def wait_flags(self) -> list[str]:
        """A rollback's namespace, wait and history limit."""
        return [
            "--namespace", self.settings.namespace,
            await self.wait_flag(), "--timeout", self.settings.timeout,
            # rollback prunes history too; keep it on the same limit as upgrade
            "--history-max", str(self.settings.history_max),
        ]  # fmt: skip
