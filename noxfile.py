"""Developer and CI sessions: nox -s tests lint typecheck build e2e image ha bench demo."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "build"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
PLUGINS = ["helm", "compose", "nginx", "haproxy", "smtp"]
IMAGE_TAG = "wrktalk-agent:dev"
NGINX_TAG = "wrktalk-agent-nginx:dev"
NGINX_BASE_TAG = "wrktalk-nginx-base:trixie"
EXAMPLES = ["webhook", "symlink", "flagfile"]
EDITABLE = (
    ["-e", ".[dev]"]
    + [arg for p in PLUGINS for arg in ("-e", f"plugins/{p}")]
    + [arg for e in EXAMPLES for arg in ("-e", f"examples/{e}")]
)


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite (core and plugins) on real PostgreSQL."""
    session.install(*EDITABLE)
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install(*EDITABLE)
    session.run(
        "mypy",
        "wrktalk_agent",
        "wrktalk_demo",
        *[f"plugins/{p}/wrktalk_agent_{p}" for p in PLUGINS],
    )


@nox.session
def build(session: nox.Session) -> None:
    """Build the six wheels, install them in a clean venv, list the plugins."""
    session.install("build")
    dist = Path(session.create_tmp()) / "dist"
    for source in [ROOT, *(ROOT / "plugins" / p for p in PLUGINS)]:
        session.run("python", "-m", "build", "--wheel", "--outdir", str(dist), str(source))
    wheels = sorted(str(w) for w in dist.glob("*.whl"))
    if len(wheels) != 6:
        session.error(f"expected 6 wheels, built {len(wheels)}: {wheels}")
    venv = Path(session.create_tmp()) / "clean-venv"
    session.run("python", "-m", "venv", "--clear", str(venv))
    python = str(venv / "bin" / "python")
    session.run(python, "-m", "pip", "install", "-q", *wheels, external=True)
    listing = session.run(
        str(venv / "bin" / "wrktalk-agent"), "plugins", "--json", external=True, silent=True
    )
    plugins = {p["name"]: p for p in json.loads(listing or "[]")}
    missing = [p for p in PLUGINS if p not in plugins or plugins[p]["error"]]
    if missing:
        session.error(f"plugins missing or broken in the clean install: {missing}")
    for name in PLUGINS:
        info = plugins[name]
        session.log(f"{name}: {info['distribution']} {info['version']} hooks={info['hooks']}")


@nox.session
def e2e(session: nox.Session) -> None:
    """End to end with a real Docker engine (compose plugin); needs root for dockerd."""
    session.install(*EDITABLE)
    session.run("bash", "scripts/start-dockerd.sh", external=True)
    env = {"WRKTALK_E2E": "1"}
    session.run(
        "python", "-m", "pytest", "-m", "e2e", "tests", "plugins/compose", *session.posargs, env=env
    )


@nox.session
def image(session: nox.Session) -> None:
    """Build the container image (wrktalk-agent:dev) and deploy/compose's nginx image
    without a registry, then test them end to end: bases made with mmdebstrap (cached),
    the wheelhouse, `docker build`, and tests/image (the image, then the compose stack
    with Compose v2) against PostgreSQL at 127.0.0.1:5432 (WRKTALK_TEST_DATABASE_URL)."""
    session.install(*EDITABLE)
    session.run("bash", "scripts/start-dockerd.sh", external=True)
    started = time.monotonic()
    base = os.environ.get("BASE_IMAGE") or _last_line(
        session.run("bash", "scripts/make-base-image.sh", external=True, silent=True)
    )
    session.log(f"base image {base} ({time.monotonic() - started:.0f}s)")
    built = time.monotonic()
    session.run(
        "bash", "scripts/build-image.sh", external=True, env={"BASE_IMAGE": base, "TAG": IMAGE_TAG}
    )
    size = session.run(
        "docker", "image", "inspect", "-f", "{{.Size}}", IMAGE_TAG, external=True, silent=True
    )
    session.log(
        f"{IMAGE_TAG}: {int(_last_line(size)) / 1e6:.0f} MB; build {time.monotonic() - built:.0f}s "
        f"(with the base image: {time.monotonic() - started:.0f}s)"
    )
    # deploy/compose's nginx: Debian's nginx with the plugin's snippets from that image
    nginx_packages = {"PACKAGES": "deploy/compose/nginx/packages", "BASE_TAG": NGINX_BASE_TAG}
    nginx_base = _last_line(
        session.run(
            "bash", "scripts/make-base-image.sh", external=True, silent=True, env=nginx_packages
        )
    )
    session.run(
        "bash", "scripts/build-nginx-image.sh", external=True,
        env={"BASE_IMAGE": nginx_base, "AGENT_IMAGE": IMAGE_TAG, "TAG": NGINX_TAG},
    )  # fmt: skip
    env = {
        "WRKTALK_IMAGE": IMAGE_TAG,
        "WRKTALK_NGINX_IMAGE": NGINX_TAG,
        "WRKTALK_BASE_IMAGE": base,
        "WRKTALK_E2E": "1",
        "WRKTALK_TEST_DATABASE_URL": os.environ.get(
            "WRKTALK_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    }
    session.run("python", "-m", "pytest", "tests/image", *session.posargs, env=env)
    session.log(f"image session: {time.monotonic() - started:.0f}s in all")


def _last_line(output: str | None) -> str:
    lines = (output or "").strip().splitlines()
    return lines[-1].strip() if lines else ""


@nox.session
def ha(session: nox.Session) -> None:
    """HA PostgreSQL: a primary and a streaming replica (PG 15 binaries), a failover in the
    middle of a deploy, host lists, PgBouncer in transaction mode (Debian pgbouncer), and a
    Patroni switchover with a local etcd (Debian etcd-server; Patroni from PyPI)."""
    session.install(*EDITABLE)
    # Patroni runs as the postgres user when we are root: its interpreter must not live
    # under root's home (pyenv), so it gets a venv of the system Python in the temp dir.
    system_python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else "python3"
    patroni_venv = Path(tempfile.gettempdir()) / "wrktalk-patroni-venv"
    session.run(system_python, "-m", "venv", str(patroni_venv), external=True)
    session.run(
        str(patroni_venv / "bin" / "pip"), "install", "-q", "patroni[etcd3]", "psycopg2-binary",
        external=True,
    )  # fmt: skip
    # `nox -s ha -- tests/test_ha_patroni.py` runs only what is named (CI: the rest of
    # the HA tests already ran in the main suite)
    tests = session.posargs or [
        "tests/test_ha.py",
        "tests/test_ha_servers.py",
        "tests/test_ha_patroni.py",
    ]
    session.run(
        "python", "-m", "pytest", *tests,
        env={"WRKTALK_TEST_PATRONI": str(patroni_venv / "bin" / "patroni")},
    )  # fmt: skip


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks, each printing a table of figures: `nox -s bench -- engine tui` runs some."""
    session.install(*EDITABLE)
    wanted = set(session.posargs)
    for script in sorted((ROOT / "benchmarks").glob("bench_*.py")):
        if not wanted or script.stem.removeprefix("bench_") in wanted:
            session.run("python", str(script), env={"PYTHONUNBUFFERED": "1"})


@nox.session
def demo(session: nox.Session) -> None:
    """The quick-start demo on the embedded PostgreSQL."""
    session.install(*EDITABLE)
    session.run("wrktalk-agent", "demo", *session.posargs, env={"PYTHONUNBUFFERED": "1"})


if os.environ.get("CI"):
    nox.options.error_on_missing_interpreters = True
