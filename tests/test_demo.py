"""`wrktalk-agent demo` end to end, as a user runs it: a subprocess on a fresh directory.

The script deployer is chosen explicitly so that these tests are the same with or without
a Docker engine; the compose path (what `--deployer auto` picks where Docker and busybox
are available) has its own e2e test.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.timeout(120)

ACTIVE, INACTIVE = "ada@demo.example", "bob@demo.example"


@pytest.fixture
def directory(tmp_path: Path) -> Iterator[Path]:
    """A demo directory; afterwards also the database it kept in the temp dir (as root)."""
    path = tmp_path / "demo"
    yield path
    if (path / "pg").is_symlink():
        shutil.rmtree((path / "pg").resolve(), ignore_errors=True)


def demo_command(directory: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "wrktalk_agent.cli", "demo", "--dir", str(directory), *args]


def demo_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRKTALK_AGENT_")}
    return {**env, "PYTHONUNBUFFERED": "1"}


def run_demo(directory: Path, deployer: str = "script") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        demo_command(directory, "--deployer", deployer),
        capture_output=True,
        text=True,
        timeout=90,
        env=demo_env(),
    )


def gone(pid: int) -> bool:
    """Exited (a zombie waiting for an init that does not reap counts as exited)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def first_pid(path: Path) -> int:
    return int(path.read_text().split()[0])


