"""The container image, as far as it can be tested without building it: the entrypoint
script for real, the Dockerfile by reading it."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from wrktalk_agent.settings_doc import all_env_names, installed_models

ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = ROOT / "deploy" / "docker-entrypoint.sh"
DOCKERFILE = ROOT / "Dockerfile"
PLUGIN_DIRS = sorted(p.parent for p in (ROOT / "plugins").glob("*/pyproject.toml"))

# A stand-in for the real CLI: records each call, lets `check` fail on demand, and writes
# the pid it runs under, so the test can tell that the entrypoint exec'd it.
FAKE_CLI = """#!/bin/sh
echo "$*" >> "$FAKE_LOG"
if [ "$1" = check ]; then
    echo "FAIL  database  cannot reach PostgreSQL at db:5432"
    exit "${FAKE_CHECK_EXIT:-0}"
fi
echo $$ > "$FAKE_PID"
"""


# -- the entrypoint ----------------------------------------------------------------------
@pytest.fixture
def fake_cli(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cli = bin_dir / "wrktalk-agent"
    cli.write_text(FAKE_CLI)
    cli.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRKTALK_AGENT_")}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env['PATH']}",
        FAKE_LOG=str(tmp_path / "calls.log"),
        FAKE_PID=str(tmp_path / "pid"),
    )
    return env


def run_entrypoint(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess, int]:
    proc = subprocess.Popen(
        [str(ENTRYPOINT), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out, err = proc.communicate(timeout=30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), proc.pid


def calls(env: dict[str, str]) -> list[str]:
    log = Path(env["FAKE_LOG"])
    return log.read_text().splitlines() if log.exists() else []


def test_run_is_preceded_by_check_and_exec_d(fake_cli) -> None:
    result, pid = run_entrypoint(fake_cli, "wrktalk-agent", "run")
    assert result.returncode == 0, result.stderr
    assert calls(fake_cli) == ["check", "run"]
    # exec: the agent runs under the entrypoint's own pid, so it receives SIGTERM itself
    assert int(Path(fake_cli["FAKE_PID"]).read_text()) == pid


def test_no_arguments_means_run(fake_cli) -> None:
    result, _ = run_entrypoint(fake_cli)
    assert result.returncode == 0, result.stderr
    assert calls(fake_cli) == ["check", "run"]


def test_a_failed_check_stops_the_container_before_the_agent_starts(fake_cli) -> None:
    result, _ = run_entrypoint({**fake_cli, "FAKE_CHECK_EXIT": "1"}, "wrktalk-agent", "run")
    assert result.returncode == 1
    assert calls(fake_cli) == ["check"]
    assert "FAIL  database" in result.stdout
    assert "WRKTALK_AGENT_SKIP_CHECK=1" in result.stderr
    assert not Path(fake_cli["FAKE_PID"]).exists()


def test_the_check_can_be_skipped(fake_cli) -> None:
    env = {**fake_cli, "WRKTALK_AGENT_SKIP_CHECK": "1", "FAKE_CHECK_EXIT": "1"}
    result, _ = run_entrypoint(env, "wrktalk-agent", "run", "--once")
    assert result.returncode == 0, result.stderr
    assert calls(fake_cli) == ["run --once"]


def test_other_commands_start_without_the_check(fake_cli) -> None:
    # `db init` repairs the schema a failing check would complain about
    result, _ = run_entrypoint({**fake_cli, "FAKE_CHECK_EXIT": "1"}, "wrktalk-agent", "db", "init")
    assert result.returncode == 0, result.stderr
    assert calls(fake_cli) == ["db init"]


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_entrypoint_passes_shellcheck() -> None:
    result = subprocess.run(["shellcheck", str(ENTRYPOINT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


# -- the Dockerfile ----------------------------------------------------------------------
def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined, comments dropped."""
    joined, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        joined.append(pending + stripped)
        pending = ""
    pairs = []
    for line in joined:
        keyword, _, rest = line.partition(" ")
        pairs.append((keyword.upper(), rest.strip()))
    return pairs


