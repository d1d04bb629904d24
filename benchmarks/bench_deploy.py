"""Deploy overhead: the same release deployed by hand and by the agent, side by side.

    python benchmarks/bench_deploy.py [--runs 3] [--variants v1,v2,script]

For each deployer variant in turn (compose v1, compose v2, the ``script`` deployer) and
a small air-gapped bundle (one busybox httpd service with a 1 s healthcheck, its image
loaded from the bundle's tar), each run deploys a new version on top of the last one:

- by hand: extract the tarball, ``docker load``, ``compose up -d``, wait until the
  container's healthcheck says healthy and the site serves the new version (script: run
  the release's ``deploy`` script, which does the same);
- the agent: ``wrktalk-agent run --once`` on a deploy task, from the process start until
  the site serves the new version; with the task's own step timings and the maintenance
  window (maintenance-on started → maintenance-off succeeded, from the timeline);
- the plugin in-process: ``validate`` and ``prepare`` (the optional methods the core calls
  before maintenance) then ``deploy`` alone, i.e. the window once the core calls them.

Compose v2 is ``docker compose``, found through ``DOCKER_CONFIG``
(WRKTALK_BENCH_DOCKER_CONFIG, else DOCKER_CONFIG, else where
``scripts/install-compose-v2.sh`` puts it, else the docker CLI's own); a variant whose
binary is missing is skipped with one line saying so. The agent runs with
``WRKTALK_AGENT_COMPOSE_COMMAND=auto``, as an operator gets it. Goals: (issue 19) the
agent's deploy step ≤ 1.1x the by-hand time; (issue 27) the whole ``run --once``, process
start → site answers, ≤ 1.5x, the maintenance window ≤ 1.2x. Each table names the
machine's load (figures on a shared machine are noisy; runs alternate by hand and agent).

This file is also the agent's plugin for the maintenance flag it uses here
(``WRKTALK_AGENT_EXTRA_PLUGINS=bench_deploy``): a file written and removed, so that the
window measures the agent, not a proxy reload. The top of the module stays import-light.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from wrktalk_agent.hookspecs import hookimpl

FLAG_VARIABLE = "WRKTALK_BENCH_MAINTENANCE_FLAG"


class FlagMaintenance:
    """Maintenance as a flag file (the path in ``WRKTALK_BENCH_MAINTENANCE_FLAG``)."""

    name: ClassVar[str] = "bench-flag"

    def __init__(self, settings: Any, context: Any) -> None:
        self.path = Path(os.environ.get(FLAG_VARIABLE, "/tmp/wrktalk-bench-maintenance"))

    async def check(self) -> list[Any]:
        return []

    async def enable(self, reason: str) -> None:
        self.path.write_text(reason)

    async def disable(self) -> None:
        self.path.unlink(missing_ok=True)

    async def status(self) -> bool:
        return self.path.exists()


@hookimpl
def wrktalk_register_maintenance_handlers(register: Any) -> None:
    register(FlagMaintenance)


# -- the benchmark itself (imports only when run) ----------------------------------------


def _main() -> None:
    import argparse
    import asyncio

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--variants", default="v1,v2,script")
    parser.add_argument(
        "--no-prepare", action="store_true", help="skip the in-process validate/prepare rows"
    )
    args = parser.parse_args()
    asyncio.run(_bench(args.runs, args.variants.split(","), prepare=not args.no_prepare))


async def _bench(runs: int, variants: list[str], *, prepare: bool) -> None:
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    from _support import drop_database, fresh_database, server_url

    from wrktalk_agent.log import configure_logging

    configure_logging("error", "console")
    app = _AppImage.build()
    try:
        with server_url() as url, tempfile.TemporaryDirectory(prefix="wrktalk-bench-") as tmp:
            for variant in variants:
                problem = _missing(variant)
                if problem:
                    print(f"\n{variant}: skipped: {problem}")
                    continue
                db_url = await fresh_database(url)
                try:
                    bench = _VariantBench(variant, app, Path(tmp) / variant, db_url)
                    await bench.run(runs, prepare=prepare)
                finally:
                    await drop_database(url, db_url)
    finally:
        app.remove()


def _v2_config() -> Path:
    for candidate in (
        os.environ.get("WRKTALK_BENCH_DOCKER_CONFIG"),
        os.environ.get("DOCKER_CONFIG"),
        str(Path.home() / ".cache" / "wrktalk-agent" / "docker-config"),
    ):
        if candidate and (Path(candidate) / "cli-plugins" / "docker-compose").exists():
            return Path(candidate)
    return Path.home() / ".docker"


V2_CONFIG = _v2_config()


def _docker_env(variant: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DOCKER_CONFIG", None)  # v1 and script runs see no v2 plugin: auto finds v1
    if variant == "v2" and (V2_CONFIG / "cli-plugins" / "docker-compose").exists():
        env["DOCKER_CONFIG"] = str(V2_CONFIG)
    return env


def _compose_program(variant: str) -> list[str]:
    return ["docker", "compose"] if variant == "v2" else ["docker-compose"]


def _missing(variant: str) -> str | None:
    import shutil
    import subprocess

    if shutil.which("docker") is None:
        return "the docker CLI is not installed"
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        return "no Docker engine reachable (bash scripts/start-dockerd.sh)"
    program = _compose_program("v1" if variant == "script" else variant)
    if shutil.which(program[0]) is None:
        return f"`{' '.join(program)}` is not installed"
    probe = subprocess.run(
        [*program, "version"], capture_output=True, env=_docker_env(variant), text=True
    )
    if probe.returncode != 0:
        where = f" (DOCKER_CONFIG={V2_CONFIG})" if variant == "v2" else ""
        return f"`{' '.join(program)} version` fails{where}: {probe.stderr.strip()[:200]}"
    return None


class _AppImage:
    """busybox-static rootfs imported as an image, saved as the bundle's images/app.tar."""

    def __init__(self, tag: str, saved: bytes) -> None:
        self.tag = tag
        self.saved = saved

    @classmethod
    def build(cls) -> _AppImage:
        import io
        import shutil
        import subprocess
        import tarfile
        import tempfile
        import uuid

        busybox = shutil.which("busybox") or "/bin/busybox"
        tag = f"wrktalk-bench/app:{uuid.uuid4().hex[:8]}"
        with tempfile.TemporaryDirectory() as tmp:
            rootfs = Path(tmp) / "rootfs"
            for directory in ("bin", "www", "tmp"):
                (rootfs / directory).mkdir(parents=True)
            shutil.copy2(busybox, rootfs / "bin" / "busybox")
            for applet in ("sh", "httpd", "wget", "echo", "sleep"):
                (rootfs / "bin" / applet).symlink_to("busybox")
            layer = io.BytesIO()
            with tarfile.open(fileobj=layer, mode="w") as tar:
                tar.add(rootfs, arcname=".")
            subprocess.run(
                ["docker", "import", "-", tag],
                input=layer.getvalue(),
                check=True,
                capture_output=True,
            )
            saved = Path(tmp) / "app.tar"
            subprocess.run(["docker", "save", "-o", str(saved), tag], check=True)
            return cls(tag, saved.read_bytes())

    def remove(self) -> None:
        import subprocess

        subprocess.run(["docker", "rmi", "-f", self.tag], capture_output=True)


