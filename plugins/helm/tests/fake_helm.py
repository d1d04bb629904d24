"""A fake ``helm`` executable that follows Helm's real CLI, for the plugin's tests.

It implements the subcommands the agent uses — version, upgrade, status, history,
rollback, list, uninstall, lint, template — with the flags, JSON shapes, messages and exit
codes of Helm 3.16 and Helm 4.x (read from helm/helm's cmd and pkg/action sources at
v3.16.4 and v4.2.4), choosing by the configured version where the two majors differ:

* ``--atomic`` (Helm 3) / ``--rollback-on-failure`` (Helm 4, ``--atomic`` deprecated), and
  the wording of what they did ("due to atomic being set" / "due to rollback-on-failure
  being set");
* ``--wait``: a boolean in Helm 3; a strategy in Helm 4 (bare ``--wait`` means
  ``watcher``; ``watcher``, ``hookOnly``, ``legacy``; anything else is refused);
* SIGTERM during a wait: both print "Release X has been cancelled.", mark the revision
  ``failed`` and, when atomic, start their own rollback (a ``pending-rollback`` revision
  that waits for resources) or, on a first install, their own uninstall — which in Helm 3
  deletes without waiting, and in Helm 4 waits for the deletion, so a SIGKILL then leaves
  the release ``uninstalling``;
* ``helm status -o json``: Helm 4 reads the release's resources from the cluster
  (``info.resources``) and fails when the stored manifest names a kind the API server no
  longer serves; Helm 3 reads only Helm's storage. An unset ``info.deleted`` is ``""``
  in Helm 3 and left out in Helm 4;
* "Kubernetes cluster unreachable" (Helm 3) / "kubernetes cluster unreachable" (Helm 4);
* a wait that fails or is cancelled: Helm 3 (and Helm 4's ``legacy`` waiter) returns the
  context's error; Helm 4's ``watcher`` one line per resource it gave up on, then the
  context's error (errors.Join: several lines);
* flags Helm 4 removed: ``rollback --recreate-pods`` and ``version -c/--client``.

Both majors: ``--debug`` (or ``HELM_DEBUG``) makes ``upgrade`` print the release's values
and manifest, and ``-o json|yaml`` the whole release; a kind the API server no longer
serves fails the build of any manifest that names it: the new one of an upgrade or
install, the stored one of the deployed release (upgrade, also ``--dry-run=server``), of
the current and target revisions (rollback, which leaves its ``pending-rollback``
revision) and of the newest revision (uninstall: "failed to delete release", the release
left ``uninstalling``); ``--history-max`` pruning before a new revision is stored, never the last
deployed one (storage.removeLeastRecent); values reused from the current release when an
upgrade gets no values and no ``--reset-values``; ``-f``/``--values`` split at commas like
any pflag string slice (CSV: a quoted item keeps its commas); ``helm history`` showing at
most ``--max`` (256) newest revisions; ``uninstalling`` blocking upgrades ("has no deployed
releases") until a second ``helm uninstall`` finishes it.

Charts are loaded, linted and rendered by Helm's own engine (``helm_python``: Helm
v4.2.3's Go SDK), so a template error, a values file that breaks ``values.schema.json`` or
a missing ``required`` value is Helm's own message with exit status 1, for ``lint``,
``template``, ``upgrade --install`` and their ``--dry-run``. There is no cluster: a
release's revisions live in a JSON state file.

Environment:

* ``FAKE_HELM_STATE``: the state file (created when missing), a JSON object with
  ``version`` ("v3.16.4"), ``cluster`` ("reachable" | "unreachable" | "forbidden"),
  ``rbac`` ("cluster-admin" | "namespaced": may not create namespaces), ``namespaces``
  (existing namespaces), ``releases`` ({"<ns>/<name>": [revision, ...]}),
  ``unserved`` (kinds the API server no longer serves, as "apiVersion/Kind") and
  ``inject`` ({"upgrade": mode, "rollback": mode, "uninstall": mode, "cancel_wait":
  seconds}) for failures: ``timeout`` (resources never get ready: Helm's "context
  deadline exceeded", and what atomic does about it) or ``hang`` (records the pending
  revision, then waits until SIGTERM, which Helm answers as described above; Helm's own
  rollback or uninstall after the cancellation waits ``cancel_wait`` seconds, default:
  until killed); for uninstall ``before-purge`` (a delete failed: "failed to delete
  release: NAME", the release left ``uninstalling``) or ``after-purge`` (the release is
  purged, then the wait for the deletion gives up: "uninstallation completed with 1
  error(s): ...").
* ``FAKE_HELM_LOG``: every invocation's argv (and pid) is appended as one JSON line.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import sys
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

DEFAULT_STATE: dict[str, Any] = {
    "version": "v3.16.4",
    "cluster": "reachable",
    "rbac": "cluster-admin",
    "namespaces": ["default", "kube-system"],
    "releases": {},
    "unserved": [],
    "inject": {},
}
#: pkg/kube/client.go IsReachable: capitalised in Helm 3, lower case in Helm 4
UNREACHABLE = (
    '{K}ubernetes cluster unreachable: Get "https://127.0.0.1:6443/version": '
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
PENDING = ("pending-install", "pending-upgrade", "pending-rollback")
WAIT_STRATEGIES = ("watcher", "hookOnly", "legacy")
DRY_RUN = ("client", "server", "none", "true", "false")

# flag name -> takes a value; global flags (pkg/cli/environment.go) are accepted by
# every subcommand
GLOBAL_FLAGS = {
    "--namespace": True, "-n": True, "--kube-context": True, "--kubeconfig": True,
    "--kube-token": True, "--kube-as-user": True, "--kube-as-group": True,
    "--kube-apiserver": True, "--kube-ca-file": True, "--kube-tls-server-name": True,
    "--kube-insecure-skip-tls-verify": False, "--debug": False, "--registry-config": True,
    "--repository-config": True, "--repository-cache": True, "--burst-limit": True,
    "--qps": True,
}  # fmt: skip
HELM4_GLOBAL_FLAGS = {"--content-cache": True, "--color": True, "--colour": True}
#: string slices: pflag reads each value as one CSV record
SLICE_FLAGS = frozenset({"--values", "-f"})
VALUES_FLAGS = {
    "--values": True, "-f": True, "--set": True, "--set-string": True, "--set-file": True,
}  # fmt: skip
UPGRADE_FLAGS = {
    **VALUES_FLAGS,
    "--install": False, "-i": False, "--create-namespace": False, "--version": True,
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
#: Helm 4 dropped --recreate-pods, renamed --force (kept, deprecated) and added
#: server-side apply
HELM4_ROLLBACK_FLAGS = {
    "--wait": False, "--wait-for-jobs": False, "--timeout": True, "--history-max": True,
    "--cleanup-on-fail": False, "--force": False, "--force-replace": False,
    "--force-conflicts": False, "--server-side": True, "--no-hooks": False,
    "--dry-run": False,
}  # fmt: skip
#: workload kinds a wait can give up on (kstatus reports a ConfigMap ready at once)
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet")
LINT_FLAGS = {**VALUES_FLAGS, "--strict": False, "--with-subcharts": False, "--quiet": False}
TEMPLATE_FLAGS = {**VALUES_FLAGS, "--output-dir": True, "--show-only": True, "-s": True,
                  "--skip-tests": False, "--validate": False, "--kube-version": True}  # fmt: skip
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


def atomic_word(state: dict[str, Any]) -> str:
    return "rollback-on-failure" if helm4(state) else "atomic"


def now() -> str:
    return datetime.now(UTC).isoformat()


# -- argument parsing (pflag rules: --flag value, --flag=value, -f value) --------------
def parse(
    command: str,
    args: list[str],
    flags: dict[str, bool],
    nargs: tuple[int, int],
    usage: str,
    state: dict[str, Any] | None = None,
) -> tuple[list[str], dict[str, list[str]]]:
    known = {**GLOBAL_FLAGS, **flags}
    if state is not None and helm4(state):
        known.update(HELM4_GLOBAL_FLAGS)
    # flags with an optional value (pflag NoOptDefVal): never take the next argument
    optional: dict[str, str] = {}
    if "--dry-run" in flags:
        optional["--dry-run"] = "client"
    if "--wait" in flags and state is not None and helm4(state):
        optional["--wait"] = "watcher"
    positional: list[str] = []
    values: dict[str, list[str]] = {}
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        name, eq, inline = arg.partition("=")
        if not name.startswith("--") and len(name) > 2:  # -nNS: shorthand with its value
            name, inline, eq = name[:2], arg[2:].removeprefix("="), "="
        if name not in known:
            if name.startswith("--"):
                raise HelmError(f"unknown flag: {name}")
            raise HelmError(f"unknown shorthand flag: '{name[1]}' in {arg}")
        if name in optional:
            value = inline if eq else optional[name]
        elif known[name]:
            if eq:
                value = inline
            elif index < len(args):
                value = args[index]
                index += 1
            else:
                raise HelmError(f"flag needs an argument: {arg}")
        else:
            value = inline if eq else "true"
            if value not in ("true", "false", "1", "0", "t", "f", "TRUE", "FALSE"):
                raise HelmError(
                    f'invalid argument "{value}" for "{name}" flag: strconv.ParseBool: '
                    f'parsing "{value}": invalid syntax'
                )
        if name in SLICE_FLAGS:
            try:
                items = next(csv.reader([value])) if value else []
            except csv.Error as exc:
                raise HelmError(f'invalid argument "{value}" for "{name}" flag: {exc}') from None
            values.setdefault(name, []).extend(items)
        else:
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


def flag_on(values: dict[str, list[str]], name: str) -> bool:
    return last(values, name, default="false") in ("true", "1", "t", "TRUE")


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


def wait_strategy(state: dict[str, Any], values: dict[str, list[str]]) -> str | None:
    """Helm 4's --wait value (validated like pkg/cmd/flags.go); Helm 3: a boolean."""
    value = last(values, "--wait")
    if not helm4(state) or value is None:
        return value
    if value == "true":
        return "watcher"
    if value == "false":
        return "hookOnly"
    if value not in WAIT_STRATEGIES:
        raise HelmError(
            f'invalid argument "{value}" for "--wait" flag: invalid wait input "{value}". '
            "Valid inputs are watcher, hookOnly, and legacy"
        )
    return value


