"""A deploy that runs as child processes, for crash tests: ``child_deploy.py ARGS_JSON``.

The child records ``start``, starts a grandchild (same process group) that samples the
maintenance flag every 20 ms until the deploy's time is up, waits for it, writes the live
file (what the target now runs) and records ``end``. Records are JSON lines appended with
O_APPEND, so several agents' deploys can share one log. If the deploy's process group is
killed, sampling stops: a sample after a kill, or two deploys' samples interleaved, is
what the tests look for.
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


def main() -> None:
    args = json.loads(sys.argv[1])
    log, task, version = args["log"], args["task"], args["version"]
    record(log, phase="child-start", task=task, version=version, pgid=os.getpgid(0))
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
