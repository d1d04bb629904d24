"""The ``script`` deployer's optional methods: validate (before maintenance) and
live_release (its ``current`` link), with real files and a real deploy script."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from wrktalk_agent.builtins.script import ScriptDeployer, ScriptSettings
from wrktalk_agent.interfaces import (
    DeployRequest,
    LiveState,
    PluginContext,
    Release,
    ValidationError,
)

DEPLOY = '#!/bin/sh\necho deployed "$WRKTALK_RELEASE_VERSION"\n'


async def _silent(line: str) -> None:
    pass


def request(workdir: Path, version: str = "1.0.0") -> DeployRequest:
    return DeployRequest(
        task_id=uuid.uuid4(),
        purpose="deploy",
        release=Release(uuid.uuid4(), version, "compose", "0" * 64),
        workdir=workdir,
        env_file=None,
        values_file=None,
        current=None,
        report=_silent,
    )


@pytest.fixture
def deployer(tmp_path: Path) -> ScriptDeployer:
    context = PluginContext("test", "test", tmp_path, None)  # type: ignore[arg-type]
    return ScriptDeployer(ScriptSettings(working_dir=tmp_path / "script"), context)


@pytest.fixture
def release_dir(tmp_path: Path) -> Path:
    workdir = tmp_path / "task"
    workdir.mkdir()
    return workdir


async def test_a_release_with_an_executable_script_validates(
    deployer: ScriptDeployer, release_dir: Path
) -> None:
    script = release_dir / "deploy"
    script.write_text(DEPLOY)
    script.chmod(0o755)
    assert await deployer.validate(request(release_dir)) == []


async def test_a_release_without_its_script_is_refused(
    deployer: ScriptDeployer, release_dir: Path
) -> None:
    with pytest.raises(
        ValidationError, match=r"^release 1.0.0 has no 'deploy' script at its root$"
    ):
        await deployer.validate(request(release_dir))


async def test_a_script_that_is_not_executable_is_refused(
    deployer: ScriptDeployer, release_dir: Path
) -> None:
    (release_dir / "deploy").write_text(DEPLOY)
    (release_dir / "deploy").chmod(0o644)
    with pytest.raises(ValidationError, match=r"is not executable"):
        await deployer.validate(request(release_dir))


async def test_a_symlink_or_a_directory_is_refused(
    deployer: ScriptDeployer, release_dir: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere.sh"
    outside.write_text(DEPLOY)
    outside.chmod(0o755)
    (release_dir / "deploy").symlink_to(outside)
    with pytest.raises(ValidationError, match=r"is a symlink"):
        await deployer.validate(request(release_dir))
    (release_dir / "deploy").unlink()
    (release_dir / "deploy").mkdir()
    with pytest.raises(ValidationError, match=r"is not a regular file"):
        await deployer.validate(request(release_dir))


async def test_live_release_follows_the_current_link(
    deployer: ScriptDeployer, release_dir: Path
) -> None:
    assert (await deployer.live_release()).state == "absent"
    script = release_dir / "deploy"
    script.write_text(DEPLOY)
    script.chmod(0o755)
    await deployer.deploy(request(release_dir, "2.1.0"))
    live = await deployer.live_release()
    assert (live.version, live.state) == ("2.1.0", "deployed")

    current = deployer.settings.working_dir / "current"
    target = deployer.settings.working_dir / "releases" / "2.1.0"
    os.rename(target, target.with_name("gone"))
    live = await deployer.live_release()
    assert live == LiveState(None, "unknown", f"{current} points to {target}, which is missing")


async def test_a_failed_deploy_keeps_the_previous_release_and_drops_the_failed_one(
    repo, task_harness, tmp_path: Path
) -> None:
    """0.9.0 then 1.0.0 deployed; 2.0.0 fails and the agent rolls back to 1.0.0. The
    directory of 0.9.0 — still the database's previous release, what a rollback returns
    to — stays; the failed 2.0.0 goes. A rollback then really finds 0.9.0."""
    from wrktalk_agent.builtins import script

    site = tmp_path / "site"
    task_harness.use(script, name="script").select(
        deployer="script", settings={"script": {"working_dir": str(site)}}
    )
    good = {"deploy": DEPLOY}
    for version in ("0.9.0", "1.0.0"):
        release = await task_harness.add_release(version, good)
        assert (await task_harness.run("deploy", release.id)).status == "completed"
    broken = await task_harness.add_release("2.0.0", {"deploy": "#!/bin/sh\nexit 3\n"})
    failed = await task_harness.run("deploy", broken.id)
    assert failed.status == "failed"
    assert sorted(p.name for p in (site / "releases").iterdir()) == ["0.9.0", "1.0.0"]
    assert os.readlink(site / "current").endswith("1.0.0")
    assert (await repo.previous_release()).release_version == "0.9.0"
    back = await task_harness.run("rollback", None)
    assert back.status == "completed", back.error
    assert os.readlink(site / "current").endswith("0.9.0")
