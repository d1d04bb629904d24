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
import codecs
import contextlib
import contextvars
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from wrktalk_agent.redact import Masker, masked_tail, merged_spans, safe_cut
from wrktalk_agent.safe_text import storable

#: How much of a command's output is kept for task results and errors.
TAIL_BYTES = 8 * 1024
#: Output read beyond the tail, so that the secrets are masked before the tail is cut (a
#: cut through a secret leaves a piece that no longer matches).
TAIL_MARGIN_BYTES = 16 * 1024
#: After SIGTERM, how long a command gets to clean up before SIGKILL.
STOP_GRACE_SECONDS = 5.0
#: Exit status reported when the executable does not exist, as a shell would.
NOT_FOUND = 127
#: Exit status reported when a command ran out of time and was killed.
TIMED_OUT = -1

#: Grace between SIGTERM and SIGKILL when a command is stopped; the core shortens it while
#: a task runs so that stopping fits inside the lease margin.
_STOP_GRACE: contextvars.ContextVar[float] = contextvars.ContextVar(
    "wrktalk_stop_grace", default=STOP_GRACE_SECONDS
)
#: Process groups started in the current task (see :func:`track_groups`).
_TASK_GROUPS: contextvars.ContextVar[set[int] | None] = contextvars.ContextVar(
    "wrktalk_task_groups", default=None
)
#: Groups of the current task whose command has exited: the watchdog keeps them until the
#: task ends (a background child may still be in one).
_TASK_EXITED: contextvars.ContextVar[set[int] | None] = contextvars.ContextVar(
    "wrktalk_task_exited", default=None
)


#: Where the lines commands print go while they run (besides the bounded tail every
#: :class:`CommandResult` keeps): the core sets a sink for the duration of a task, so that
#: every plugin's commands stream into the task's timeline without the plugin doing
#: anything. The sink is called with one line at a time (no line end) and must not block.
output_sink: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar(
    "wrktalk_output_sink", default=None
)
#: A line longer than this is passed to the sink in pieces (a progress bar without line
#: ends must not grow a buffer without limit), in characters.
SINK_LINE_BYTES = 4 * 1024
#: The secrets of the running task: commands' output is masked before any cut (the tail
#: kept in :class:`CommandResult`, the pieces of an over-long line).
output_masker: contextvars.ContextVar[Masker | None] = contextvars.ContextVar(
    "wrktalk_output_masker", default=None
)


@contextlib.contextmanager
def streaming_output(
    sink: Callable[[str], None] | None, masker: Masker | None = None
) -> Iterator[None]:
    """Send the output lines of commands run in this context (and in tasks it creates)
    to ``sink`` while they run; ``masker`` names the secrets no cut may split. For the
    core."""
    token = output_sink.set(sink)
    mask_token = output_masker.set(masker) if masker is not None else None
    try:
        yield
    finally:
        output_sink.reset(token)
        if mask_token is not None:
            output_masker.reset(mask_token)


def stop_grace() -> float:
    """Seconds a stopped command gets between SIGTERM and SIGKILL in this context."""
    return _STOP_GRACE.get()


@contextlib.contextmanager
def track_groups(grace: float | None = None) -> Iterator[set[int]]:
    """Collect the process groups of commands started in this context (and in tasks it
    creates) while they run; optionally shorten the stop grace. For the core."""
    groups: set[int] = set()
    exited: set[int] = set()
    group_token = _TASK_GROUPS.set(groups)
    exited_token = _TASK_EXITED.set(exited)
    grace_token = _STOP_GRACE.set(grace) if grace is not None else None
    try:
        yield groups
    finally:
        _TASK_GROUPS.reset(group_token)
        _TASK_EXITED.reset(exited_token)
        if grace_token is not None:
            _STOP_GRACE.reset(grace_token)
        for pgid in exited:
            _janitor.send(f"-{pgid}")