def stages(text: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = [[]]
    for keyword, rest in instructions(text):
        if keyword == "FROM":
            result.append([])
        result[-1].append((keyword, rest))
    return result  # result[0]: global ARGs before the first FROM


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


@pytest.fixture(scope="module")
def final_stage(dockerfile: str) -> list[tuple[str, str]]:
    return stages(dockerfile)[-1]


def args_of(dockerfile: str) -> dict[str, str]:
    found = {}
    for keyword, rest in instructions(dockerfile):
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            found[name] = default
    return found


def test_the_image_runs_as_a_numeric_non_root_user(final_stage) -> None:
    users = [rest for keyword, rest in final_stage if keyword == "USER"]
    assert users, "the final stage sets no USER: the agent would run as root"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, f"USER {users[-1]}: use a non-zero numeric uid"


def test_healthcheck_probes_healthz_on_the_configured_port(final_stage) -> None:
    checks = [rest for keyword, rest in final_stage if keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "/healthz" in checks[0] and "WRKTALK_AGENT_HTTP_PORT" in checks[0]
    env = " ".join(rest for keyword, rest in final_stage if keyword == "ENV")
    assert "WRKTALK_AGENT_HTTP_PORT=8080" in env.split()
    assert ("EXPOSE", "8080") in final_stage


def test_entrypoint_and_command(final_stage) -> None:
    entrypoint = [rest for keyword, rest in final_stage if keyword == "ENTRYPOINT"][-1]
    assert entrypoint.endswith('"/usr/local/bin/docker-entrypoint.sh"]')
    assert ("CMD", '["wrktalk-agent", "run"]') in final_stage
    copies = [rest for keyword, rest in final_stage if keyword == "COPY"]
    assert any(
        "deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh" in c for c in copies
    )


def test_helm_is_an_opt_in_verified_download(dockerfile: str) -> None:
    args = args_of(dockerfile)
    assert args["HELM_VERSION"] == "", "helm is opt-in: the compose flavour builds without it"
    assert args["HELM_SHA256"] == "", "the checksum is the builder's to pass, with the version"
    runs = "\n".join(r for k, r in instructions(dockerfile) if k == "RUN")
    downloads = sorted(set(re.findall(r"https://[^\s\"';]+", runs)))
    assert downloads == ["https://get.helm.sh/$tarball"], (
        downloads
    )  # helm-v${HELM_VERSION}-linux-<arch>.tar.gz
    assert 'tarball="helm-v${HELM_VERSION}-linux-' in dockerfile
    assert "sha256sum -c" in dockerfile
    assert "needs --build-arg HELM_SHA256=" in dockerfile, "a missing checksum must stop the build"
    assert "does not match --build-arg HELM_SHA256=" in dockerfile
    assert "unsupported architecture" in dockerfile
    # Debian's signed archive provides everything else: no other download tool
    assert not re.search(r"\b(curl|wget)\b", dockerfile)


def test_base_image_is_debian_and_pinned(dockerfile: str) -> None:
    args = args_of(dockerfile)
    assert args["BASE_IMAGE"] == "debian:trixie-slim"
    names = set()
    for keyword, rest in instructions(dockerfile):
        if keyword == "FROM":
            words = rest.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            assert image in names or (":" in image and not image.endswith(":latest")), image
            if len(words) == 3 and words[1].upper() == "AS":
                names.add(words[2])


def _distribution(project_dir: Path) -> str:
    return tomllib.loads((project_dir / "pyproject.toml").read_text())["project"]["name"]


def test_all_six_distributions_are_built_and_installed(dockerfile: str) -> None:
    wheelhouse = (ROOT / "scripts" / "build-wheelhouse.sh").read_text()
    wheel_cmd = re.search(r"-m pip wheel(.*?)\|\|", wheelhouse, re.S)
    assert wheel_cmd, "scripts/build-wheelhouse.sh runs no `pip wheel`"
    built = {a for a in shlex.split(wheel_cmd.group(1).replace("\\\n", " ")) if a[0] in ".p"}
    expected_dirs = {"."} | {str(d.relative_to(ROOT)) for d in PLUGIN_DIRS}
    assert built == expected_dirs

    runs = [rest for keyword, rest in instructions(dockerfile) if keyword == "RUN"]
    install_cmd = next(r for r in runs if 'pip" install' in r and "--no-index" in r)
    arguments = re.search(r'pip" install(.*?);', install_cmd)
    assert arguments, install_cmd
    installed = {
        a.split("[")[0] for a in shlex.split(arguments.group(1)) if a.startswith("wrktalk-agent")
    }
    assert installed == {_distribution(ROOT)} | {_distribution(d) for d in PLUGIN_DIRS}
    assert len(installed) == 6


def test_dockerignore_keeps_what_the_dockerfile_copies(dockerfile: str) -> None:
    kept = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for keyword, rest in instructions(dockerfile):
        if keyword == "COPY" and "--from=" not in rest:
            sources = [s for s in rest.split()[:-1] if not s.startswith("--")]
            for source in sources:
                path = Path(source.rstrip("/"))
                assert any(path == Path(k) or Path(k) in path.parents for k in kept), (
                    f"COPY {source}: excluded by .dockerignore"
                )


def test_the_base_image_script_installs_the_image_packages() -> None:
    # one list for both: the mmdebstrap base has them, other bases get them from apt
    script = (ROOT / "scripts" / "make-base-image.sh").read_text()
    assert "deploy/image/packages" in script
    packages = (ROOT / "deploy" / "image" / "packages").read_text().split()
    assert {"python3", "tini", "docker-cli", "docker-compose"} <= set(packages)


def test_image_settings_exist(dockerfile: str) -> None:
    known = set().union(*(all_env_names(m) for m in installed_models().values()))
    for name in set(re.findall(r"\bWRKTALK_AGENT_[A-Z0-9_]+", dockerfile)):
        assert name in known, f"{name} is not a setting of the agent or of an installed plugin"
