"""A deploy that runs as child processes, for crash tests: ``child_deploy.py ARGS_JSON``.

The child records ``start``, starts a grandchild (same process group) that samples the
maintenance flag every 20 ms until the deploy's time is up, waits for it, writes the live
file (what the target now runs) and records ``end``. Records are JSON lines appended with
O_APPEND, so several agents' deploys can share one log. If the deploy's process group is
killed, sampling stops: a sample after a kill, or two deploys' samples interleaved, is
what the tests look for.

Optional escapes, to prove they cannot outlive a fenced or killed deploy: ``daemon``
(seconds) double-forks a ``setsid`` process that records ``daemon-sample`` lines, the way
a release's script would start a daemon; ``background`` (seconds) leaves a sampler in the
deploy's process group that keeps running after the deploy's own process has exited.
"""

import json
import os
import subprocess
import sys
import time

SAMPLER = """
import json, os, sys, time
log, flag, task, until = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
while time.time() < until:
    line = json.dumps({"phase": "sample", "task": task, "pid": os.getpid(),
                       "at": time.time(), "maintenance": os.path.exists(flag)}) + "\\n"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, line.encode())
    os.close(fd)
    time.sleep(0.02)
"""


def record(log: str, **fields: object) -> None:
    line = json.dumps({**fields, "pid": os.getpid(), "at": time.time()}) + "\n"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def escape(log: str, task: str, phase: str, seconds: float, *, detach: bool) -> None:
    """Fork a process that records ``phase`` every 20 ms for ``seconds``; with ``detach``
    it double-forks into a session of its own (a daemon), else it stays in our group."""
    if os.fork() != 0:
        if detach:
            os.wait()  # the intermediate process exits at once
        return
    if detach:
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
    until = time.time() + seconds
    while time.time() < until:
        record(log, phase=phase, task=task, pgid=os.getpgid(0))
        time.sleep(0.02)
    os._exit(0)


def main() -> None:
    args = json.loads(sys.argv[1])
    log, task, version = args["log"], args["task"], args["version"]
    record(log, phase="child-start", task=task, version=version, pgid=os.getpgid(0))
    if args.get("daemon"):
        escape(log, task, "daemon-sample", float(args["daemon"]), detach=True)
    if args.get("background"):
        escape(log, task, "background-sample", float(args["background"]), detach=False)
    until = time.time() + float(args["seconds"])
    sampler = subprocess.Popen([sys.executable, "-c", SAMPLER, log, args["flag"], task, str(until)])
    sampler.wait()
    live = args["live"]
    with open(live + ".tmp", "w") as f:
        json.dump({"version": version, "task": task}, f)
    os.replace(live + ".tmp", live)
    record(log, phase="child-end", task=task, version=version)


if __name__ == "__main__":
    main()