def lease_deadline(deadline: float | None, *, new_lease: bool = False) -> None:
    """Tell the watchdog until when (``time.monotonic()``) the task's lease is renewed;
    ``None``: no lease is held any more. At the deadline the watchdog stops every command
    of the task, whatever state the agent is in. ``new_lease``: a task's lease begins now
    (what runs before it is not the task's). For the core."""
    if deadline is None:
        _janitor.send("L-")
    elif new_lease:
        _janitor.send(f"L{deadline:.6f} {time.clock_gettime(time.CLOCK_BOOTTIME):.3f}")
    else:
        _janitor.send(f"L{deadline:.6f}")


def start_janitor() -> None:
    """Start the watchdog now rather than at the first command (the agent's start-up)."""
    _janitor.pid()


def task_ended() -> None:
    """The task is over: the watchdog forgets what its commands left running. For the core."""
    _janitor.send("F")


def kill_groups(groups: set[int]) -> int:
    """SIGKILL every group in ``groups``; returns how many were still there."""
    killed = 0
    for pgid in list(groups):
        try:
            os.killpg(pgid, signal.SIGKILL)
            killed += 1
        except (ProcessLookupError, PermissionError):
            pass
    return killed


class _Janitor:
    """The agent's side of ``_janitor.py``: one process per agent, started on first use."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self.grace = STOP_GRACE_SECONDS

    def _ensure(self) -> subprocess.Popen[bytes] | None:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        script = Path(__file__).with_name("_janitor.py")
        _become_subreaper()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(script), f"{self.grace:g}"],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError:
            self._proc = None
        return self._proc

    def send(self, line: str) -> None:
        with self._lock:
            proc = self._ensure()
            if proc is None or proc.stdin is None:
                return
            with contextlib.suppress(OSError, ValueError):
                os.write(proc.stdin.fileno(), f"{line}\n".encode())

    def pid(self) -> int | None:
        with self._lock:
            proc = self._ensure()
            return proc.pid if proc else None


_janitor = _Janitor()


_PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> None:
    """Adopt the orphans of our commands (Linux): a detached descendant of a deploy is
    re-parented to this process instead of init, where the watchdog can find it."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap_adopted() -> int:
    """Reap exited orphans this process adopted as a subreaper (zombies otherwise). Only
    children this module did not start itself are touched: their exit statuses belong to
    nobody. Returns how many were reaped."""
    if not sys.platform.startswith("linux"):
        return 0
    mine = set(_SPAWNED)
    if _janitor._proc is not None:
        mine.add(_janitor._proc.pid)
    reaped = 0
    me = os.getpid()
    try:
        names = os.listdir("/proc")
    except OSError:
        return 0
    for name in names:
        if not name.isdigit() or int(name) in mine:
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read().decode(errors="replace")
        except OSError:
            continue
        fields = data[data.rfind(")") + 2 :].split()
        if len(fields) > 1 and fields[0] == "Z" and fields[1] == str(me):
            with contextlib.suppress(ChildProcessError, OSError):
                if os.waitpid(int(name), os.WNOHANG)[0]:
                    reaped += 1
    return reaped


#: pids of commands started by :func:`run` that have not been reaped yet
_SPAWNED: set[int] = set()


def set_janitor_grace(seconds: float) -> None:
    """Grace the janitor gives commands after the agent died (before its first command)."""
    _janitor.grace = seconds


def _track(pgid: int) -> None:
    _janitor.send(f"+{pgid}")
    groups = _TASK_GROUPS.get()
    if groups is not None:
        groups.add(pgid)


def _untrack(pgid: int) -> None:
    groups = _TASK_GROUPS.get()
    exited = _TASK_EXITED.get()
    if exited is not None:  # stays known to the watchdog until the task ends
        exited.add(pgid)
        return
    if groups is not None:
        groups.discard(pgid)
    _janitor.send(f"-{pgid}")


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


def tail(text: str, limit: int = TAIL_BYTES) -> str:
    """The end of ``text``, at most ``limit`` bytes of UTF-8, as storable text. Mask
    secrets first: a cut can leave half a secret that no longer matches."""
    text = storable(text, limit=max(limit, 1) * 4, keep="tail")
    return masked_tail(text, None, limit, head_cut=False)