def dry_run(values: dict[str, list[str]]) -> str | None:
    value = last(values, "--dry-run")
    if value is None or value in ("none", "false"):
        return None
    if value not in DRY_RUN:
        raise HelmError(
            f"Invalid dry-run flag. Flag must one of the following: false, true, none, "
            f"client, server. Received: {value}"
        )
    return "client" if value == "true" else value


def reach(state: dict[str, Any]) -> None:
    if state["cluster"] == "unreachable":
        raise HelmError(UNREACHABLE.format(K="k" if helm4(state) else "K"))


def debugging(values: dict[str, list[str]]) -> bool:
    """--debug, or HELM_DEBUG in the environment (pkg/cli/environment.go reads both)."""
    if "--debug" in values:
        return flag_on(values, "--debug")
    return os.environ.get("HELM_DEBUG", "").lower() in ("1", "t", "true")


def manifest_objects(manifest: str) -> list[tuple[str, str, str]]:
    """(apiVersion, kind, name) of each document of a rendered manifest."""
    found = []
    for document in re.split(r"^---\s*$", manifest, flags=re.M):
        api = re.search(r"^apiVersion:\s*(\S+)", document, re.M)
        kind = re.search(r"^kind:\s*(\S+)", document, re.M)
        name = re.search(r"^metadata:\s*\n(?:\s+.*\n)*?\s+name:\s*(\S+)", document, re.M)
        if api and kind:
            found.append((api.group(1), kind.group(1), name.group(1) if name else ""))
    return found


