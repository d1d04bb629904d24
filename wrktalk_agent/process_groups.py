"""No orphans: the process groups of a task's commands, and the agent's side of the
watchdog process (``wrktalk_agent/_janitor.py``). The layers are described in
:mod:`wrktalk_agent.process`, which re-exports what the core calls from here."""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

#: After SIGTERM, how long a command gets to clean up before SIGKILL.
STOP_GRACE_SECONDS = 5.0

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
                [sys.executable, "-I", "-S", str(script), f"{self.grace:g}", str(os.getpid())],
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


#: pids of commands started by :func:`~wrktalk_agent.process.run`, not reaped yet
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


def command_started(pid: int) -> None:
    """A command started by :func:`~wrktalk_agent.process.run` (in its own group)."""
    _track(pid)
    _SPAWNED.add(pid)


def command_ended(pid: int, *, reaped: bool) -> None:
    """The command's run is over; ``reaped``: its exit status was collected."""
    if reaped:
        _SPAWNED.discard(pid)
    _untrack(pid)
