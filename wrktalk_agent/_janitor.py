"""The watchdog outside the agent: it enforces the lease and outlives the agent's death.

Started once per agent process by :mod:`wrktalk_agent.process` (``python -I -S`` on this
file with the stop grace and the agent's pid, in a session of its own, so that neither
Ctrl-Z nor a signal to the agent's process group stops it). It reads lines from a pipe
only the agent holds:

``+PGID`` / ``-PGID``
    a command's process group started / was reaped;
``L<monotonic seconds>[ <boot seconds>]``
    the task's lease is renewed until then (``CLOCK_MONOTONIC`` is one clock for every
    process of the machine); the first line of a lease also says when it began
    (``CLOCK_BOOTTIME``, the clock of process start times), so that what ran before it
    is never taken for the task's; ``L-`` means no lease is held any more;
``F``
    the task ended: forget the orphans it left (what a *finished* deploy leaves running
    is the release's business).

It stops everything the task started — SIGTERM, a grace period, then SIGKILL — when

* the lease deadline passes without a renewal, whatever the agent is doing (frozen by
  SIGSTOP or Ctrl-Z, blocked on a socket that drops packets, stuck in a C extension);
* the agent goes away (exit, crash, SIGKILL, OOM): the kernel closes its end of the pipe.

"Everything" is the registered groups and every descendant that escaped them: the agent
is a child subreaper (``PR_SET_CHILD_SUBREAPER``), so a double-forked ``setsid`` daemon is
re-parented to it rather than to init. While a lease is held this process notes the
agent's descendants every :data:`SCAN_SECONDS` (the process tree under the agent, read
from ``/proc``), so that it can still find them after the agent itself has died and they
moved on to init.

Standard library only and no imports from the package: it must start fast and must not
depend on the agent's environment.
"""

import os
import select
import signal
import sys
import time

#: How often the agent's children are noted while a lease is held.
SCAN_SECONDS = 0.2
#: Process start times in /proc are in clock ticks since boot.
TICKS = os.sysconf("SC_CLK_TCK")


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _live_groups(groups: set[int]) -> set[int]:
    """The groups in ``groups`` with a member that is not a zombie (an orphan's zombie
    waits for init, which may be slow to reap it)."""
    maybe = {g for g in groups if _alive(g)}
    if not maybe:
        return maybe
    live: set[int] = set()
    try:
        names = os.listdir("/proc")
    except OSError:
        return maybe
    for name in names:
        if name.isdigit():
            stat = _stat(int(name))
            if stat is not None and stat[2] in maybe and stat[0] not in ("Z", "X"):
                live.add(stat[2])
    return live


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, parent pid, process group, start time) of ``pid``, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = data[data.rfind(")") + 2 :].split()
    try:
        return fields[0], int(fields[1]), int(fields[2]), int(fields[19])
    except (IndexError, ValueError):
        return None