def build(state: dict[str, Any], manifest: str, ns: str) -> None:
    """KubeClient.Build: every object needs a kind the API server serves. The resource
    builder's message (cli-runtime resource/mapper.go) for the first one that has none."""
    for api_version, kind, name in manifest_objects(manifest):
        if f"{api_version}/{kind}" in state["unserved"]:
            raise HelmError(
                f'resource mapping not found for name: "{name}" namespace: "{ns}" from "": '
                f'no matches for kind "{kind}" in version "{api_version}"\n'
                "ensure CRDs are installed first"
            )


def wait_error(
    state: dict[str, Any], values: dict[str, list[str]], manifest: str, name: str, ns: str,
    cause: str, *, deleting: bool = False,
) -> str:  # fmt: skip
    """What a failed or cancelled wait returns. Helm 3 and Helm 4's legacy waiter: the
    context's error. Helm 4's watcher (pkg/kube/statuswait.go): one line per resource
    it gave up on, then the context's error, joined by newlines (errors.Join). The
    resources are the manifest's workloads, or a Deployment named after the release
    when it has none (the fake's charts are ConfigMaps, which kstatus finds ready)."""
    strategy = wait_strategy(state, values)
    if not helm4(state) or strategy in ("legacy", None, "hookOnly"):
        return cause
    workloads = [(kind, n) for _, kind, n in manifest_objects(manifest) if kind in WORKLOADS]
    lines = []
    for kind, resource in workloads or [("Deployment", name)]:
        if deleting:
            lines.append(f"resource {kind}/{ns}/{resource} still exists. status: Terminating, "
                         "message: Resource scheduled for deletion")  # fmt: skip
        else:
            lines.append(f"resource {kind}/{ns}/{resource} not ready. status: InProgress, "
                         "message: Available: 0/1")  # fmt: skip
    return "\n".join([*lines, cause])