COMPOSE = """\
services:
  web:
    image: {image}
    command: ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
    ports:
      - "127.0.0.1:${{APP_PORT}}:8080"
    volumes:
      - ./www:/www:ro
    stop_grace_period: 1s
    healthcheck:
      test: ["CMD", "/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/"]
      interval: 1s
      timeout: 2s
      retries: 2
"""

#: What a `script` release does: the same steps as by hand, with docker-compose (v1).
DEPLOY_SCRIPT = """\
#!/bin/sh
set -eu
docker load -q -i images/app.tar >/dev/null
docker-compose -p {project} -f docker-compose.yml --env-file .env up -d --remove-orphans
id=$(docker ps -q --filter label=com.docker.compose.project={project} \
     --filter label=com.docker.compose.service=web)
for _ in $(seq 600); do
    health=$(docker inspect -f '{{{{.State.Health.Status}}}}' "$id")
    [ "$health" = healthy ] && exit 0
    sleep 0.1
done
echo "web never became healthy" >&2
exit 1
"""


def _stats(values: list[float]) -> str:
    import statistics

    if not values:
        return "-"
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


class _VariantBench:
    def __init__(self, variant: str, app: _AppImage, root: Path, db_url: str) -> None:
        import uuid

        self.variant = variant
        self.app = app
        self.root = root
        self.db_url = db_url
        self.project = f"wrktalk-bench-{variant}-{uuid.uuid4().hex[:6]}"
        self.label = f"label=com.docker.compose.project={self.project}"
        self.port = _free_port()
        self.env = _docker_env(variant)
        self.sequence = 0
        root.mkdir(parents=True)

    # -- releases ------------------------------------------------------------------------
    def release(self) -> tuple[str, bytes, str]:
        from wrktalk_agent.testing import make_tarball

        self.sequence += 1
        version = f"1.0.{self.sequence}"
        files: dict[str, bytes | str] = {
            "docker-compose.yml": COMPOSE.format(image=self.app.tag),
            "www/index.html": f"{version}\n",
            "images/app.tar": self.app.saved,
        }
        if self.variant == "script":
            files["deploy"] = DEPLOY_SCRIPT.format(project=self.project)
        env_data = f"APP_PORT={self.port}\n"
        return version, make_tarball(files), env_data

    async def serves(self, version: str, deadline: float = 120.0) -> float:
        """Poll the site every 10 ms until it serves ``version``; returns the time then."""
        import asyncio
        import http.client
        import time
        import urllib.request

        def get() -> str:
            try:
                url = f"http://127.0.0.1:{self.port}/"
                with urllib.request.urlopen(url, timeout=1) as response:
                    return str(response.read().decode())
            except (OSError, http.client.HTTPException):  # the old container going away
                return ""

        give_up = time.monotonic() + deadline
        while time.monotonic() < give_up:
            if await asyncio.to_thread(get) == f"{version}\n":
                return time.monotonic()
            await asyncio.sleep(0.01)
        raise RuntimeError(f"{self.variant}: the site never served {version}")

    # -- by hand -------------------------------------------------------------------------
    async def by_hand(self) -> float:
        import asyncio
        import io
        import tarfile
        import time

        version, tarball, env_data = self.release()
        target = self.root / f"hand-{version}"
        started = time.monotonic()
        target.mkdir()
        with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
            tar.extractall(target, filter="data")
        (target / ".env").write_text(env_data)
        if self.variant == "script":
            await _check([str(target / "deploy"), "deploy"], cwd=target, env=self.env)
        else:
            await _check(["docker", "load", "-q", "-i", "images/app.tar"], cwd=target, env=self.env)
            compose = [*_compose_program(self.variant), "-p", self.project]
            compose += ["-f", "docker-compose.yml", "--env-file", ".env"]
            await _check([*compose, "up", "-d", "--remove-orphans"], cwd=target, env=self.env)
            while True:  # a person would watch `docker ps`; we poll inspect every 50 ms
                ids = await _check(
                    [
                        "docker",
                        "ps",
                        "-q",
                        "--filter",
                        f"label=com.docker.compose.project={self.project}",
                    ],
                    env=self.env,
                )
                health = await _check(
                    ["docker", "inspect", "-f", "{{.State.Health.Status}}", *ids.split()],
                    env=self.env,
                )
                if health.split() == ["healthy"]:
                    break
                await asyncio.sleep(0.05)
        done = await self.serves(version)
        return done - started

    # -- the agent -----------------------------------------------------------------------
    async def agent(self) -> dict[str, Any]:
        import asyncio
        import hashlib
        import sys
        import time

        import asyncpg

        version, tarball, env_data = self.release()
        conn = await asyncpg.connect(self.db_url)
        try:
            release_id = await conn.fetchval(
                "INSERT INTO release_artifact (release_version, chart_type, artifact_data,"
                " env_data, sha256) VALUES ($1, 'compose', $2, $3, $4) RETURNING id",
                version,
                tarball,
                env_data,
                hashlib.sha256(tarball).hexdigest(),
            )
            task_id = await conn.fetchval(
                "INSERT INTO agent_task (type, release_artifact_id) VALUES ('deploy', $1)"
                " RETURNING id",
                release_id,
            )
            env = self.agent_env()
            agent_bin = str(Path(sys.executable).with_name("wrktalk-agent"))
            started = time.monotonic()
            process = await asyncio.create_subprocess_exec(
                agent_bin,
                "run",
                "--once",
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            waiting = asyncio.create_task(process.communicate())
            try:
                served = await self.serves(version)
            except RuntimeError:
                output, _ = await waiting
                raise RuntimeError(output.decode(errors="replace")[-3000:]) from None
            output, _ = await waiting
            exited = time.monotonic()
            row = await conn.fetchrow(
                "SELECT status, result, error_message FROM agent_task WHERE id = $1", task_id
            )
            if row["status"] != "completed":
                raise RuntimeError(f"{self.variant}: task {row['status']}: {row['error_message']}")
            events = await conn.fetch(
                "SELECT step, status, created_at FROM agent_task_event WHERE task_id = $1"
                " ORDER BY id",
                task_id,
            )
        finally:
            await conn.close()
        import json

        result = json.loads(row["result"]) if isinstance(row["result"], str) else row["result"]
        steps = {s["step"]: s["seconds"] for s in result.get("steps", [])}
        on = next(e["created_at"] for e in events if e["step"] == "maintenance-on")
        off = next(
            e["created_at"]
            for e in events
            if e["step"] == "maintenance-off" and e["status"] == "succeeded"
        )
        return {
            "to site": served - started,
            "to exit": exited - started,
            "window": (off - on).total_seconds(),
            **steps,
        }

    def agent_env(self) -> dict[str, str]:
        env = dict(self.env)
        env.update(
            {
                "WRKTALK_AGENT_DATABASE_URL": self.db_url,
                "WRKTALK_AGENT_WORK_DIR": str(self.root / "work"),
                "WRKTALK_AGENT_AGENT_ID": f"bench-{self.variant}",
                "WRKTALK_AGENT_DEPLOYER": "script" if self.variant == "script" else "compose",
                "WRKTALK_AGENT_MAINTENANCE_MODE_HANDLER": FlagMaintenance.name,
                "WRKTALK_AGENT_EXTRA_PLUGINS": "bench_deploy",
                "WRKTALK_AGENT_NOTIFIERS": "",
                "WRKTALK_AGENT_LOG_LEVEL": "warning",
                "WRKTALK_AGENT_LISTEN": "false",
                "WRKTALK_AGENT_COMPOSE_PROJECT_NAME": self.project,
                "WRKTALK_AGENT_COMPOSE_WORKING_DIR": str(self.root / "compose"),
                "WRKTALK_AGENT_COMPOSE_COMMAND": "auto",
                "WRKTALK_AGENT_SCRIPT_WORKING_DIR": str(self.root / "script"),
                FLAG_VARIABLE: str(self.root / "maintenance.flag"),
                "PYTHONPATH": os.pathsep.join(
                    p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p
                ),
            }
        )
        return env

    # -- the plugin in-process, with validate/prepare before the window --------------------
    async def prepared(self) -> dict[str, float]:
        import io
        import tarfile
        import time
        import uuid

        from wrktalk_agent.interfaces import DeployRequest, Release

        version, tarball, env_data = self.release()
        workdir = self.root / f"prepared-{version}"
        workdir.mkdir()
        with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
            tar.extractall(workdir, filter="data")
        (workdir / ".env").write_text(env_data)

        async def report(line: str) -> None:
            pass

        request = DeployRequest(
            task_id=uuid.uuid4(),
            purpose="deploy",
            release=Release(uuid.uuid4(), version, "compose", "0" * 64),
            workdir=workdir,
            env_file=workdir / ".env",
            values_file=None,
            current=None,
            report=report,
        )
        deployer = self.deployer()
        figures: dict[str, float] = {}
        saved_env = dict(os.environ)
        os.environ.update(self.env)
        try:
            for method in ("validate", "prepare"):
                call = getattr(deployer, method, None)
                if call is not None:
                    started = time.monotonic()
                    await call(request)
                    figures[method] = time.monotonic() - started
            started = time.monotonic()
            await deployer.deploy(request)
            figures["deploy"] = time.monotonic() - started
        finally:
            os.environ.clear()
            os.environ.update(saved_env)
        figures["deploy+site"] = await self.serves(version) - started
        return figures

    def deployer(self) -> Any:
        from wrktalk_agent.interfaces import PluginContext

        context = PluginContext("bench", "bench", self.root, None)  # type: ignore[arg-type]
        if self.variant == "script":
            from wrktalk_agent.builtins.script import ScriptDeployer, ScriptSettings

            return ScriptDeployer(ScriptSettings(working_dir=self.root / "script-inproc"), context)
        from wrktalk_agent_compose import ComposeDeployer, ComposeSettings

        settings = ComposeSettings(
            project_name=self.project,
            working_dir=self.root / "compose-inproc",
            command=self.variant,  # type: ignore[arg-type]
        )
        return ComposeDeployer(settings, context)

    # -- one variant -----------------------------------------------------------------------
    async def run(self, runs: int, *, prepare: bool) -> None:
        import subprocess

        from _support import machine_load

        self.loads = [machine_load()]
        try:
            await self.by_hand()  # warm-up: the project exists, later runs are upgrades
            hand: list[float] = []
            agent: list[dict[str, Any]] = []
            inproc: list[dict[str, float]] = []
            for _ in range(runs):
                hand.append(await self.by_hand())
                agent.append(await self.agent())
                if prepare:
                    inproc.append(await self.prepared())
            self.loads.append(machine_load())
        finally:
            ids = subprocess.run(
                [
                    "docker",
                    "ps",
                    "-aq",
                    "--filter",
                    f"label=com.docker.compose.project={self.project}",
                ],
                capture_output=True,
                text=True,
            ).stdout.split()
            if ids:
                subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
            subprocess.run(
                ["docker", "network", "rm", f"{self.project}_default"], capture_output=True
            )
        self.print(runs, hand, agent, inproc)

    def print(
        self,
        runs: int,
        hand: list[float],
        agent: list[dict[str, Any]],
        inproc: list[dict[str, float]],
    ) -> None:
        import statistics

        from _support import table

        base = statistics.median(hand)
        rows = [["by hand (extract, load, up, healthy, site answers)", _stats(hand), "1.00x"]]

        def row(label: str, values: list[float]) -> list[str]:
            ratio = statistics.median(values) / base if values else 0
            return [label, _stats(values), f"{ratio:.2f}x"]

        rows.append(row("agent: run --once, start → site answers", [a["to site"] for a in agent]))
        rows.append(row("agent: run --once, start → exit", [a["to exit"] for a in agent]))
        steps = (
            "resolve",
            "artifact",
            "changes",
            "validate",
            "prepare",
            "maintenance-on",
            "deploy",
        )
        for name in (*steps, "maintenance-off"):
            values = [a[name] for a in agent if name in a]
            if values:
                rows.append(row(f"  task step {name}", values))
        rows.append(row("  maintenance window (timeline)", [a["window"] for a in agent]))
        for name in ("validate", "prepare", "deploy", "deploy+site"):
            values = [p[name] for p in inproc if name in p]
            if values:
                rows.append(row(f"plugin in-process: {name}", values))
        title = (
            f"{self.variant}: {runs} runs, seconds min / median / max; machine "
            f"{' → '.join(self.loads)}"
        )
        print()
        print(table(title, ["measure", "seconds", "vs by hand"], rows))
        whole = statistics.median([a["to site"] for a in agent]) / base
        window = statistics.median([a["window"] for a in agent]) / base
        print(
            f"goals (issue 27): whole run --once {whole:.2f}x "
            f"({'met' if whole <= 1.5 else 'NOT met'}, ≤ 1.5x); maintenance window "
            f"{window:.2f}x ({'met' if window <= 1.2 else 'NOT met'}, ≤ 1.2x)"
        )


async def _check(args: list[str], *, cwd: Path | None = None, env: dict[str, str]) -> str:
    import asyncio

    process = await asyncio.create_subprocess_exec(
        *args, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {err.decode(errors='replace')[-2000:]}")
    return out.decode()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


if __name__ == "__main__":
    _main()
