"""Kills the agent's command process groups when the agent dies, however it dies.

Started once per agent process by :mod:`wrktalk_agent.process` (``python -I -S`` on this
file, in its own session). The agent writes ``+PGID`` when it starts a command and
``-PGID`` when that command has been reaped. When the agent goes away — exit, crash,
SIGKILL, OOM — the kernel closes its end of the pipe, this process reads end-of-file and
stops every group still registered: SIGTERM, a grace period, then SIGKILL. So a deploy's
children never outlive the agent that owned the task (see "Failure model" in the design).

Standard library only and no imports from the package: it must start fast and must not
depend on the agent's environment.
"""

import os
import signal
import sys
import time


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal(pgids: set[int], sig: int) -> None:
    for pgid in pgids:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def main() -> None:
    grace = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    # Ctrl-C in the agent's terminal or a signal to the agent's group is not for us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    groups: set[int] = set()
    for line in sys.stdin:
        line = line.strip()
        if len(line) < 2 or not line[1:].isdigit():
            continue
        pgid = int(line[1:])
        if line[0] == "+":
            groups.add(pgid)
        elif line[0] == "-":
            groups.discard(pgid)
    # The agent is gone: nothing it started may keep running.
    live = {g for g in groups if _alive(g)}
    if not live:
        return
    _signal(live, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while live and time.monotonic() < deadline:
        time.sleep(0.05)
        live = {g for g in live if _alive(g)}
    _signal(live, signal.SIGKILL)


if __name__ == "__main__":
    main()