# -- subcommands -----------------------------------------------------------------------
def cmd_version(state: dict[str, Any], _path: Path, args: list[str]) -> None:
    flags = {"--template": True, "--short": False}
    if not helm4(state):  # a hidden no-op in Helm 3, gone in Helm 4
        flags.update({"--client": False, "-c": False})
    _, values = parse("version", args, flags, (0, 0), "helm version [flags]", state)
    info = {"Version": state["version"], "GitCommit": "c309b6f0ff63856811846ce18f3bdc93d2b4d54b",
            "GitTreeState": "clean", "GoVersion": "go1.22.7"}  # fmt: skip
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
        "upgrade", args, flags, (2, 2), "helm upgrade [RELEASE] [CHART] [flags]", state
    )
    catch_cancellation()
    if helm4(state) and "--atomic" in values:
        print(
            "Flag --atomic has been deprecated, use --rollback-on-failure instead", file=sys.stderr
        )
    timeout = duration(values)
    wait_strategy(state, values)
    simulate = dry_run(values)
    fmt = output_format(values)
    ns = namespace_of(values)
    atomic = flag_on(values, "--atomic") or flag_on(values, "--rollback-on-failure")
    history_max = int(last(values, "--history-max", default="10") or "10")
    if simulate != "client":
        reach(state)
    debug(values, f"upgrade.go:153: [debug] preparing upgrade for {name}")
    key = f"{ns}/{name}"
    history = state["releases"].get(key, []) if simulate != "client" else []
    installing = not history or history[-1]["status"] == "uninstalled"
    if installing and "--install" not in values and "-i" not in values:
        raise HelmError(f'UPGRADE FAILED: "{name}" has no deployed releases')
    prefix = "" if installing else "UPGRADE FAILED: "
    if installing and fmt == "table":
        print(f'Release "{name}" does not exist. Installing it now.')
    chart = load_chart(chart_arg)
    user_values = load_values(values)
    if not installing:
        current = history[-1]
        if current["status"] in PENDING:
            raise HelmError(
                "UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress"
            )
        deployed = [r for r in history if r["status"] == "deployed"]
        if not deployed and current["status"] not in ("failed", "superseded"):
            raise HelmError(f'UPGRADE FAILED: "{name}" has no deployed releases')
        base = deployed[-1] if deployed else current
        # pkg/action/upgrade.go reuseValues: no new values and no reset -> the old ones
        if (
            not user_values
            and not flag_on(values, "--reset-values")
            and not flag_on(values, "--reuse-values")
        ):
            user_values = base.get("config", {})
        elif flag_on(values, "--reuse-values"):
            user_values = {**base.get("config", {}), **user_values}
    revision = history[-1]["revision"] + 1 if history else 1
    manifest = render(chart, user_values, name, ns, revision, installing, prefix)
    if simulate != "client":
        # KubeClient.Build of the new manifest (install.go; upgrade.go validateManifest),
        # then, for an upgrade, of the deployed release's stored one (performUpgrade):
        # both before a revision is stored, and for --dry-run=server too
        try:
            build(state, manifest, ns)
        except HelmError as exc:
            what = "unable to build kubernetes objects from release manifest: "
            raise HelmError(f"{prefix}{what if installing else ''}{exc}") from None
        if not installing:
            try:
                build(state, base.get("manifest", ""), ns)
            except HelmError as exc:
                raise HelmError(
                    f"UPGRADE FAILED: unable to build kubernetes objects from current release "
                    f"manifest: {exc}"
                ) from None
    if simulate is not None:
        phase = "install" if installing else "upgrade"
        print(f"NAME: {name}\nNAMESPACE: {ns}\nSTATUS: pending-{phase}")
        print(f"REVISION: {revision}\nHOOKS:\nMANIFEST:\n{manifest}")
        return
    if installing:
        if "--create-namespace" in values:
            # Helm creates unconditionally and only tolerates AlreadyExists, but the API
            # server checks RBAC first (helm/helm#32511).
            if state["rbac"] == "namespaced":
                raise HelmError(CREATE_NAMESPACE_FORBIDDEN)
            if ns not in state["namespaces"]:
                state["namespaces"].append(ns)
        elif ns not in state["namespaces"]:
            raise HelmError(f'create: failed to create: namespaces "{ns}" not found')
    entry = {
        "revision": revision, "updated": now(),
        "status": "pending-install" if installing else "pending-upgrade",
        "chart": f"{chart['name']}-{chart['version']}", "app_version": chart["appVersion"],
        "description": "Initial install underway" if installing else "Preparing upgrade",
        "config": user_values, "notes": chart["notes"], "manifest": manifest,
    }  # fmt: skip
    prune(history, history_max)
    history.append(entry)
    state["releases"][key] = history
    save_state(path, state)
    mode = state["inject"].get("upgrade")
    if mode == "hang":
        debug(values, "wait.go:48: [debug] beginning wait for 3 resources")
        while not _CANCELLED:  # resources never get ready; until a signal or a kill
            time.sleep(0.05)
        print(f"Release {name} has been cancelled.", flush=True)
        cause = wait_error(state, values, manifest, name, ns, "context canceled")
        fail_upgrade(state, path, key, entry, installing, atomic, name, cause)
        return
    if mode == "timeout":
        for second in range(0, 600, 2):
            debug(values, f"wait.go:66: [debug] Deployment is not ready: {ns}/wrktalk. "
                  f"0 out of 1 expected pods are ready ({second}s, timeout {timeout})")  # fmt: skip
        cause = wait_error(state, values, manifest, name, ns, "context deadline exceeded")
        fail_upgrade(state, path, key, entry, installing, atomic, name, cause)
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
    save_state(path, state)
    if fmt != "table":  # the whole release (output.Format.Write): values and manifest
        release = release_json(state, name, ns, history, entry)
        print(json.dumps(release) if fmt == "json" else yaml.safe_dump(release))
        return
    if not installing:
        print(f'Release "{name}" has been upgraded. Happy Helming!')
    print_status(name, ns, entry, debugging(values))


