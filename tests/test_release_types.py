"""Release types are data: the installed deployers declare them, the CLI takes them, the
schema `db init` makes pins none, and the poll rejects only what no deployer declares.

The end-to-end test drives the real commands an operator types (`db init`, `release add`,
`task deploy`, `run --once`, `task rollback`) against a database made by `db init`, with a
third-party deployer of its own release type (`tarball`) written the way a plugin author
would: public API only."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import textwrap
import uuid
from pathlib import Path

import asyncpg
import pytest

from wrktalk_agent.testing import PgServer

PLUGIN = '''
"""A deployer for plain hosts: a release is a tarball unpacked under ROOT/<version>;
ROOT/live names the version being served."""

import shutil
from pathlib import Path
from typing import ClassVar

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from wrktalk_agent.hookspecs import hookimpl
from wrktalk_agent.interfaces import BaseDeployer, CheckResult, DeployOutcome, LiveState


class TarballSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WRKTALK_AGENT_TARBALL_", extra="ignore")

    root: Path = Field(description="Where releases are unpacked.")


class TarballDeployer(BaseDeployer):
    name: ClassVar[str] = "tarball"
    chart_types: ClassVar[tuple[str, ...]] = ("tarball",)
    settings_model: ClassVar[type[BaseSettings]] = TarballSettings

    async def check(self):
        return [CheckResult("root", self.settings.root.is_dir(), str(self.settings.root))]

    async def live_release(self):
        live = self.settings.root / "live"
        if not live.exists():
            return LiveState(None, "absent")
        return LiveState(live.read_text(), "deployed")

    async def deploy(self, request):
        return self._switch(request)

    async def rollback(self, request):
        return self._switch(request)

    def _switch(self, request):
        version = request.release.version
        target = self.settings.root / version
        if not target.exists():
            shutil.copytree(request.workdir, target)
        (self.settings.root / "live").write_text(version)
        return DeployOutcome(output=f"serving {version} ({request.release.chart_type})")


@hookimpl
def wrktalk_register_deployers(register):
    register(TarballDeployer)
'''


@pytest.fixture
def initialised_database(pg_server: PgServer):
    url = pg_server.create_database(migrated=False)
    yield url
    pg_server.drop_database(url)


def _tarball(path: Path, text: str) -> Path:
    source = path.with_suffix(".txt")
    source.write_text(text)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(source, arcname="index.html")
    return path


def _env(tmp_path: Path, database_url: str, **extra: str) -> dict[str, str]:
    plugin_dir = tmp_path / "plugin"
    plugin_dir.mkdir(exist_ok=True)
    (plugin_dir / "wrktalk_agent_tarball_test.py").write_text(PLUGIN)
    (tmp_path / "work").mkdir(exist_ok=True)
    (tmp_path / "site").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRKTALK_AGENT_")}
    env.update(
        {
            "PYTHONPATH": os.pathsep.join([str(plugin_dir), env.get("PYTHONPATH", "")]),
            "WRKTALK_AGENT_DATABASE_URL": database_url,
            "WRKTALK_AGENT_WORK_DIR": str(tmp_path / "work"),
            "WRKTALK_AGENT_WORK_DIR_CHECK_PARENTS": "false",
            "WRKTALK_AGENT_EXTRA_PLUGINS": "wrktalk_agent_tarball_test",
            "WRKTALK_AGENT_DEPLOYER": "tarball",
            "WRKTALK_AGENT_TARBALL_ROOT": str(tmp_path / "site"),
            "WRKTALK_AGENT_NOTIFIERS": "",
            "WRKTALK_AGENT_MAINTENANCE_MODE_HANDLER": "none",
            "WRKTALK_AGENT_POLL_INTERVAL": "0.2",
            **extra,
        }
    )
    return env


def _agent(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wrktalk_agent.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.timeout(240)
def test_a_third_party_release_type_is_stored_deployed_and_rolled_back(
    initialised_database: str, tmp_path: Path
) -> None:
    env = _env(tmp_path, initialised_database)
    init = _agent(env, "db", "init")
    assert init.returncode == 0, init.stdout + init.stderr
    listed = _agent(env, "plugins")
    assert "tarball (tarball)" in listed.stdout, listed.stdout
    for version in ("1.0.0", "2.0.0"):
        bundle = _tarball(tmp_path / f"{version}.tgz", f"site {version}\n")
        added = _agent(
            env, "release", "add", str(bundle), "--version", version, "--chart-type", "tarball"
        )
        assert added.returncode == 0, added.stdout + added.stderr
        assert "warning" not in added.stderr  # a declared type: nothing to warn about
    site = tmp_path / "site"
    for args, live in (
        (("task", "deploy", "1.0.0"), "1.0.0"),
        (("task", "deploy", "2.0.0"), "2.0.0"),
        (("task", "rollback"), "1.0.0"),
    ):
        queued = _agent(env, *args)
        assert queued.returncode == 0, queued.stdout + queued.stderr
        ran = _agent(env, "run", "--once")
        assert ran.returncode == 0, (args, ran.stdout, ran.stderr)
        assert (site / "live").read_text() == live
        assert (site / live / "index.html").read_text() == f"site {live}\n"
    tasks = _agent(env, "task", "list", "-o", "json")
    assert tasks.returncode == 0, tasks.stderr
    assert '"failed"' not in tasks.stdout
    releases = _agent(env, "release", "list")
    assert releases.stdout.splitlines()[1].split()[:2] in (
        ["2.0.0", "tarball"],
        ["1.0.0", "tarball"],
    )


def test_release_add_names_the_declared_types_for_an_undeclared_one(
    initialised_database: str, tmp_path: Path
) -> None:
    env = _env(tmp_path, initialised_database)
    assert _agent(env, "db", "init").returncode == 0
    bundle = _tarball(tmp_path / "r.tgz", "x\n")
    # the built-in script deployer takes any type: stored, with a warning naming them
    typo = _agent(
        env, "release", "add", str(bundle), "--version", "1.0.0", "--chart-type", "tarbal"
    )
    assert typo.returncode == 0, typo.stdout + typo.stderr
    assert "no installed deployer declares release type 'tarbal'" in typo.stderr
    assert "tarball" in typo.stderr and "only script" in typo.stderr
    odd = _agent(env, "release", "add", str(bundle), "--version", "1.0.1", "--chart-type", "a b")
    assert odd.returncode == 2 and "not a release type name" in odd.stderr


async def test_db_init_drops_its_own_old_check_and_leaves_a_backends(
    initialised_database: str, tmp_path: Path
) -> None:
    from wrktalk_agent.db.schema import init_schema, release_type_constraints, stale_constraints

    conn = await asyncpg.connect(initialised_database)
    try:
        assert await init_schema(conn) != []
        # what an earlier `db init` made (inline in CREATE TABLE, or added NOT VALID)
        await conn.execute(
            "ALTER TABLE release_artifact ADD CONSTRAINT release_artifact_chart_type_check "
            "CHECK (chart_type IN ('helm', 'compose')) NOT VALID"
        )
        # and a backend's own rule on the same column
        await conn.execute(
            "ALTER TABLE release_artifact ADD CONSTRAINT backend_release_kinds "
            "CHECK (chart_type IN ('helm', 'compose', 'tarball'))"
        )
        stale = await stale_constraints(conn)
        assert len(stale) == 1 and "release_artifact_chart_type_check" in stale[0]
        env = _env(tmp_path, initialised_database)
        checked = _agent(env, "db", "check")
        assert checked.returncode == 1
        assert "release_artifact_chart_type_check" in checked.stdout
        assert "note: release types are limited by constraint backend_release_kinds" in (
            checked.stdout
        )
        preflight = _agent(env, "check", "-o", "json")
        assert '"name": "release types"' in preflight.stdout, preflight.stdout
        assert '"status": "warn"' in preflight.stdout
        assert await init_schema(conn) == stale
        assert await init_schema(conn) == []  # idempotent
        assert [name for name, _ in await release_type_constraints(conn)] == [
            "backend_release_kinds"
        ]
        # the backend's rule still holds; the agent's is gone
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO release_artifact (release_version, chart_type, artifact_data,"
                " sha256) VALUES ('9', 'kustomize', 'x', repeat('0', 64))"
            )
        await conn.execute(
            "INSERT INTO release_artifact (release_version, chart_type, artifact_data, sha256)"
            " VALUES ('9', 'tarball', 'x', repeat('0', 64))"
        )
    finally:
        await conn.close()


async def test_the_poll_rejects_a_type_no_installed_deployer_declares(repo) -> None:
    from wrktalk_agent.testing import add_release

    helm = await add_release(repo, "1.0.0", chart_type="helm")
    task = await repo.create_task("deploy", helm.id)
    polled = await repo.poll(
        "agent-a", 30.0, claim_token=uuid.uuid4(), instance_id=uuid.uuid4(),
        release_types=("tarball",),
    )  # fmt: skip
    assert polled.claimed is None
    assert [t for t, _ in polled.rejected] == [task.id]
    assert "chart_type 'helm'" in polled.rejected[0][1]
    assert "no installed deployer declares (tarball)" in polled.rejected[0][1]
    # a deployer taking any type: any non-blank type is claimed
    other = await add_release(repo, "2.0.0", chart_type="kustomize")
    second = await repo.create_task("deploy", other.id)
    polled = await repo.poll(
        "agent-a", 30.0, claim_token=uuid.uuid4(), instance_id=uuid.uuid4(), release_types=None
    )
    assert polled.claimed is not None and polled.claimed.id == second.id


def test_the_registry_declares_what_deployers_name() -> None:
    from wrktalk_agent.testing import registry_with

    module = type(sys)("tarball_only")
    exec(textwrap.dedent(PLUGIN), module.__dict__)
    alone = registry_with(module)
    assert alone.declared_release_types() == {"tarball": ["tarball"]}
    assert alone.any_type_deployers() == []
    assert alone.release_types() == ("tarball",)  # what the poll passes
    installed = registry_with(module, entry_points=True)
    assert installed.declared_release_types()["tarball"] == ["tarball"]
    assert "script" in installed.any_type_deployers()
    assert installed.release_types() is None  # script takes any type


def test_without_an_any_type_deployer_an_undeclared_type_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import click

    from wrktalk_agent.cli import ReleaseType
    from wrktalk_agent.testing import registry_with

    module = type(sys)("tarball_only")
    exec(textwrap.dedent(PLUGIN), module.__dict__)
    monkeypatch.setattr(ReleaseType, "_registry", lambda self: registry_with(module))
    assert ReleaseType().convert("tarball", None, None) == "tarball"
    with pytest.raises(click.BadParameter, match="declares release type 'helm'; declared: tarball"):
        ReleaseType().convert("helm", None, None)


def test_a_deployer_declaring_a_malformed_release_type_is_invalid() -> None:
    from wrktalk_agent.errors import PluginError
    from wrktalk_agent.testing import registry_with

    module = type(sys)("bad_types")
    exec(textwrap.dedent(PLUGIN.replace('("tarball",)', '("tar ball",)')), module.__dict__)
    with pytest.raises(PluginError, match=r"chart_types \['tar ball'\] are not release type names"):
        registry_with(module)