def recipients(mail_dir: Path) -> list[str]:
    found = []
    for path in sorted(mail_dir.glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        found.append(str(message["To"]))
    return found


def section(output: str, title: str) -> str:
    """The part of the output about one task (from its `== n/3  title` header)."""
    start = output.index(f"  {title} ==")
    end = output.find("\n== ", start)
    return output[start : end if end != -1 else None]


def test_demo_runs_three_tasks_and_a_second_run_starts_fresh(directory: Path) -> None:
    first = run_demo(directory)
    assert first.returncode == 0, first.stdout + first.stderr
    out = first.stdout
    for title, outcome in (
        ("deploy 1.0.0", "deploy 1.0.0 completed"),
        ("deploy 1.1.0", "deploy 1.1.0 completed"),
        ("rollback", "rollback completed"),
    ):
        part = section(out, title)
        assert f"outcome:  {outcome}" in part
        # maintenance was switched on and off around each task, and shown
        assert "maintenance ON:" in part and "maintenance OFF:" in part
        assert re.search(r"maintenance-on\s+succeeded", part)
    assert "serves 'WrkTalk demo site, release 1.1.0'" in section(out, "deploy 1.1.0")
    rollback = section(out, "rollback")
    assert "releases: current 1.0.0, previous 1.1.0" in rollback
    assert "serves 'WrkTalk demo site, release 1.0.0'" in rollback
    assert "release 1.0.0" in (directory / "www" / "index.html").read_text()
    assert "wrktalk-agent tui" in out and "WRKTALK_AGENT_DATABASE_URL=" in out

    # one mail per task, to the active admin only
    mails = recipients(directory / "mail")
    assert len(mails) == 3 and all(ACTIVE in to for to in mails), mails
    assert not any(INACTIVE in to for to in mails)

    # nothing left running: the site's server and PostgreSQL are stopped
    site_pid = first_pid(directory / "site.pid")
    assert gone(site_pid)
    assert not (directory / "pg" / "postmaster.pid").exists()
    assert not (directory / "maintenance.flag").exists()

    second = run_demo(directory)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "deploy to 1.0.0 (first release)" in second.stdout  # an empty database again
    assert len(recipients(directory / "mail")) == 3


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c", "terminal closed"])
def test_ctrl_c_mid_run_stops_everything(directory: Path, sig: signal.Signals) -> None:
    # Its own process group, signalled as a whole: what Ctrl-C in a terminal does (and
    # what closing the terminal does, with SIGHUP).
    process = subprocess.Popen(
        demo_command(directory, "--deployer", "script"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=demo_env(),
        start_new_session=True,
    )
    assert process.stdout is not None
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith("== 2/3"):  # the first task is done, the second starts
                break
        pg_pid = first_pid(directory / "pg" / "postmaster.pid")
        pg_data = (directory / "pg").resolve()
        os.killpg(process.pid, sig)
        lines.extend(process.stdout)
        assert process.wait(timeout=60) == 130, "".join(lines)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    output = "".join(lines)
    assert "demo interrupted; everything it started is stopped" in output
    assert "Traceback" not in output
    # every site server the deploy scripts started (the second one may have run too)
    site_pids = [
        int(pid) for pid in re.findall(r"started the site server .* \(pid (\d+)\)", output)
    ]
    assert site_pids, output
    if (directory / "site.pid").exists():  # written by a deploy interrupted before its report
        site_pids.append(first_pid(directory / "site.pid"))
    for pid in site_pids:
        assert gone(pid), f"the site server (pid {pid}) is still running"
    assert gone(pg_pid), f"PostgreSQL (pid {pg_pid}) is still running"
    assert not (directory / "maintenance.flag").exists()
    assert not pg_data.exists(), "the embedded PostgreSQL's files were left behind"


def test_refuses_to_wipe_a_directory_it_did_not_create(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    result = subprocess.run(
        demo_command(tmp_path), capture_output=True, text=True, timeout=60, env=demo_env()
    )
    assert result.returncode == 1
    assert "not a demo directory" in result.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


@pytest.mark.e2e
def test_demo_with_the_compose_deployer(directory: Path) -> None:
    from wrktalk_demo.site import compose_unavailable

    if (why := compose_unavailable()) is not None:
        if "1" in (os.environ.get("WRKTALK_E2E"), os.environ.get("WRKTALK_TEST_REQUIRE_DOCKER")):
            pytest.fail(f"Docker is required here: {why}")
        pytest.skip(why)
    result = run_demo(directory, deployer="compose")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "compose: 1 container(s) ready" in out, out
    assert "serves 'WrkTalk demo site, release 1.0.0'" in section(out, "rollback"), out
    assert len(recipients(directory / "mail")) == 3
    project = re.search(r"project (wrktalk-demo-\w+)", out)
    assert project is not None
    label = f"label=com.docker.compose.project={project.group(1)}"
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", label], capture_output=True, text=True, check=True
    )
    assert left.stdout.strip() == "", "the demo's containers were not removed"


def test_closing_the_terminal_of_a_keep_running_demo_stops_everything(directory: Path) -> None:
    """`demo --keep-running` in a real terminal (a pty it controls), closed: the kernel
    sends SIGHUP, writing to the terminal fails with EIO from then on, and the demo still
    stops the agent, the site server, the mail sink and PostgreSQL, and removes its data."""
    import pty
    import select
    import time

    pid, terminal = pty.fork()
    if pid == 0:  # the child: a session leader whose controlling terminal is the pty
        os.execvpe(sys.executable, demo_command(directory, "--deployer", "script",
                                                "--keep-running"), demo_env())  # fmt: skip
    seen = b""
    try:
        deadline = time.monotonic() + 90
        while b"Ctrl-C stops everything" not in seen:
            assert time.monotonic() < deadline, seen.decode(errors="replace")
            ready, _, _ = select.select([terminal], [], [], 1.0)
            if ready:
                try:
                    seen += os.read(terminal, 65536)
                except OSError:
                    break
        assert b"Ctrl-C stops everything" in seen, seen.decode(errors="replace")
        pg_pid = first_pid(directory / "pg" / "postmaster.pid")
        pg_data = (directory / "pg").resolve()
        site_pid = first_pid(directory / "site.pid")
        os.close(terminal)  # the terminal window closes
        terminal = -1
        deadline = time.monotonic() + 60
        status = None
        while status is None and time.monotonic() < deadline:
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                status = raw
            else:
                time.sleep(0.1)
        assert status is not None, "the demo did not stop when its terminal closed"
        assert os.waitstatus_to_exitcode(status) in (0, 130)
    finally:
        if terminal != -1:
            os.close(terminal)
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert gone(site_pid), f"the site server (pid {site_pid}) is still running"
    assert gone(pg_pid), f"PostgreSQL (pid {pg_pid}) is still running"
    assert not pg_data.exists(), "the embedded PostgreSQL's files were left behind"
    assert not (directory / "maintenance.flag").exists()