_CANCELLED: list[bool] = []


def catch_cancellation() -> None:
    """Like Helm's signal.Notify before it runs the action: the first SIGTERM/SIGINT
    cancels the operation's context; later ones are swallowed."""

    def handler(_signum: int, _frame: object) -> None:
        _CANCELLED.append(True)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def wait_for_resources(state: dict[str, Any]) -> None:
    """Helm waiting on the cluster after a cancellation (its own rollback or deletion)."""
    seconds = state["inject"].get("cancel_wait")
    deadline = None if seconds is None else time.monotonic() + float(seconds)
    while deadline is None or time.monotonic() < deadline:
        time.sleep(0.1)


def fail_upgrade(
    state: dict[str, Any], path: Path, key: str, entry: dict[str, Any], installing: bool,
    atomic: bool, name: str, cause: str = "context deadline exceeded",
) -> None:  # fmt: skip
    """What Helm does when the wait fails or is cancelled (pkg/action install.go and
    upgrade.go, failRelease)."""
    history = state["releases"][key]
    word = atomic_word(state)
    if installing:
        entry.update(status="failed", description=f'Release "{name}" failed: {cause}')
        if atomic:  # uninstalled, history and all (action.Uninstall, KeepHistory false)
            entry.update(
                status="uninstalling", description="Deletion in progress (or silently failed)"
            )
            save_state(path, state)
            if helm4(state) and cause.endswith("context canceled"):
                # Helm 4's uninstall waits for the deletion (pods terminating), Helm 3's
                # does not
                wait_for_resources(state)
            del state["releases"][key]
            save_state(path, state)
            raise HelmError(
                f"release {name} failed, and has been uninstalled due to {word} being set: {cause}"
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
    pending = record_rollback(history, target, status="pending-rollback")
    save_state(path, state)
    if cause.endswith("context canceled"):
        wait_for_resources(state)  # the rollback waits too (rollin.Wait / WaitStrategy)
    finish_rollback(history, pending)
    save_state(path, state)
    raise HelmError(
        f"UPGRADE FAILED: release {name} failed, and has been rolled back due to {word} "
        f"being set: {cause}"
    )


def record_rollback(
    history: list[dict[str, Any]], target: dict[str, Any], status: str = "deployed"
) -> dict[str, Any]:
    entry = {**target, "revision": history[-1]["revision"] + 1, "updated": now(),
             "status": status, "description": f"Rollback to {target['revision']}"}  # fmt: skip
    history.append(entry)
    if status == "deployed":
        finish_rollback(history, entry)
    return entry


def finish_rollback(history: list[dict[str, Any]], entry: dict[str, Any]) -> None:
    for older in history:
        if older is not entry and older["status"] == "deployed":
            older["status"] = "superseded"
    entry["status"] = "deployed"


def prune(history: list[dict[str, Any]], history_max: int) -> None:
    """storage.Create → removeLeastRecent(max - 1) before a new revision is stored:
    the oldest go first, never the last deployed one."""
    if history_max <= 0:
        return
    keep = history_max - 1
    deployed = [r for r in history if r["status"] == "deployed"]
    last_deployed = deployed[-1]["revision"] if deployed else None
    doomed = []
    for revision in history:
        if len(history) - len(doomed) <= keep:
            break
        if revision["revision"] != last_deployed:
            doomed.append(revision)
    for revision in doomed:
        history.remove(revision)


def cmd_rollback(state: dict[str, Any], path: Path, args: list[str]) -> None:
    flags = HELM4_ROLLBACK_FLAGS if helm4(state) else ROLLBACK_FLAGS
    positional, values = parse(
        "rollback", args, flags, (1, 2), "helm rollback <RELEASE> [REVISION] [flags]", state
    )
    if helm4(state) and "--force" in values:
        print("Flag --force has been deprecated, use --force-replace instead", file=sys.stderr)
    duration(values)
    wait_strategy(state, values)
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
    current = history[-1]
    prune(history, int(last(values, "--history-max", default="10") or "10"))
    # pkg/action/rollback.go: the pending-rollback revision is stored first, then the
    # current and the target manifests are built; a kind the API server no longer
    # serves fails the rollback there and leaves that revision pending
    pending = record_rollback(history, target, status="pending-rollback")
    save_state(path, state)
    for which, manifest in (("current", current), ("new", target)):
        try:
            build(state, manifest.get("manifest", ""), ns)
        except HelmError as exc:
            raise HelmError(
                f"unable to build kubernetes objects from {which} release manifest: {exc}"
            ) from None
    if state["inject"].get("rollback") == "timeout":
        cause = wait_error(state, values, target.get("manifest", ""), name, ns,
                           "context deadline exceeded")  # fmt: skip
        pending.update(status="failed", description=f'Release "{name}" failed: {cause}')
        save_state(path, state)
        raise HelmError(f"release {name} failed: {cause}")
    finish_rollback(history, pending)
    save_state(path, state)
    print("Rollback was a success! Happy Helming!")


def cmd_status(state: dict[str, Any], _path: Path, args: list[str]) -> None:
    (name,), values = parse(
        "status",
        args,
        {**OUTPUT_FLAGS, "--revision": True, "--show-resources": False},
        (1, 1),
        "helm status RELEASE_NAME [flags]",
        state,
    )
    fmt = output_format(values)
    ns = namespace_of(values)
    reach(state)
    history = state["releases"].get(f"{ns}/{name}")
    if not history:
        raise HelmError("release: not found")
    entry = history[-1]
    if helm4(state) or "--show-resources" in values:
        # pkg/action/status.go: builds the stored manifest's objects and gets them from
        # the API server, which must still serve every kind the manifest names
        build(state, entry.get("manifest", ""), ns)
    if fmt == "table":
        print_status(name, ns, entry)
        return
    release = release_json(state, name, ns, history, entry)
    print(json.dumps(release) if fmt == "json" else yaml.safe_dump(release))


def cmd_history(state: dict[str, Any], _path: Path, args: list[str]) -> None:
    (name,), values = parse(
        "history",
        args,
        {**OUTPUT_FLAGS, "--max": True},
        (1, 1),
        "helm history RELEASE_NAME [flags]",
        state,
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
        (0, 1), "helm list [flags]", state,
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
    flags = {"--wait": False, "--timeout": True, "--keep-history": False, "--no-hooks": False,
             "--dry-run": False, "--cascade": True}  # fmt: skip
    (name,), values = parse(
        "uninstall", args, flags, (1, 1), "helm uninstall RELEASE_NAME [...] [flags]", state
    )
    duration(values)
    wait_strategy(state, values)
    ns = namespace_of(values)
    reach(state)
    key = f"{ns}/{name}"
    if key not in state["releases"]:
        raise HelmError(f"uninstall: Release not loaded: {name}: release: not found")
    latest = state["releases"][key][-1]
    if latest["status"] == "uninstalled":
        raise HelmError(f'the release named "{name}" is already deleted')
    # pkg/action/uninstall.go: recorded before anything is deleted; an interrupted
    # uninstall leaves it, and a second uninstall starts over from here
    latest.update(status="uninstalling", description="Deletion in progress (or silently failed)",
                  deleted=now())  # fmt: skip
    save_state(path, state)
    mode = state["inject"].get("uninstall")
    try:  # deleteRelease builds the stored manifest's objects before deleting them
        build(state, latest.get("manifest", ""), ns)
    except HelmError:
        mode = "before-purge"
    if mode == "before-purge":  # a delete failed; the cause goes to the debug log only
        raise HelmError(f"failed to delete release: {name}")
    errors = []
    if mode == "after-purge" and (helm4(state) or flag_on(values, "--wait")):
        # the wait for the deletion gave up (Helm 3 waits only when told to)
        errors.append(wait_error(state, values, latest.get("manifest", ""), name, ns,
                                 "context deadline exceeded", deleting=True))  # fmt: skip
    if "--keep-history" in values:
        latest.update(status="uninstalled", description="Uninstallation complete")
    else:
        del state["releases"][key]
    save_state(path, state)
    if errors:
        raise HelmError(
            f"uninstallation completed with {len(errors)} error(s): {'; '.join(errors)}"
        )
    print(f'release "{name}" uninstalled')


def cmd_lint(state: dict[str, Any], _path: Path, args: list[str]) -> None:
    positional, values = parse("lint", args, LINT_FLAGS, (0, 99), "helm lint PATH [flags]", state)
    import helm_python

    paths = positional or ["."]
    user_values = load_values(values)
    strict = flag_on(values, "--strict")
    failed = 0
    for chart_path in paths:
        print(f"==> Linting {chart_path}")
        report = helm_python.lint(chart_path, user_values, strict=strict,
                                  namespace=namespace_of(values))  # fmt: skip
        names = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}
        worst = 0
        for message in report["messages"]:
            severity = int(message["severity"])
            worst = max(worst, severity)
            if severity == 1 and flag_on(values, "--quiet"):
                continue
            text = str(message["error"]).rstrip("\n")
            print(f"[{names.get(severity, 'UNKNOWN')}] {message['path']}: {text}")
        if worst >= 3 or (strict and worst >= 2) or report.get("errors"):
            failed += 1
        print()
    if failed:
        raise HelmError(f"{len(paths)} chart(s) linted, {failed} chart(s) failed")
    print(f"{len(paths)} chart(s) linted, 0 chart(s) failed")


def cmd_template(state: dict[str, Any], _path: Path, args: list[str]) -> None:
    positional, values = parse(
        "template", args, TEMPLATE_FLAGS, (1, 2), "helm template [NAME] [CHART] [flags]", state
    )
    name, chart_arg = positional if len(positional) == 2 else ["release-name", positional[0]]
    if "--validate" in values:
        reach(state)
    chart = load_chart(chart_arg)
    print(render(chart, load_values(values), name, namespace_of(values), 1, True, ""))


COMMANDS = {
    "version": cmd_version, "upgrade": cmd_upgrade, "rollback": cmd_rollback,
    "status": cmd_status, "history": cmd_history, "hist": cmd_history, "list": cmd_list,
    "ls": cmd_list, "uninstall": cmd_uninstall, "delete": cmd_uninstall, "lint": cmd_lint,
    "template": cmd_template,
}  # fmt: skip


# -- helpers ---------------------------------------------------------------------------
def load_chart(arg: str) -> dict[str, Any]:
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
            "appVersion": meta.get("appVersion", ""), "notes": notes, "path": arg}  # fmt: skip


