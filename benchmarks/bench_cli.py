"""CLI start-up: `wrktalk-agent --help` beside `python -c "import click, pydantic"`.

    python benchmarks/bench_cli.py [--repeat 20]

Runs each command ``--repeat`` times in fresh processes (after one warm-up run) and
prints min and median wall time side by side, and the ratio of the medians. Goal
(issue 16): `--help` takes at most twice the time of importing click and pydantic.
Also lists which heavy modules a command line loads just to start (`--help`, and the
import of what `run` needs before it connects).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

HEAVY = ("asyncpg", "cryptography", "rich", "structlog", "aiohttp", "prometheus_client", "yaml")

COMMANDS: dict[str, list[str]] = {
    "python -c 'import click, pydantic'": [sys.executable, "-c", "import click, pydantic"],
    "wrktalk-agent --help": [sys.executable, "-m", "wrktalk_agent.cli", "--help"],
    "wrktalk-agent task --help": [sys.executable, "-m", "wrktalk_agent.cli", "task", "--help"],
}


def timed(argv: list[str], repeat: int) -> list[float]:
    subprocess.run(argv, check=True, capture_output=True)  # warm the file cache
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def loaded_heavy(code: str) -> list[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    return out.stdout.split()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    print(f"{'command':34} {'min ms':>8} {'median ms':>10}")
    medians = {}
    for label, argv in COMMANDS.items():
        times = timed(argv, args.repeat)
        medians[label] = statistics.median(times)
        print(f"{label:34} {min(times) * 1000:8.1f} {medians[label] * 1000:10.1f}")
    baseline = medians["python -c 'import click, pydantic'"]
    ratio = medians["wrktalk-agent --help"] / baseline
    verdict = "ok" if ratio <= 2 else "MISSED"
    print(f"\n--help / import click, pydantic: {ratio:.2f}x (goal <= 2x): {verdict}")

    print("\nheavy modules loaded:")
    probes = {
        "import wrktalk_agent.cli (--help)": "import wrktalk_agent.cli",
        "what `run` imports before it connects": (
            "import wrktalk_agent.cli, wrktalk_agent.runtime, wrktalk_agent.bootstrap"
        ),
    }
    for label, code in probes.items():
        print(f"  {label:40} {', '.join(loaded_heavy(code)) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
