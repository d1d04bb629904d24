"""The watchdog on its own: a small stand-in agent process talks to the real
``_janitor.py`` over its pipe, the way :mod:`wrktalk_agent.process` does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import wrktalk_agent

JANITOR = Path(wrktalk_agent.__file__).with_name("_janitor.py")

#: The stand-in agent: starts the watchdog, opens a lease of ``LEASE`` seconds, then starts
#: one child in its own process group (the way every command starts, registered with
#: ``+PGID``) and one child that stays in the agent's group (a plugin's bare subprocess),
#: prints their pids and waits.
AGENT = textwrap.dedent(
    """
    import os, subprocess, sys, time
    janitor = subprocess.Popen(
        [sys.executable, "-I", "-S", sys.argv[1], "0.2", str(os.getpid())],
        stdin=subprocess.PIPE, start_new_session=True,
    )
    def send(line):
        os.write(janitor.stdin.fileno(), (line + "\\n").encode())
    lease = float(sys.argv[2])
    send(f"L{time.monotonic() + lease:.6f} {time.clock_gettime(time.CLOCK_BOOTTIME):.3f}")
    time.sleep(0.05)  # started after the lease began, by clock ticks
    own = subprocess.Popen(["sleep", "60"], start_new_session=True)
    send(f"+{own.pid}")
    shared = subprocess.Popen(["sleep", "60"])
    print(own.pid, shared.pid, janitor.pid, flush=True)
    time.sleep(60)
    """
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in (b"Z", b"X")


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


def test_at_the_lease_deadline_the_task_stops_but_the_agents_own_group_is_spared(
    tmp_path: Path,
) -> None:
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    # the agent leads its own group, as a shell with job control starts it; a sibling in
    # that group (think `wrktalk-agent run | tee log`) must survive the watchdog
    sibling = subprocess.Popen(["sleep", "60"], process_group=0)
    agent = subprocess.Popen(
        [sys.executable, str(script), str(JANITOR), "0.6"],
        stdout=subprocess.PIPE,
        text=True,
        process_group=sibling.pid,
    )
    janitor = 0
    try:
        assert agent.stdout is not None
        own, shared, janitor = (int(word) for word in agent.stdout.readline().split())
        assert os.getpgid(shared) == sibling.pid
        assert _wait_gone(own, 5.0), "the task's own process group outlived the lease"
        assert _wait_gone(shared, 5.0), "a task child in the agent's group outlived the lease"
        time.sleep(0.5)  # had the watchdog signalled the whole group, it would be done by now
        assert agent.poll() is None, "the watchdog killed the agent's own process group"
        assert sibling.poll() is None, "the watchdog killed a sibling in the agent's group"
    finally:
        for process in (agent, sibling):
            process.kill()
            process.wait()
        if janitor:
            _wait_gone(janitor, 5.0)  # it leaves when the agent's end of the pipe closes


def test_when_the_agent_dies_its_task_children_stop_with_it(tmp_path: Path) -> None:
    script = tmp_path / "agent.py"
    script.write_text(AGENT)
    agent = subprocess.Popen(
        [sys.executable, str(script), str(JANITOR), "600"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert agent.stdout is not None
    own, shared, janitor = (int(word) for word in agent.stdout.readline().split())
    time.sleep(0.5)  # the watchdog notes the agent's children every 0.2 s
    os.kill(agent.pid, signal.SIGKILL)
    agent.wait()
    assert _wait_gone(own, 5.0), "the task's process group outlived the agent"
    assert _wait_gone(shared, 5.0), "a child in the agent's group outlived the agent"
    assert _wait_gone(janitor, 5.0), "the watchdog stayed after its agent died"


#: A subreaper (as the agent's own parent may be: a test runner hosting an agent, or a
#: container's init) with a process of its own, and an agent under it that starts its
#: watchdog and dies at once — before the watchdog has even started.
REAPER = textwrap.dedent(
    """
    import ctypes, subprocess, sys, time
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    bystander = subprocess.Popen(["sleep", "60"])
    agent = subprocess.Popen(
        [sys.executable, "-c", sys.argv[1], sys.argv[2]], stdout=subprocess.PIPE, text=True
    )
    janitor = agent.stdout.readline().strip()
    agent.wait()
    print(bystander.pid, janitor, flush=True)
    time.sleep(60)
    """
)
SHORT_LIVED_AGENT = textwrap.dedent(
    """
    import os, subprocess, sys
    janitor = subprocess.Popen(
        [sys.executable, "-I", "-S", sys.argv[1], "0.2", str(os.getpid())],
        stdin=subprocess.PIPE, start_new_session=True,
    )
    print(janitor.pid, flush=True)
    os._exit(0)
    """
)


def test_a_watchdog_whose_agent_died_first_leaves_everything_else_alone(tmp_path: Path) -> None:
    """Re-parented to a subreaper (or init) before it read who its agent was, the watchdog
    must not take its new parent's processes for the agent's: it once stopped every
    process under the machine's init."""
    script = tmp_path / "reaper.py"
    script.write_text(REAPER)
    reaper = subprocess.Popen(
        [sys.executable, str(script), SHORT_LIVED_AGENT, str(JANITOR)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert reaper.stdout is not None
        bystander, janitor = (int(word) for word in reaper.stdout.readline().split())
        assert _wait_gone(janitor, 5.0), "the watchdog stayed after its agent died"
        time.sleep(0.5)
        assert _alive(bystander), "the watchdog stopped a process that was not its agent's"
        assert reaper.poll() is None, "the watchdog stopped its new parent"
    finally:
        os.killpg(reaper.pid, signal.SIGKILL)
        reaper.wait()
