"""Running external commands: argument lists only, bounded output, no orphans (for plugins)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: How much of a command's output is kept for task results and errors.
TAIL_BYTES = 8 * 1024
#: After SIGTERM, how long a command gets to clean up before SIGKILL.
STOP_GRACE_SECONDS = 5.0
#: Exit status reported when the executable does not exist, as a shell would.
NOT_FOUND = 127
#: Exit status reported when a command ran out of time and was killed.
TIMED_OUT = -1


@dataclass(frozen=True)
class CommandResult:
    args: tuple[str, ...]
    returncode: int
    #: stdout, complete, for commands whose output is parsed (``capture_stdout=True``);
    #: otherwise empty and stdout is part of ``output``
    stdout: str
    #: the last :data:`TAIL_BYTES` of what the command printed (stderr, and stdout unless
    #: captured separately)
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def summary(self) -> str:
        """The last non-empty output line: usually the tool's actual error."""
        lines = [line.strip() for line in self.output.splitlines() if line.strip()]
        return lines[-1] if lines else f"exit status {self.returncode}"


def tail(text: str, limit: int = TAIL_BYTES) -> str:
    """The end of ``text``, at most ``limit`` bytes of UTF-8."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[-limit:].decode(errors="ignore")


async def run(
    args: Sequence[str],
    *,
    cwd: Path | None = None,
    timeout: float | None = None,
    capture_stdout: bool = False,
    env: Mapping[str, str] | None = None,
) -> CommandResult:
    """Run ``args`` (never through a shell) and wait for it.

    The child gets its own process group so that cancelling the awaiting task (or a
    timeout) stops it together with anything it started (``docker compose`` runs as a
    CLI plugin, a grandchild of ours).
    """
    argv = tuple(args)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE if capture_stdout else asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except (FileNotFoundError, PermissionError) as exc:
        return CommandResult(argv, NOT_FOUND, "", f"{argv[0]}: {exc.strerror or exc}")
    assert proc.stdout is not None
    # Filled while the command runs, so what it printed survives a timeout.
    stdout, output = bytearray(), bytearray()
    try:
        async with asyncio.timeout(timeout):
            if capture_stdout:
                assert proc.stderr is not None
                await asyncio.gather(
                    _read(proc.stdout, stdout, keep=None),
                    _read(proc.stderr, output, keep=TAIL_BYTES),
                )
            else:
                await _read(proc.stdout, output, keep=TAIL_BYTES)
            returncode = await proc.wait()
    except TimeoutError:
        await _stop(proc)
        said = output.decode(errors="replace")
        note = f"{argv[0]}: timed out after {timeout:g}s"
        return CommandResult(argv, TIMED_OUT, "", tail(f"{said}\n{note}" if said else note))
    except BaseException:  # cancelled: the child must not outlive the task
        await _stop(proc)
        raise
    return CommandResult(
        argv, returncode, stdout.decode(errors="replace"), output.decode(errors="replace")
    )


async def _read(stream: asyncio.StreamReader, buffer: bytearray, *, keep: int | None) -> None:
    while chunk := await stream.read(64 * 1024):
        buffer += chunk
        if keep is not None and len(buffer) > keep:
            del buffer[:-keep]


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the child's process group, then SIGKILL it after a grace period."""
    if proc.returncode is not None:
        return
    _signal_group(proc, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), STOP_GRACE_SECONDS)
    except TimeoutError:
        pass
    finally:  # also when cancelled a second time while waiting
        if proc.returncode is None:
            _signal_group(proc, signal.SIGKILL)


def _signal_group(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