def _descendants(root: int) -> dict[int, tuple[int, int]]:
    """Live (not zombie) descendants of ``root``, this process excepted:
    pid → (process group, start time)."""
    table: dict[int, tuple[int, int, int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return {}
    for name in names:
        if name.isdigit():
            stat = _stat(int(name))
            if stat is not None and stat[0] not in ("Z", "X"):
                table[int(name)] = (stat[1], stat[2], stat[3])
    children: dict[int, list[int]] = {}
    for pid, (ppid, _pgid, _start) in table.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[int, tuple[int, int]] = {}
    todo = list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        if pid == os.getpid() or pid in found:
            continue
        found[pid] = (table[pid][1], table[pid][2])
        todo.extend(children.get(pid, ()))
    return found


class Watch:
    def __init__(self, agent: int, grace: float) -> None:
        self.agent = agent
        self.grace = grace
        self.groups: set[int] = set()
        #: children of the agent that the current task did not start (before its lease)
        self.baseline: set[tuple[int, int]] = set()
        #: (pid, start time) of the agent's children seen while the lease was held
        self.seen: dict[int, int] = {}
        self.deadline: float | None = None
        self.next_scan = 0.0
        #: groups never signalled as a whole: ours, and the agent's own (its shell
        #: pipeline, e.g. ``wrktalk-agent run | tee``, or a test runner hosting it); a
        #: descendant in one of them is stopped on its own
        self.spared = {0, 1, os.getpgid(0)}
        try:
            self.spared.add(os.getpgid(agent))
        except OSError:
            pass

    def line(self, line: str) -> None:
        if line == "F":
            self.seen.clear()
            self.deadline = None
            return
        if line.startswith("L"):
            value, _, began = line[1:].partition(" ")
            if value == "-":
                self.deadline = None
                return
            try:
                deadline = float(value)
                start = float(began) if began else None
            except ValueError:
                return
            if start is not None and self.agent_alive():  # a new lease: what ran
                # before it is not the task's
                self.baseline = {
                    (pid, ticks)
                    for pid, (_g, ticks) in _descendants(self.agent).items()
                    if ticks / TICKS < start
                }
                self.seen.clear()
            self.deadline = deadline
            return
        if len(line) < 2 or not line[1:].isdigit():
            return
        pgid = int(line[1:])
        if line[0] == "+":
            self.groups.add(pgid)
        elif line[0] == "-":
            self.groups.discard(pgid)

    def agent_alive(self) -> bool:
        """The agent is alive while it is our parent: at its death we are re-parented (to
        init or a subreaper), and its pid may then name any other process."""
        return os.getppid() == self.agent

    def scan(self) -> None:
        if not self.agent_alive():
            return
        for pid, (_pgid, start) in _descendants(self.agent).items():
            if (pid, start) not in self.baseline:
                self.seen[pid] = start

    def targets(self) -> tuple[set[int], set[int]]:
        """Process groups and single processes to stop."""
        groups = _live_groups(self.groups)
        pids: set[int] = set()
        for pid, start in self.seen.items():
            stat = _stat(pid)
            if stat is not None and stat[3] == start and stat[0] not in ("Z", "X"):
                pids.add(pid)
                if stat[2] not in self.spared:
                    groups.add(stat[2])
        if self.agent_alive():  # descendants that appeared since the last scan
            for pid, (pgid, start) in _descendants(self.agent).items():
                if (pid, start) not in self.baseline:
                    pids.add(pid)
                    if pgid not in self.spared:
                        groups.add(pgid)
        return groups, pids

    def stop_all(self) -> None:
        """SIGTERM, grace, SIGKILL — repeated while killing uncovers more descendants
        (a killed parent's children are re-parented to the agent, the subreaper)."""
        for round_ in range(20):
            groups, pids = self.targets()
            if not groups and not pids:
                return
            if round_ == 0:
                _signal(groups, pids, signal.SIGTERM)
                deadline = time.monotonic() + self.grace
                while time.monotonic() < deadline and (_live_groups(groups) or _running(pids)):
                    time.sleep(0.05)
                groups, pids = self.targets()
            _signal(groups, pids, signal.SIGKILL)
            time.sleep(0.05)
            self.scan()


def _running(pids: set[int]) -> bool:
    return any((stat := _stat(pid)) is not None and stat[0] not in ("Z", "X") for pid in pids)


def _signal(groups: set[int], pids: set[int], sig: int) -> None:
    for pgid in groups:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def main() -> None:
    grace = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    # The agent names itself: had it died before we got here, our parent would be init or
    # a subreaper, and everything under that would be taken for the agent's.
    agent = int(sys.argv[2]) if len(sys.argv) > 2 else os.getppid()
    # Ctrl-C or Ctrl-Z in the agent's terminal, or a signal to the agent's group, is not
    # for us (we are in a session of our own; this is for a direct signal all the same).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(sig, signal.SIG_IGN)
    watch = Watch(agent, grace)
    fd = sys.stdin.fileno()
    buffer = b""
    while True:
        now = time.monotonic()
        timeout = None
        if watch.deadline is not None:
            if now >= watch.deadline:
                # the lease ran out and the agent did not renew it: stop its task now
                watch.stop_all()
                watch.deadline = None
                continue
            if now >= watch.next_scan:
                watch.scan()
                watch.next_scan = now + SCAN_SECONDS
            timeout = max(0.0, min(watch.deadline, watch.next_scan) - now)
        try:
            ready, _, _ = select.select([fd], [], [], timeout)
        except InterruptedError:
            continue
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except InterruptedError:
            continue
        if not chunk:
            break
        buffer += chunk
        *lines, rest = buffer.split(b"\n")
        buffer = rest
        for raw in lines:
            watch.line(raw.decode(errors="replace").strip())
    # The agent is gone: nothing its task started may keep running.
    watch.stop_all()


if __name__ == "__main__":
    main()