class _Tail:
    """The end of a command's output as it is read: :data:`TAIL_BYTES` plus a margin, so
    that the secrets of the task can be masked before the final cut."""

    def __init__(self, masker: Masker | None) -> None:
        self.masker = masker
        longest = masker.longest if masker is not None else 0
        self.keep = TAIL_BYTES + max(TAIL_MARGIN_BYTES, 4 * longest)
        self.data = bytearray()
        self.cut = False

    def feed(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > self.keep:
            del self.data[: len(self.data) - self.keep]
            self.cut = True

    def text(self, note: str = "") -> str:
        data = bytes(self.data)
        if self.cut:  # no half character at the start
            data = data.lstrip(bytes(range(0x80, 0xC0)))
        text = storable(data, limit=len(data) * 4 + 16) + note
        return masked_tail(text, self.masker, TAIL_BYTES, head_cut=self.cut)


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
    _track(proc.pid)
    _SPAWNED.add(proc.pid)
    try:
        return await _communicate(proc, argv, timeout, capture_stdout)
    finally:
        if proc.returncode is not None:
            _SPAWNED.discard(proc.pid)
        _untrack(proc.pid)


async def _communicate(
    proc: asyncio.subprocess.Process,
    argv: tuple[str, ...],
    timeout: float | None,
    capture_stdout: bool,
) -> CommandResult:
    assert proc.stdout is not None
    masker = output_masker.get()
    # Filled while the command runs, so what it printed survives a timeout.
    stdout, output = bytearray(), _Tail(masker)
    # stdout that is parsed (JSON, a status) is not progress: only the rest streams
    sink = output_sink.get()
    lines = _LineSplitter(sink, masker) if sink is not None else None
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
    lines: _LineSplitter | None = None,
) -> None:
    try:
        while chunk := await stream.read(64 * 1024):
            keep(chunk)
            if lines is not None:
                lines.feed(chunk)
    finally:
        if lines is not None:
            lines.close()


class _LineSplitter:
    """Cuts a command's output into lines for an :data:`output_sink`: a newline or a
    carriage return ends a line (progress bars redraw with the latter), blank lines are
    dropped, a line longer than :data:`SINK_LINE_BYTES` is passed on in pieces — never
    cut inside one of the task's secrets (``masker``): the last ``masker.longest``
    characters wait for the next chunk. Lines are storable text. A sink that raises is
    dropped: streaming is a view, never a reason for a command to fail."""

    def __init__(self, sink: Callable[[str], None], masker: Masker | None = None) -> None:
        self.sink: Callable[[str], None] | None = sink
        self.masker = masker
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        self.partial = ""

    def feed(self, chunk: bytes) -> None:
        self.partial += self.decoder.decode(chunk).replace("\r", "\n")
        *complete, self.partial = self.partial.split("\n")
        for line in complete:
            self._emit(line)
        hold = self.masker.longest if self.masker is not None else 0
        if len(self.partial) <= SINK_LINE_BYTES + hold:
            return
        spans = merged_spans(self.masker, self.partial) if self.masker is not None else []
        begin = 0
        while len(self.partial) - begin > SINK_LINE_BYTES + hold:
            at = begin + SINK_LINE_BYTES
            # at a space if there is one: a NAME=value the sink masks by its shape stays whole
            space = self.partial.rfind(" ", begin + SINK_LINE_BYTES // 2, at)
            end = safe_cut(spans, space + 1 if space != -1 else at, floor=begin)
            self._emit(self.partial[begin:end])
            begin = end
        self.partial = self.partial[begin:]

    def close(self) -> None:
        self.partial += self.decoder.decode(b"", final=True)
        if self.partial:
            self._emit(self.partial)
            self.partial = ""

    def _emit(self, line: str) -> None:
        text = storable(line.rstrip())
        if not text.strip() or self.sink is None:
            return
        try:
            self.sink(text)
        except Exception:
            self.sink = None


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
