"""The demo's releases: a static site published by a deploy script, or served by a
busybox container built without a registry."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
import time

from wrktalk_demo.layout import BUSYBOX

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
