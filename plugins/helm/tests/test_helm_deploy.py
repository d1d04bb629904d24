"""Deploys against the fake helm: commands, Helm versions, stuck releases, failures."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from wrktalk_agent.interfaces import DeployError
from wrktalk_agent.process import TAIL_BYTES
from wrktalk_agent_helm import HelmDeployer
from wrktalk_agent_helm.output import MAX_OUTPUT_LINES

from .conftest import CONFIGMAP, FakeHelm, RequestFactory

pytestmark = pytest.mark.timeout(60)
MakeDeployer = Callable[..., HelmDeployer]


def upgrade_argv(
    fake: FakeHelm, chart: Path, values: Path | None, version: str, *, timeout: str = "10m"
) -> list[str]:
    return [
        "upgrade", "--install", "wrktalk", str(chart),
        "--namespace", "wrktalk", "--create-namespace",
        *(["-f", str(values)] if values else []), "--reset-values",
        fake.wait, "--timeout", timeout, "--history-max", "10", fake.atomic,
        "--description", f"wrktalk-agent release {version}",
    ]  # fmt: skip


VERSION = ["version", "--template", "{{.Version}}"]
# the release's state, from Helm's storage only (never `helm status`)
LATEST = ["history", "wrktalk", "--max", "1", "--namespace", "wrktalk", "--output", "json"]
HISTORY = ["history", "wrktalk", "--max", "1000000", "--namespace", "wrktalk", "--output", "json"]


async def test_first_install(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    request = make_request("1.0.0")
    outcome = await make_deployer().deploy(request)

    chart = request.workdir / "wrktalk"
    assert fake_helm.calls() == [
        VERSION,
        LATEST,  # "release: not found": a first install, nothing to recover
        upgrade_argv(fake_helm, chart, request.values_file, "1.0.0"),
        HISTORY,
    ]
    [revision] = fake_helm.revisions()
    assert revision["status"] == "deployed"
    assert revision["description"] == "wrktalk-agent release 1.0.0"
    assert "wrktalk" in fake_helm.state()["namespaces"]  # --create-namespace did it
    assert outcome.details["revision"] == 1
    assert outcome.details["helm_version"] == fake_helm.version
    assert 'Release "wrktalk" does not exist. Installing it now.' in outcome.output
    assert "STATUS: deployed" in outcome.output


async def test_upgrade_supersedes_and_asks_helm_version_once(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    deployer = make_deployer()
    await deployer.deploy(make_request("1.0.0"))
    outcome = await deployer.deploy(make_request("1.1.0"))

    assert [r["status"] for r in fake_helm.revisions()] == ["superseded", "deployed"]
    assert fake_helm.revisions()[1]["description"] == "wrktalk-agent release 1.1.0"
    assert outcome.details["revision"] == 2
    assert 'Release "wrktalk" has been upgraded. Happy Helming!' in outcome.output
    assert fake_helm.calls().count(VERSION) == 1


@pytest.mark.parametrize("layout", ["root", "subdir", "tgz"])
async def test_chart_layouts(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory, layout: str
) -> None:
    request = make_request("1.0.0", layout=layout)  # type: ignore[arg-type]
    await make_deployer().deploy(request)
    chart = {
        "root": request.workdir,
        "subdir": request.workdir / "wrktalk",
        "tgz": request.workdir / "wrktalk-2.3.0.tgz",
    }[layout]
    assert fake_helm.calls()[2][3] == str(chart)
    assert fake_helm.revisions()[0]["chart"] == "wrktalk-2.3.0"


async def test_exact_argv_with_connection_flags_extra_args_and_no_values(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    deployer = make_deployer(
        release_name="wt",
        namespace="apps",
        timeout="90s",
        kube_context="onprem",
        kubeconfig="/etc/kube/config",
        extra_args=["--set-string", "image.registry=registry.local"],
        history_max=3,
    )
    request = make_request("2.0.0-rc.1", values=None)
    await deployer.deploy(request)

    connection = ["--kube-context", "onprem", "--kubeconfig", "/etc/kube/config"]
    assert fake_helm.calls() == [
        VERSION,  # never talks to the cluster: no connection flags
        ["history", "wt", "--max", "1", "--namespace", "apps", "--output", "json", *connection],
        [
            "upgrade", "--install", "wt", str(request.workdir / "wrktalk"),
            "--namespace", "apps", "--create-namespace", "--reset-values",
            fake_helm.wait, "--timeout", "90s", "--history-max", "3", fake_helm.atomic,
            "--description", "wrktalk-agent release 2.0.0-rc.1",
            *connection, "--set-string", "image.registry=registry.local",
        ],
        ["history", "wt", "--max", "1000000", "--namespace", "apps", "--output", "json",
         *connection],
    ]  # fmt: skip
    assert fake_helm.revisions("wt", "apps")[0]["status"] == "deployed"


async def test_namespaced_rbac_needs_create_namespace_off(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    # the agent may not create namespaces (deploy/k8s/rbac.yaml); the namespace exists
    fake_helm.configure(rbac="namespaced", namespaces=["default", "wrktalk"])
    with pytest.raises(DeployError, match='cannot create resource "namespaces"'):
        await make_deployer().deploy(make_request("1.0.0"))

    request = make_request("1.0.0")
    await make_deployer(create_namespace=False).deploy(request)
    assert fake_helm.calls()[-2] == [
        "upgrade", "--install", "wrktalk", str(request.workdir / "wrktalk"),
        "--namespace", "wrktalk", "-f", str(request.values_file), "--reset-values",
        fake_helm.wait, "--timeout", "10m", "--history-max", "10", fake_helm.atomic,
        "--description", "wrktalk-agent release 1.0.0",
    ]  # fmt: skip
    assert fake_helm.revisions()[0]["status"] == "deployed"


async def test_helm_4_uses_rollback_on_failure(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    fake_helm.configure(version="v4.0.1")
    request = make_request("1.0.0")
    outcome = await make_deployer().deploy(request)
    upgrade = fake_helm.calls()[2]
    assert upgrade == upgrade_argv(
        fake_helm, request.workdir / "wrktalk", request.values_file, "1.0.0"
    )
    assert "--rollback-on-failure" in upgrade
    assert outcome.details["helm_version"] == "v4.0.1"
    # the deprecated flag would have worked on Helm 4 but warned in the task output
    assert "deprecated" not in outcome.output


async def test_helm_3_would_reject_the_helm_4_flag(fake_helm: FakeHelm, tmp_path: Path) -> None:
    """The fake is strict like Helm 3, so choosing the flag by version is really tested."""
    fake_helm.configure(version="v3.16.4")
    process = await asyncio.create_subprocess_exec(
        "helm", "upgrade", "--install", "x", str(tmp_path), "--rollback-on-failure",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await process.communicate()
    assert process.returncode == 1
    assert err.decode().strip() == "Error: unknown flag: --rollback-on-failure"


@pytest.mark.parametrize("version", ["v2.17.0", "v5.0.0", "garbage"])
async def test_unsupported_helm_version(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory, version: str
) -> None:
    fake_helm.configure(version=version)
    with pytest.raises(DeployError, match="needs Helm 3 or 4") as caught:
        await make_deployer().deploy(make_request("1.0.0"))
    assert caught.value.system_changed is False
    assert fake_helm.calls() == [VERSION]


async def test_pending_upgrade_is_rolled_back_before_deploying(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    fake_helm.seed(
        [
            ("superseded", "wrktalk-agent release 1.0.0"),
            ("deployed", "wrktalk-agent release 1.1.0"),
            ("pending-upgrade", "Preparing upgrade"),  # a helm killed mid-upgrade
        ]
    )
    request = make_request("1.2.0")
    outcome = await make_deployer().deploy(request)

    rollback = ["rollback", "wrktalk", "2", "--namespace", "wrktalk", fake_helm.wait,
                "--timeout", "10m", "--history-max", "10"]  # fmt: skip
    assert fake_helm.calls() == [
        VERSION,
        LATEST,
        HISTORY,
        rollback,
        upgrade_argv(fake_helm, request.workdir / "wrktalk", request.values_file, "1.2.0"),
        HISTORY,
    ]
    revisions = fake_helm.revisions()
    assert [(r["revision"], r["status"]) for r in revisions][-2:] == [
        (4, "superseded"),
        (5, "deployed"),
    ]
    assert revisions[3]["description"] == "Rollback to 2"
    assert any("stuck in pending-upgrade (revision 3)" in line for line in make_request.reports)
    assert outcome.details["recovered"] == (
        "rolled back revision 3 (pending-upgrade) to revision 2, the last deployed one"
    )


async def test_pending_install_without_deployed_revision_is_uninstalled(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    fake_helm.seed([("pending-install", "Initial install underway")])
    request = make_request("1.0.0")
    await make_deployer().deploy(request)

    uninstall = [
        "uninstall",
        "wrktalk",
        "--namespace",
        "wrktalk",
        fake_helm.wait,
        "--timeout",
        "10m",
    ]
    assert fake_helm.calls()[3] == uninstall
    assert [(r["revision"], r["status"]) for r in fake_helm.revisions()] == [(1, "deployed")]
    assert any("uninstalled revision 1 (pending-install)" in line for line in make_request.reports)


async def test_pending_upgrade_without_any_deployed_revision_needs_an_operator(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    fake_helm.seed([("failed", "Release failed"), ("pending-upgrade", "Preparing upgrade")])
    # (a superseded revision would be rolled back to, as Helm's own atomic rollback does)
    with pytest.raises(DeployError, match="no deployed revision to return to") as caught:
        await make_deployer().deploy(make_request("1.0.0"))
    assert caught.value.system_changed is False
    assert "helm rollback wrktalk REVISION -n wrktalk" in str(caught.value)
    assert [c[0] for c in fake_helm.calls()] == ["version", "history", "history"]


async def test_timeout_fails_with_helms_error_and_output_tail(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    deployer = make_deployer()
    await deployer.deploy(make_request("1.0.0"))
    fake_helm.configure(inject={"upgrade": "timeout"})

    with pytest.raises(DeployError) as caught:
        await deployer.deploy(make_request("1.1.0"))

    error = caught.value
    # Helm 4's error spans lines (one per resource, then the cause): joined with "; "
    assert str(error) == (
        "helm upgrade to release 1.1.0 failed: Error: UPGRADE FAILED: release wrktalk failed, "
        f"and has been rolled back due to {fake_helm.atomic_word} being set: "
        + fake_helm.wait_error("context deadline exceeded", joined="; ")
    )
    assert error.system_changed is True
    assert error.output.endswith("context deadline exceeded")
    # what --atomic left behind, as Helm does it
    cause = fake_helm.wait_error("context deadline exceeded")
    assert [(r["status"], r["description"]) for r in fake_helm.revisions()] == [
        ("superseded", "wrktalk-agent release 1.0.0"),
        ("failed", f'Upgrade "wrktalk" failed: {cause}'),
        ("deployed", "Rollback to 1"),
    ]


async def test_long_output_is_cut_to_a_bounded_tail(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    request = make_request("1.0.0")
    notes = [f"note {n:03}: how to reach WrkTalk, at some length" for n in range(400)]
    (request.workdir / "wrktalk" / "templates" / "NOTES.txt").write_text("\n".join(notes))
    outcome = await make_deployer().deploy(request)  # Helm prints the NOTES after it

    output = outcome.output
    assert len(output.encode()) <= TAIL_BYTES
    assert len(output.splitlines()) <= MAX_OUTPUT_LINES
    assert "does not exist. Installing it now" not in output  # the head was dropped ...
    assert output.splitlines()[-1] == notes[-1]  # ... the end is kept


async def test_a_multi_line_helm_error_keeps_its_cause(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    workloads = "".join(
        f"---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: worker-{n:02}\n"
        "spec: {}\n"
        for n in range(60)
    )
    deployer = make_deployer()
    await deployer.deploy(make_request("1.0.0"))
    fake_helm.configure(inject={"upgrade": "timeout"})
    with pytest.raises(DeployError) as caught:
        await deployer.deploy(make_request("1.1.0", template=CONFIGMAP + workloads))

    message = str(caught.value)
    assert len(message) <= 1100
    assert message.endswith("context deadline exceeded")  # Helm 4's cause comes last
    if fake_helm.major == 4:  # 60 resources, one line each: cut in the middle
        assert "resource Deployment/wrktalk/worker-00 not ready" in message
        assert " ... " in message
        assert "worker-30" not in message


async def test_first_install_timeout_is_uninstalled_by_atomic(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    fake_helm.configure(inject={"upgrade": "timeout"})
    with pytest.raises(DeployError, match=r"has been uninstalled due to .* being set"):
        await make_deployer().deploy(make_request("1.0.0"))
    assert fake_helm.revisions() == []


async def test_values_never_reach_output_or_reports(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    # the fake stores the values like Helm, and `helm status -o json` prints them back
    fake_helm.seed([("deployed", "wrktalk-agent release 1.0.0"), ("pending-upgrade", "x")])
    deployer = make_deployer()
    request = make_request("1.1.0")
    outcome = await deployer.deploy(request)
    fake_helm.configure(inject={"upgrade": "timeout"})
    with pytest.raises(DeployError) as caught:
        await deployer.deploy(make_request("1.2.0"))

    assert fake_helm.revisions()[-3]["config"]["dbPassword"] == "s3cr3t-do-not-log"
    visible = [
        outcome.output,
        repr(outcome.details),
        *make_request.reports,
        str(caught.value),
        caught.value.output,
    ]
    assert not any("s3cr3t" in text for text in visible)


async def test_missing_chart_changes_nothing(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    with pytest.raises(DeployError, match="no Helm chart found in the release") as caught:
        await make_deployer().deploy(make_request("1.0.0", layout="none"))
    assert caught.value.system_changed is False
    assert fake_helm.calls() == []


async def test_two_charts_are_ambiguous(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    request = make_request("1.0.0", layout="subdir")
    (request.workdir / "other").mkdir()
    (request.workdir / "other" / "Chart.yaml").write_text("name: other\n")
    with pytest.raises(DeployError, match=r"more than one candidate \(other/, wrktalk/\)"):
        await make_deployer().deploy(request)
    assert fake_helm.calls() == []


@pytest.mark.parametrize("version", ["1.0.0; rm -rf /", "--set=a", "1.0 0", "../1.0.0"])
async def test_unsafe_version_never_reaches_helm(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory, version: str
) -> None:
    with pytest.raises(DeployError, match="invalid release version") as caught:
        await make_deployer().deploy(make_request(version))
    assert caught.value.system_changed is False
    assert fake_helm.calls() == []


async def test_missing_binary(make_deployer: MakeDeployer, make_request: RequestFactory) -> None:
    deployer = make_deployer(binary="/nonexistent/helm")
    message = "cannot run helm binary /nonexistent/helm: No such file or directory"
    with pytest.raises(DeployError, match=message) as caught:
        await deployer.deploy(make_request("1.0.0"))
    assert caught.value.system_changed is False


async def test_hung_helm_is_stopped_and_its_pending_release_recovered_next_time(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    deployer = make_deployer(timeout="1s")
    await deployer.deploy(make_request("1.0.0"))
    deployer.hard_timeout_margin = 1.0  # stop helm 2 * 1s + 1s after it started
    fake_helm.configure(inject={"upgrade": "hang"})

    with pytest.raises(DeployError, match="did not finish within 3s and was stopped") as caught:
        await deployer.deploy(make_request("1.1.0"))
    assert caught.value.system_changed is True
    assert await _gone(fake_helm.pids()[-1])
    # Helm marked the upgrade failed and started its own rollback, which waited for the
    # resources until the agent's SIGKILL 5 s after its SIGTERM
    assert [(r["revision"], r["status"]) for r in fake_helm.revisions()] == [
        (1, "deployed"),
        (2, "failed"),
        (3, "pending-rollback"),
    ]
    assert fake_helm.revisions()[1]["description"] == (
        f'Upgrade "wrktalk" failed: {fake_helm.wait_error("context canceled")}'
    )

    fake_helm.configure(inject={})
    outcome = await deployer.deploy(make_request("1.1.0"))
    assert outcome.details["recovered"].startswith("rolled back revision 3 (pending-rollback)")
    assert fake_helm.revisions()[-1]["status"] == "deployed"


async def test_cancelling_a_first_install_leaves_what_each_helm_leaves(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    fake_helm.configure(inject={"upgrade": "hang"})
    task = asyncio.create_task(make_deployer().deploy(make_request("1.0.0")))
    while not fake_helm.revisions():  # until helm recorded its pending revision
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _gone(fake_helm.pids()[-1])
    if fake_helm.major == 3:  # its cleanup uninstall does not wait: gone within the grace
        assert fake_helm.revisions() == []
    else:  # Helm 4's waits for the deletion and was killed: `uninstalling` lasts
        assert [r["status"] for r in fake_helm.revisions()] == ["uninstalling"]

    fake_helm.configure(inject={})
    outcome = await make_deployer().deploy(make_request("1.0.0"))
    assert [r["status"] for r in fake_helm.revisions()] == ["deployed"]
    if fake_helm.major == 4:
        assert outcome.details["recovered"] == "finished the interrupted uninstall of revision 1"


async def _gone(pid: int) -> bool:
    """Whether the process is gone (reaped), waiting for the reaper a little."""
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        await asyncio.sleep(0.05)
    return False


# -- recovery: the "newest superseded" fallback and uninstalls that fail --------------
async def test_stuck_release_without_a_deployed_revision_returns_to_the_newest_superseded(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    # a rollback that failed applying marks the deployed revision superseded and its own
    # failed (pkg/action/rollback.go); then an upgrade was killed mid-way
    fake_helm.seed(
        [
            ("superseded", "wrktalk-agent release 1.0.0"),
            ("superseded", "wrktalk-agent release 1.1.0"),
            ("failed", 'Rollback "wrktalk" failed: timed out'),
            ("pending-upgrade", "Preparing upgrade"),
        ]
    )
    outcome = await make_deployer().deploy(make_request("1.2.0"))
    assert outcome.details["recovered"] == (
        "rolled back revision 4 (pending-upgrade) to revision 2, the newest that once ran"
    )
    assert [c[:3] for c in fake_helm.calls() if c[0] == "rollback"] == [
        ["rollback", "wrktalk", "2"]
    ]
    assert fake_helm.revisions()[4]["description"] == "Rollback to 2"
    assert fake_helm.revisions()[-1]["description"] == "wrktalk-agent release 1.2.0"


@pytest.mark.parametrize("left", ["uninstalling", "pending-install"])
async def test_uninstall_that_fails_after_the_purge_goes_on_with_the_install(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory, left: str
) -> None:
    fake_helm.seed([(left, "Deletion in progress (or silently failed)")])
    fake_helm.configure(inject={"uninstall": "after-purge"})
    outcome = await make_deployer().deploy(make_request("1.0.0"))

    # Helm said "uninstallation completed with 1 error(s)"; its history shows the release
    # gone, so the install went ahead
    assert (
        "Helm removed the release but reported: helm uninstall of the"
        in (outcome.details["recovered"])
    )
    assert "uninstallation completed with 1 error(s)" in outcome.details["recovered"]
    assert [(r["revision"], r["status"]) for r in fake_helm.revisions()] == [(1, "deployed")]
    assert any(
        "helm uninstall removed Helm release wrktalk but reported errors" in line
        for line in make_request.reports
    )
    calls = [c[0] for c in fake_helm.calls()]
    assert calls == ["version", "history", "history", "uninstall", "history", "upgrade", "history"]


async def test_uninstall_that_fails_before_the_purge_stops_the_task(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    fake_helm.seed(
        [
            ("superseded", "wrktalk-agent release 1.0.0"),
            ("uninstalling", "Deletion in progress (or silently failed)"),
        ]
    )
    fake_helm.configure(inject={"uninstall": "before-purge"})
    with pytest.raises(DeployError) as caught:
        await make_deployer().deploy(make_request("1.1.0"))

    message = str(caught.value)
    assert message.startswith(
        "helm uninstall of the uninstalling release failed: Error: failed to delete release: "
        "wrktalk; Helm release wrktalk is still uninstalling (revision 2), and the next "
        "deploy or rollback tries the uninstall again"
    )
    assert "helm uninstall wrktalk -n wrktalk --debug" in message  # where Helm logs the cause
    assert caught.value.system_changed is True  # some resources may be gone
    assert not any(c[0] == "upgrade" for c in fake_helm.calls())

    fake_helm.configure(inject={})  # the cause went away: the next deploy finishes it
    outcome = await make_deployer().deploy(make_request("1.1.0"))
    assert outcome.details["recovered"] == "finished the interrupted uninstall of revision 2"


async def test_uninstall_whose_history_cannot_be_read_afterwards(
    fake_helm: FakeHelm, make_deployer: MakeDeployer, make_request: RequestFactory
) -> None:
    fake_helm.seed([("uninstalling", "Deletion in progress (or silently failed)")])
    # helm uninstall fails, and the cluster is gone by the time the agent re-reads the
    # history: the task fails with both, rather than guess what Helm did
    deployer = make_deployer()
    real_action = deployer.helm.action

    async def uninstall_then_unreachable(args: list[str], **kwargs: object) -> object:
        try:
            return await real_action(args, **kwargs)  # type: ignore[arg-type]
        finally:
            fake_helm.configure(cluster="unreachable")

    fake_helm.configure(inject={"uninstall": "before-purge"})
    deployer.helm.action = uninstall_then_unreachable  # type: ignore[method-assign]
    with pytest.raises(DeployError) as caught:
        await deployer.deploy(make_request("1.0.0"))
    assert "failed to delete release: wrktalk; the release's history could not be read" in (
        str(caught.value)
    )
    assert "cluster unreachable" in str(caught.value).lower()


async def test_helm_debug_in_the_environment_does_not_reach_helm(
    fake_helm: FakeHelm,
    make_deployer: MakeDeployer,
    make_request: RequestFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # HELM_DEBUG=true works like --debug: Helm would print the values after the upgrade
    monkeypatch.setenv("HELM_DEBUG", "true")
    outcome = await make_deployer().deploy(make_request("1.0.0"))
    assert "s3cr3t" not in outcome.output
    assert "USER-SUPPLIED VALUES" not in outcome.output
    assert fake_helm.revisions()[0]["config"]["dbPassword"] == "s3cr3t-do-not-log"