def load_values(values: dict[str, list[str]]) -> dict[str, Any]:
    """-f files then --set expressions, merged like Helm's values.Options (Helm's own parser)."""
    import helm_python

    config: dict[str, Any] = {}
    for name in values.get("--values", []) + values.get("-f", []):
        try:
            text = Path(name).read_text()
        except FileNotFoundError:
            raise HelmError(f"open {name}: no such file or directory") from None
        try:
            loaded = helm_python.values_from_yaml(text) or {}
        except helm_python.HelmError as exc:
            raise HelmError(f"failed to parse {name}: {exc}") from None
        config = merge(config, loaded)
    parsers = {"--set": helm_python.parse_set_string,
               "--set-string": helm_python.parse_set_string_values}  # fmt: skip
    for flag, parser in parsers.items():
        for expression in values.get(flag, []):
            try:
                config = merge(config, parser(expression))
            except helm_python.HelmError as exc:
                raise HelmError(f"failed parsing {flag} data: {exc}") from None
    return config


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def render(
    chart: dict[str, Any], user_values: dict[str, Any], name: str, ns: str, revision: int,
    installing: bool, prefix: str,
) -> str:  # fmt: skip
    """The manifest, rendered by Helm's engine with the chart's schema applied; a chart
    or values error is Helm's own message."""
    import helm_python

    try:
        with helm_python.Chart.load(chart["path"]) as loaded:
            rendered = loaded.render(user_values, name=name, namespace=ns, revision=revision,
                                     is_install=installing, is_upgrade=not installing)  # fmt: skip
    except helm_python.HelmError as exc:
        raise HelmError(prefix + str(exc).rstrip("\n")) from None
    return "".join(
        f"---\n# Source: {source}\n{text}"
        for source, text in sorted(rendered.items())
        if text.strip() and not source.endswith("NOTES.txt")
    )


