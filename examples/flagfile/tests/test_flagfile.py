"""The flag-file maintenance handler on real files, and around a real task."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest

import wrktalk_agent_flagfile
from wrktalk_agent.errors import BackendError
from wrktalk_agent.hookspecs import hookimpl
from wrktalk_agent.interfaces import BaseDeployer, DeployError, DeployOutcome, DeployRequest
from wrktalk_agent.testing import plugin_context, registry_with


def handler(tmp_path: Path, flag: Path):
    registry = registry_with(wrktalk_agent_flagfile, settings={"flagfile": {"path": flag}})
    return registry.instantiate("maintenance handler", "flagfile", plugin_context(tmp_path))


async def test_enable_and_disable_are_idempotent_and_status_reads_the_file(tmp_path) -> None:
    flag = tmp_path / "maintenance"
    maintenance = handler(tmp_path, flag)
    assert not await maintenance.status()

    await maintenance.enable("deploy 1.2.0 (task 42)")
    await maintenance.enable("deploy 1.2.0 (task 42)")
    assert await maintenance.status()
    assert flag.read_text() == "deploy 1.2.0 (task 42)\n"
    assert [p.name for p in tmp_path.iterdir()] == ["maintenance"]  # no temp file left

    await maintenance.disable()
    await maintenance.disable()
    assert not await maintenance.status() and not flag.exists()

    flag.write_text("switched on by hand")  # status reads the file, not a memory
    assert await maintenance.status()


async def test_a_missing_directory_fails_check_and_enable(tmp_path) -> None:
    maintenance = handler(tmp_path, tmp_path / "missing" / "maintenance")
    [line] = await maintenance.check()
    assert not line.ok and line.detail.endswith("is not writable")
    with pytest.raises(BackendError, match=r"could not write .*: No such file or directory"):
        await maintenance.enable("deploy")


class FlagWatchingDeployer(BaseDeployer):
    """Records whether maintenance was on while it deployed; fails on a FAIL file."""

    name: ClassVar[str] = "watching"
    flag: ClassVar[Path]
    seen: ClassVar[list[bool]] = []

    async def deploy(self, request: DeployRequest) -> DeployOutcome:
        self.seen.append(self.flag.exists())
        if (request.workdir / "FAIL").exists():
            raise DeployError("could not start the new release")
        return DeployOutcome()

    async def rollback(self, request: DeployRequest) -> DeployOutcome:
        self.seen.append(self.flag.exists())
        return DeployOutcome()


class WatchingPlugin:
    @hookimpl
    def wrktalk_register_deployers(self, register) -> None:
        register(FlagWatchingDeployer)


async def test_the_site_is_in_maintenance_exactly_while_the_deployer_works(
    task_harness, tmp_path
) -> None:
    flag = tmp_path / "maintenance"
    FlagWatchingDeployer.flag, FlagWatchingDeployer.seen = flag, []
    task_harness.use(wrktalk_agent_flagfile).use(WatchingPlugin(), name="watching").select(
        deployer="watching", maintenance="flagfile", settings={"flagfile": {"path": flag}}
    )

    ok = await task_harness.deploy("1.0.0")
    failed = await task_harness.deploy("1.1.0", {"FAIL": ""})  # then rolled back

    assert (ok.status, failed.status) == ("completed", "failed")
    assert FlagWatchingDeployer.seen == [True, True, True]  # deploy, deploy, auto-rollback
    assert not flag.exists()
    for report in (ok, failed):
        steps = report.steps()
        assert ("maintenance-on", "succeeded") in steps
        assert ("maintenance-off", "succeeded") in steps
    assert failed.error == "could not start the new release"
