"""A fake ``helm`` executable that follows Helm's real CLI, for the plugin's tests.

It implements the subcommands the agent uses — version, upgrade, status, history,
rollback, list, uninstall — with Helm 3's flags, JSON shapes, messages and exit codes
(checked against helm/helm's cmd and pkg/action sources), plus Helm 4's flag rename
(``--rollback-on-failure``, ``--atomic`` deprecated) when the configured version is 4.x.
There is no cluster: a release's revisions live in a JSON state file.

Environment:

* ``FAKE_HELM_STATE``: the state file (created when missing), a JSON object with
  ``version`` ("v3.14.4"), ``cluster`` ("reachable" | "unreachable" | "forbidden"),
  ``rbac`` ("cluster-admin" | "namespaced": may not create namespaces), ``namespaces``
  (existing namespaces), ``releases`` ({"<ns>/<name>": [revision, ...]})
  and ``inject`` ({"upgrade": mode, "rollback": mode}) for failures:
  ``timeout`` (resources never get ready: Helm's "context deadline exceeded", and what
  --atomic does about it) or ``hang`` (records the pending revision, then blocks until
  killed, like a helm whose process dies mid-upgrade).
* ``FAKE_HELM_LOG``: every invocation's argv (and pid) is appended as one JSON line.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DEFAULT_STATE: dict[str, Any] = {
    "version": "v3.14.4",
    "cluster": "reachable",
    "rbac": "cluster-admin",
    "namespaces": ["default", "kube-system"],
    "releases": {},
    "inject": {},
}
UNREACHABLE = (
    'Kubernetes cluster unreachable: Get "https://127.0.0.1:6443/version": '
    "dial tcp 127.0.0.1:6443: connect: connection refused"
)
CREATE_NAMESPACE_FORBIDDEN = (
    'namespaces is forbidden: User "system:serviceaccount:wrktalk-agent:wrktalk-agent" '
    'cannot create resource "namespaces" in API group "" at the cluster scope'
)
FORBIDDEN = (
    'list: failed to list: secrets is forbidden: User "system:serviceaccount:wrktalk:'
    'wrktalk-agent" cannot list resource "secrets" in API group "" in the namespace "{ns}"'
)
_DURATION = re.compile(r"^((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+$|^0$")

# flag name -> takes a value; global flags are accepted by every subcommand
GLOBAL_FLAGS = {
    "--namespace": True, "-n": True, "--kube-context": True, "--kubeconfig": True,
    "--debug": False, "--burst-limit": True, "--qps": True,
}  # fmt: skip
UPGRADE_FLAGS = {
    "--install": False, "-i": False, "--create-namespace": False, "--values": True,
    "-f": True, "--set": True, "--set-string": True, "--set-file": True, "--version": True,
    "--wait": False, "--wait-for-jobs": False, "--timeout": True, "--history-max": True,
    "--atomic": False, "--description": True, "--cleanup-on-fail": False, "--force": False,
    "--reset-values": False, "--reuse-values": False, "--no-hooks": False,
    "--skip-crds": False, "--dry-run": False, "--devel": False, "--output": True, "-o": True,
    "--dependency-update": False, "--render-subchart-notes": False,
}  # fmt: skip
ROLLBACK_FLAGS = {
    "--wait": False, "--wait-for-jobs": False, "--timeout": True, "--history-max": True,
    "--cleanup-on-fail": False, "--force": False, "--no-hooks": False,
    "--recreate-pods": False, "--dry-run": False,
}  # fmt: skip
OUTPUT_FLAGS = {"--output": True, "-o": True}


class HelmError(Exception):
    """Printed as ``Error: <message>`` on stderr, exit status 1 (what cobra does)."""


def main(argv: list[str]) -> int:
    log_path = os.environ.get("FAKE_HELM_LOG")
    if log_path:
        with open(log_path, "a") as log:
            log.write(json.dumps({"argv": argv, "pid": os.getpid()}) + "\n")
    state_path = Path(os.environ["FAKE_HELM_STATE"])
    state = load_state(state_path)
    try:
        if not argv:
            raise HelmError('"helm" requires a subcommand')
        command, rest = argv[0], argv[1:]
        handler = COMMANDS.get(command)
        if handler is None:
            raise HelmError(
                f'unknown command "{command}" for "helm"\nRun \'helm --help\' for usage.'
            )
        handler(state, state_path, rest)
    except HelmError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


# -- state -----------------------------------------------------------------------------
def load_state(path: Path) -> dict[str, Any]:
    if not path.exists():
        return json.loads(json.dumps(DEFAULT_STATE))
    loaded = json.loads(path.read_text())
    return {**json.loads(json.dumps(DEFAULT_STATE)), **loaded}


def save_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


def helm4(state: dict[str, Any]) -> bool:
    return str(state["version"]).startswith("v4.")


def now() -> str:
    return datetime.now(UTC).isoformat()


# -- argument parsing (pflag rules: --flag value, --flag=value, -f value) --------------
def parse(
    command: str, args: list[str], flags: dict[str, bool], nargs: tuple[int, int], usage: str
) -> tuple[list[str], dict[str, list[str]]]:
    known = {**GLOBAL_FLAGS, **flags}
    positional: list[str] = []
    values: dict[str, list[str]] = {}
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        name, _, inline = arg.partition("=")
        if name not in known:
            if name.startswith("--"):
                raise HelmError(f"unknown flag: {name}")
            raise HelmError(f"unknown shorthand flag: '{name[1]}' in {arg}")
        if known[name]:
            if inline:
                value = inline
            elif index < len(args):
                value = args[index]
                index += 1
            else:
                raise HelmError(f"flag needs an argument: {arg}")
        else:
            value = inline or "true"
        values.setdefault(name, []).append(value)
    low, high = nargs
    if not low <= len(positional) <= high:
        if low == high:
            what = f"{low} argument" + ("s" if low != 1 else "")
            raise HelmError(f'"helm {command}" requires {what}\n\nUsage:  {usage}')
        raise HelmError(f'"helm {command}" requires at least {low} argument\n\nUsage:  {usage}')
    return positional, values


def last(values: dict[str, list[str]], *names: str, default: str | None = None) -> str | None:
    for name in names:
        if name in values:
            return values[name][-1]
    return default


def namespace_of(values: dict[str, list[str]]) -> str:
    return last(values, "--namespace", "-n", default="default") or "default"


def output_format(values: dict[str, list[str]]) -> str:
    fmt = last(values, "--output", "-o", default="table") or "table"
    if fmt not in ("table", "json", "yaml"):
        raise HelmError(f'invalid argument "{fmt}" for "-o, --output" flag: invalid format type')
    return fmt


def duration(values: dict[str, list[str]]) -> str:
    value = last(values, "--timeout", default="5m0s") or "5m0s"
    if not _DURATION.match(value):
        raise HelmError(
            f'invalid argument "{value}" for "--timeout" flag: time: invalid duration "{value}"'
        )
    return value


def reach(state: dict[str, Any]) -> None:
    if state["cluster"] == "unreachable":
        raise HelmError(UNREACHABLE)


# -- subcommands -----------------------------------------------------------------------
def cmd_version(state: dict[str, Any], _path: Path, args: list[str]) -> None:
    _, values = parse(
        "version", args, {"--template": True, "--short": False, "--client": False, "-c": False},
        (0, 0), "helm version [flags]",
    )  # fmt: skip
    info = {"Version": state["version"], "GitCommit": "c309b6f0ff63856811846ce18f3bdc93d2b4d54b",
            "GitTreeState": "clean", "GoVersion": "go1.21.9"}  # fmt: skip
    template = last(values, "--template")
    if template is not None:

        def field(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in info:
                raise HelmError(
                    f'template: _:1:2: executing "_" at <.{name}>: can\'t evaluate field '
                    f"{name} in type version.BuildInfo"
                )
            return info[name]

        sys.stdout.write(re.sub(r"\{\{\s*\.(\w+)\s*\}\}", field, template))  # no newline
    elif "--short" in values:
        print(f"{state['version']}+g{info['GitCommit'][:7]}")
    else:
        print("version.BuildInfo{" + ", ".join(f'{k}:"{v}"' for k, v in info.items()) + "}")


def cmd_upgrade(state: dict[str, Any], path: Path, args: list[str]) -> None:
    flags = dict(UPGRADE_FLAGS)
    if helm4(state):
        flags["--rollback-on-failure"] = False
    (name, chart_arg), values = parse(
        "upgrade", args, flags, (2, 2), "helm upgrade [RELEASE] [CHART] [flags]"
    )
    if helm4(state) and "--atomic" in values:
        print(
            "Flag --atomic has been deprecated, use --rollback-on-failure instead", file=sys.stderr
        )
    timeout = duration(values)
    ns = namespace_of(values)
    atomic = "--atomic" in values or "--rollback-on-failure" in values
    history_max = int(last(values, "--history-max", default="10") or "10")
    reach(state)
    debug(values, f"upgrade.go:153: [debug] preparing upgrade for {name}")
    key = f"{ns}/{name}"
    history = state["releases"].get(key, [])
    installing = not history or history[-1]["status"] == "uninstalled"
    if installing and "--install" not in values and "-i" not in values:
        raise HelmError(f'UPGRADE FAILED: "{name}" has no deployed releases')
    chart = load_chart(chart_arg)
    config = load_values(values.get("--values", []) + values.get("-f", []))
    if installing:
        print(f'Release "{name}" does not exist. Installing it now.')
        if "--create-namespace" in values:
            # Helm creates unconditionally and only tolerates AlreadyExists, but the API
            # server checks RBAC first (helm/helm#32511).
            if state["rbac"] == "namespaced":
                raise HelmError(CREATE_NAMESPACE_FORBIDDEN)
            if ns not in state["namespaces"]:
                state["namespaces"].append(ns)
        elif ns not in state["namespaces"]:
            raise HelmError(f'create: failed to create: namespaces "{ns}" not found')
    elif history[-1]["status"] in ("pending-install", "pending-upgrade", "pending-rollback"):
        raise HelmError(
            "UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress"
        )
    revision = history[-1]["revision"] + 1 if history else 1
    entry = {
        "revision": revision, "updated": now(),
        "status": "pending-install" if installing else "pending-upgrade",
        "chart": f"{chart['name']}-{chart['version']}", "app_version": chart["appVersion"],
        "description": "Initial install underway" if installing else "Preparing upgrade",
        "config": config, "notes": chart["notes"],
    }  # fmt: skip
    history.append(entry)
    state["releases"][key] = history
    save_state(path, state)
    mode = state["inject"].get("upgrade")
    if mode == "hang":
        debug(values, "wait.go:48: [debug] beginning wait for 3 resources")
        while True:  # until the agent stops us; the revision stays pending
            time.sleep(1)
    if mode == "timeout":
        for second in range(0, 600, 2):
            debug(values, f"wait.go:66: [debug] Deployment is not ready: {ns}/wrktalk. "
                  f"0 out of 1 expected pods are ready ({second}s, timeout {timeout})")  # fmt: skip
        fail_upgrade(state, path, key, entry, installing, atomic, name)
        return
    if installing:
        entry.update(
            status="deployed", description=last(values, "--description") or "Install complete"
        )
    else:
        for older in history[:-1]:
            if older["status"] == "deployed":
                older["status"] = "superseded"
        entry.update(
            status="deployed", description=last(values, "--description") or "Upgrade complete"
        )
    prune(history, history_max)
    save_state(path, state)
    if not installing:
        print(f'Release "{name}" has been upgraded. Happy Helming!')
    print_status(name, ns, entry)


def fail_upgrade(
    state: dict[str, Any], path: Path, key: str, entry: dict[str, Any], installing: bool,
    atomic: bool, name: str,
) -> None:  # fmt: skip
    """What Helm does when --wait runs out of time (pkg/action install.go/upgrade.go)."""
    cause = "context deadline exceeded"
    history = state["releases"][key]
    if installing:
        entry.update(status="failed", description=f'Release "{name}" failed: {cause}')
        if atomic:  # uninstalled, history and all
            del state["releases"][key]
            save_state(path, state)
            raise HelmError(
                f"release {name} failed, and has been uninstalled due to atomic being set: {cause}"
            )
        save_state(path, state)
        raise HelmError(cause)
    entry.update(status="failed", description=f'Upgrade "{name}" failed: {cause}')
    if not atomic:
        save_state(path, state)
        raise HelmError(f"UPGRADE FAILED: {cause}")
    good = [r for r in history if r["status"] in ("deployed", "superseded")]
    if not good:
        save_state(path, state)
        raise HelmError(
            "UPGRADE FAILED: unable to find a previously successful release when attempting "
            f"to rollback. original upgrade error: {cause}"
        )
    target = good[-1]
    record_rollback(history, target)
    save_state(path, state)
    raise HelmError(
        f"UPGRADE FAILED: release {name} failed, and has been rolled back due to atomic "
        f"being set: {cause}"
    )


def record_rollback(history: list[dict[str, Any]], target: dict[str, Any]) -> dict[str, Any]:
    for older in history:
        if older["status"] == "deployed":
            older["status"] = "superseded"
    entry = {**target, "revision": history[-1]["revision"] + 1, "updated": now(),
             "status": "deployed", "description": f"Rollback to {target['revision']}"}  # fmt: skip
    history.append(entry)
    return entry


def prune(history: list[dict[str, Any]], history_max: int) -> None:
    """storage.removeLeastRecent: drop the oldest revisions beyond the limit, never the
    deployed one."""
    if history_max <= 0:
        return
    overage = len(history) - history_max
    doomed = [r for r in history[:overage] if r["status"] != "deployed"] if overage > 0 else []
    for revision in doomed:
        history.remove(revision)


def cmd_rollback(state: dict[str, Any], path: Path, args: list[str]) -> None:
    positional, values = parse(
        "rollback", args, ROLLBACK_FLAGS, (1, 2), "helm rollback <RELEASE> [REVISION] [flags]"
    )
    duration(values)
    ns = namespace_of(values)
    name = positional[0]
    reach(state)
    history = state["releases"].get(f"{ns}/{name}")
    if not history:
        raise HelmError("release: not found")
    wanted = 0
    if len(positional) == 2:
        try:
            wanted = int(positional[1])
        except ValueError:
            raise HelmError(
                "could not convert revision to a number: strconv.Atoi: parsing "
                f'"{positional[1]}": invalid syntax'
            ) from None
    if wanted == 0:
        wanted = history[-1]["revision"] - 1
    target = next((r for r in history if r["revision"] == wanted), None)
    if target is None:
        raise HelmError(f"release has no {wanted} version")
    if state["inject"].get("rollback") == "timeout":
        entry = {**target, "revision": history[-1]["revision"] + 1, "updated": now(),
                 "status": "failed",
                 "description": f'Release "{name}" failed: context deadline exceeded'}  # fmt: skip
        history.append(entry)
        save_state(path, state)
        raise HelmError(f"release {name} failed: context deadline exceeded")
    record_rollback(history, target)
    prune(history, int(last(values, "--history-max", default="10") or "10"))
    save_state(path, state)
    print("Rollback was a success! Happy Helming!")


def cmd_status(state: dict[str, Any], _path: Path, args: list[str]) -> None:
    (name,), values = parse(
        "status",
        args,
        {**OUTPUT_FLAGS, "--revision": True},
        (1, 1),
        "helm status RELEASE_NAME [flags]",
    )
    fmt = output_format(values)
    ns = namespace_of(values)
    reach(state)
    history = state["releases"].get(f"{ns}/{name}")
    if not history:
        raise HelmError("release: not found")
    entry = history[-1]
    if fmt == "json":
        # the whole release, like Helm (chart stripped): values included
        release = {
            "name": name,
            "info": {"first_deployed": history[0]["updated"], "last_deployed": entry["updated"],
                     "deleted": "", "description": entry["description"],
                     "status": entry["status"], "notes": entry.get("notes", "")},
            "config": entry.get("config", {}),
            "manifest": "---\n# Source: wrktalk/templates/deployment.yaml\n",
            "version": entry["revision"],
            "namespace": ns,
        }  # fmt: skip
        print(json.dumps(release))
    else:
        print_status(name, ns, entry)


def cmd_history(state: dict[str, Any], _path: Path, args: list[str]) -> None:
    (name,), values = parse(
        "history",
        args,
        {**OUTPUT_FLAGS, "--max": True},
        (1, 1),
        "helm history RELEASE_NAME [flags]",
    )
    fmt = output_format(values)
    ns = namespace_of(values)
    reach(state)
    history = state["releases"].get(f"{ns}/{name}")
    if not history:
        raise HelmError("release: not found")
    shown = history[-int(last(values, "--max", default="256") or "256") :]
    keys = ("revision", "updated", "status", "chart", "app_version", "description")
    rows = [{k: r[k] for k in keys} for r in shown]
    if fmt == "json":
        print(json.dumps(rows))
    else:
        print("REVISION\tUPDATED\tSTATUS\tCHART\tAPP VERSION\tDESCRIPTION")
        for r in rows:
            print("\t".join(str(r[k]) for k in rows[0]))


def cmd_list(state: dict[str, Any], _path: Path, args: list[str]) -> None:
    _, values = parse(
        "list", args, {**OUTPUT_FLAGS, "--all": False, "-a": False, "--all-namespaces": False,
                       "-A": False, "--pending": False},
        (0, 1), "helm list [flags]",
    )  # fmt: skip
    fmt = output_format(values)
    ns = namespace_of(values)
    reach(state)
    if state["cluster"] == "forbidden":
        raise HelmError(FORBIDDEN.format(ns=ns))
    rows = []
    for key, history in sorted(state["releases"].items()):
        release_ns, name = key.split("/", 1)
        latest = history[-1]
        # by default Helm lists deployed and failed releases only
        if release_ns == ns and latest["status"] in ("deployed", "failed"):
            row = {"name": name, "namespace": ns, "revision": str(latest["revision"])}
            rows.append(row | {k: latest[k] for k in ("updated", "status", "chart", "app_version")})
    if fmt == "json":
        print(json.dumps(rows))
    else:
        print("NAME\tNAMESPACE\tREVISION\tUPDATED\tSTATUS\tCHART\tAPP VERSION")
        for row in rows:
            print("\t".join(row.values()))


def cmd_uninstall(state: dict[str, Any], path: Path, args: list[str]) -> None:
    (name,), values = parse(
        "uninstall", args, {"--wait": False, "--timeout": True, "--keep-history": False,
                            "--no-hooks": False, "--dry-run": False},
        (1, 1), "helm uninstall RELEASE_NAME [...] [flags]",
    )  # fmt: skip
    duration(values)
    ns = namespace_of(values)
    reach(state)
    key = f"{ns}/{name}"
    if key not in state["releases"]:
        raise HelmError(f"uninstall: Release not loaded: {name}: release: not found")
    if "--keep-history" in values:
        state["releases"][key][-1]["status"] = "uninstalled"
    else:
        del state["releases"][key]
    save_state(path, state)
    print(f'release "{name}" uninstalled')


COMMANDS = {
    "version": cmd_version, "upgrade": cmd_upgrade, "rollback": cmd_rollback,
    "status": cmd_status, "history": cmd_history, "hist": cmd_history, "list": cmd_list,
    "ls": cmd_list, "uninstall": cmd_uninstall, "delete": cmd_uninstall,
}  # fmt: skip


# -- helpers ---------------------------------------------------------------------------
def load_chart(arg: str) -> dict[str, str]:
    """Chart metadata, with Helm's messages for a missing path or Chart.yaml."""
    chart_path = Path(arg)
    if not chart_path.exists():
        raise HelmError(f'path "{arg}" not found')
    if chart_path.is_dir():
        meta_file = chart_path / "Chart.yaml"
        if not meta_file.is_file():
            raise HelmError("Chart.yaml file is missing")
        text = meta_file.read_text()
        notes_file = chart_path / "templates" / "NOTES.txt"
        notes = notes_file.read_text() if notes_file.is_file() else ""
    else:
        try:
            with tarfile.open(chart_path) as tar:
                member = next(m for m in tar.getmembers() if m.name.count("/") == 1
                              and m.name.endswith("/Chart.yaml"))  # fmt: skip
                extracted = tar.extractfile(member)
                assert extracted is not None
                text = extracted.read().decode()
        except (tarfile.TarError, StopIteration):
            raise HelmError(
                f"file '{arg}' does not appear to be a gzipped archive; "
                "got 'application/octet-stream'"
            ) from None
        notes = ""
    meta = dict(re.findall(r"^(\w+):\s*['\"]?([^'\"\n]*)['\"]?\s*$", text, re.M))
    if "name" not in meta:
        raise HelmError("validation: chart.metadata.name is required")
    return {"name": meta["name"], "version": meta.get("version", "0.1.0"),
            "appVersion": meta.get("appVersion", ""), "notes": notes}  # fmt: skip


def load_values(files: list[str]) -> dict[str, str]:
    config: dict[str, str] = {}
    for name in files:
        try:
            text = Path(name).read_text()
        except FileNotFoundError:
            raise HelmError(f"open {name}: no such file or directory") from None
        config.update(re.findall(r"^(\w+):\s*(.*?)\s*$", text, re.M))
    return config


def print_status(name: str, ns: str, entry: dict[str, Any]) -> None:
    print(f"NAME: {name}")
    print(f"LAST DEPLOYED: {time.strftime('%a %b %d %H:%M:%S %Y')}")
    print(f"NAMESPACE: {ns}")
    print(f"STATUS: {entry['status']}")
    print(f"REVISION: {entry['revision']}")
    print("TEST SUITE: None")
    if entry.get("notes"):
        print("NOTES:")
        print(entry["notes"].strip())


def debug(values: dict[str, list[str]], line: str) -> None:
    if "--debug" in values:
        print(line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