def release_json(
    state: dict[str, Any], name: str, ns: str, history: list[dict[str, Any]],
    entry: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """The release as ``-o json|yaml`` prints it (chart stripped): values and manifest
    included. ``info.deleted``: Helm 3's time type writes an unset time as ``""``, Helm 4
    leaves it out (``omitzero``); both leave out empty notes."""
    info: dict[str, Any] = {"first_deployed": history[0]["updated"],
                            "last_deployed": entry["updated"]}  # fmt: skip
    if entry.get("deleted") or not helm4(state):
        info["deleted"] = entry.get("deleted", "")
    info.update(description=entry["description"], status=entry["status"])
    if entry.get("notes"):
        info["notes"] = entry["notes"]
    if helm4(state):
        info["resources"] = {"v1/Service": [], "apps/v1/Deployment": []}
    return {
        "name": name, "info": info, "config": entry.get("config", {}),
        "manifest": entry.get("manifest", ""), "version": entry["revision"],
        "namespace": ns,
    }  # fmt: skip


def print_status(name: str, ns: str, entry: dict[str, Any], debug: bool = False) -> None:
    """The table of pkg/cmd/status.go's statusPrinter; with --debug it also prints the
    values and the manifest, as Helm does after an install or upgrade."""
    print(f"NAME: {name}")
    print(f"LAST DEPLOYED: {time.strftime('%a %b %d %H:%M:%S %Y')}")
    print(f"NAMESPACE: {ns}")
    print(f"STATUS: {entry['status']}")
    print(f"REVISION: {entry['revision']}")
    print("TEST SUITE: None")
    if debug:  # (Helm also prints COMPUTED VALUES, the chart's defaults merged in)
        print("USER-SUPPLIED VALUES:")
        print(yaml.safe_dump(entry.get("config") or {}))
        print("HOOKS:")
        print(f"MANIFEST:\n{entry.get('manifest', '')}")
    if entry.get("notes"):
        print("NOTES:")
        print(entry["notes"].strip())


def debug(values: dict[str, list[str]], line: str) -> None:
    if debugging(values):
        print(line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
