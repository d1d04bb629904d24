"""Running external commands: argument lists only, bounded output, no orphans (for plugins).

No orphans, in three layers:

* cancelling the awaiting task (or a timeout) stops the command's whole process group:
  SIGTERM, a grace period (:func:`stop_grace`), then SIGKILL;
* while a task runs, the core knows every group its commands started
  (:func:`track_groups`) and can kill them itself when it loses its lease; a group stays
  known until the task ends, so a background child a command left in it dies with a
  fenced task too;
* a watchdog process (``wrktalk_agent/_janitor.py``) learns each group as it starts and
  the deadline of the task's lease (:func:`lease_deadline`). It stops them all when the
  deadline passes unrenewed — even if the agent is frozen or blocked — and when the agent
  dies, even by SIGKILL. The agent is a child subreaper, so a command's descendants that
  detach (double fork, ``setsid``) are re-parented to it and the watchdog finds them too.

What a *completed* task's commands leave running is the release's business: the watchdog
forgets it when the task ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from wrktalk_agent.process_groups import (
    STOP_GRACE_SECONDS,
    command_ended,
    command_started,
    kill_groups,
    lease_deadline,
    reap_adopted,
    set_janitor_grace,
    start_janitor,
    stop_grace,
    task_ended,
    track_groups,
)
from wrktalk_agent.process_output import (
    SINK_LINE_BYTES,
    TAIL_BYTES,
    TAIL_MARGIN_BYTES,
    LineSplitter,
    OutputTail,
    output_masker,
    output_sink,
    streaming_output,
    tail,
)

__all__ = [
    "NOT_FOUND",
    "SINK_LINE_BYTES",
    "STOP_GRACE_SECONDS",
    "TAIL_BYTES",
    "TAIL_MARGIN_BYTES",
    "TIMED_OUT",
    "CommandResult",
    "kill_groups",
    "lease_deadline",
    "output_masker",
    "output_sink",
    "reap_adopted",
    "run",
    "set_janitor_grace",
    "start_janitor",
    "stop_grace",
    "streaming_output",
    "tail",
    "task_ended",
    "track_groups",
]

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
    #: captured separately), as storable text (:func:`wrktalk_agent.safe_text.storable`),
    #: the running task's secrets masked before it was cut
    output: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def summary(self) -> str:
        """The last non-empty output line: usually the tool's actual error."""
        lines = [line.strip() for line in self.output.splitlines() if line.strip()]
        return lines[-1] if lines else f"exit status {self.returncode}"


async def run(
    args: Sequence[str],
    *,
    cwd: Path | None = None,
    timeout: float | None = None,
    capture_stdout: bool = False,
    env: Mapping[str, str] | None = None,
    stream: bool = True,
) -> CommandResult:
    """Run ``args`` (never through a shell) and wait for it.

    The child gets its own process group so that cancelling the awaiting task (or a
    timeout) stops it together with anything it started (``docker compose`` runs as a
    CLI plugin, a grandchild of ours).

    ``stream=False``: the command is a question whose answer is for the plugin (a version
    probe, a status, a resolved configuration), not progress an operator waits for; its
    output stays in the result and out of the task's timeline (:data:`output_sink`).
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
    command_started(proc.pid)
    try:
        return await _communicate(proc, argv, timeout, capture_stdout, stream=stream)
    finally:
        command_ended(proc.pid, reaped=proc.returncode is not None)


async def _communicate(
    proc: asyncio.subprocess.Process,
    argv: tuple[str, ...],
    timeout: float | None,
    capture_stdout: bool,
    *,
    stream: bool = True,
) -> CommandResult:
    assert proc.stdout is not None
    masker = output_masker.get()
    # Filled while the command runs, so what it printed survives a timeout.
    stdout, output = bytearray(), OutputTail(masker)
    # stdout that is parsed (JSON, a status) is not progress: only the rest streams
    sink = output_sink.get() if stream else None
    lines = LineSplitter(sink, masker) if sink is not None else None
    try:
        async with asyncio.timeout(timeout):
            if capture_stdout:
                assert proc.stderr is not None
                await asyncio.gather(
                    _read(proc.stdout, stdout.extend),
                    _read(proc.stderr, output.feed, lines=lines),
                )
            else:
                await _read(proc.stdout, output.feed, lines=lines)
            returncode = await proc.wait()
    except TimeoutError:
        await _stop(proc)
        note = f"{argv[0]}: timed out after {timeout:g}s"
        said = output.text(f"\n{note}") if output.data else note
        return CommandResult(argv, TIMED_OUT, "", said)
    except BaseException:  # cancelled: the child must not outlive the task
        await _stop(proc)
        raise
    return CommandResult(argv, returncode, stdout.decode(errors="replace"), output.text())


async def _read(
    stream: asyncio.StreamReader,
    keep: Callable[[bytes], object],
    *,
    lines: LineSplitter | None = None,
) -> None:
    try:
        while chunk := await stream.read(64 * 1024):
            keep(chunk)
            if lines is not None:
                lines.feed(chunk)
    finally:
        if lines is not None:
            lines.close()


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the child's process group, then SIGKILL it after a grace period."""
    if proc.returncode is not None:
        return
    _signal_group(proc, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), stop_grace())
    except TimeoutError:
        pass
    finally:  # also when cancelled a second time while waiting
        if proc.returncode is None:
            _signal_group(proc, signal.SIGKILL)


def _signal_group(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
