"""The work dir is the agent's own: a directory another user made first, a link planted in
it, a group-writable parent are refused at start-up and by `check`; clean-up never follows
a link and never touches a file outside the tree it made."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from wrktalk_agent.artifacts import make_private_dir, secure_delete
from wrktalk_agent.bootstrap import StartupError
from wrktalk_agent.plugins import PluginRegistry
from wrktalk_agent.preflight import format_checks, run_checks
from wrktalk_agent.workdir import WorkDirError, check_work_dir, default_work_dir

AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
VICTIM_FILES = {"a.conf": "keep me\n", "b.key": "private\n", "c.txt": "3\n"}


@pytest.fixture
def nobody() -> pwd.struct_passwd:
    return pwd.getpwnam("nobody")


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A directory like /tmp (root's, 1777) that user nobody can reach: pytest's own
    tmp_path is private to root."""
    base = Path(tempfile.mkdtemp(prefix="wrktalk-workdir-test-"))
    try:
        base.chmod(0o755)
        shared = base / "tmp"
        shared.mkdir()
        shared.chmod(0o1777)
        victim = base / "victim"
        victim.mkdir()
        for name, text in VICTIM_FILES.items():
            (victim / name).write_text(text)
        yield shared
    finally:
        shutil.rmtree(base, ignore_errors=True)


def as_nobody(*command: str) -> None:
    """Run ``command`` as user nobody (setpriv: no shell, no PAM)."""
    subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command],
        check=True,
        capture_output=True,
    )


def victim_intact(shared: Path) -> bool:
    victim = shared.parent / "victim"
    return {p.name: p.read_text() for p in victim.iterdir()} == VICTIM_FILES


@AS_ROOT
async def test_a_work_dir_made_first_by_another_user_is_refused_and_nothing_outside_is_touched(
    shared_tmp: Path, agent_settings, make_agent, nobody
) -> None:
    work = shared_tmp / "wrktalk-agent"
    planted = work / f"task-{uuid.uuid4()}-x"
    as_nobody("mkdir", "-m", "0700", str(work))
    as_nobody("ln", "-s", str(shared_tmp.parent / "victim"), str(planted))
    settings = agent_settings.model_copy(update={"work_dir": work})

    with pytest.raises(StartupError) as refused:
        await make_agent(settings)

    assert refused.value.lines == [
        f"work dir {work}: {work} is owned by nobody (uid {nobody.pw_uid}), not by the "
        "agent's user root (uid 0); remove it or use a directory the agent owns"
    ]
    assert refused.value.exit_code == 2
    assert victim_intact(shared_tmp)
    assert planted.is_symlink() and os.lstat(work).st_uid == nobody.pw_uid


@AS_ROOT
async def test_check_reports_fail_for_a_work_dir_of_another_user(
    shared_tmp: Path, agent_settings, nobody
) -> None:
    work = shared_tmp / "wrktalk-agent"
    as_nobody("mkdir", "-m", "0700", str(work))
    settings = agent_settings.model_copy(update={"notifiers": []})

    results = await run_checks(
        settings.model_copy(update={"work_dir": work}), PluginRegistry(entry_points=False)
    )

    line = next(r for r in results if r.name == "work dir")
    assert not line.ok
    assert f"{work} is owned by nobody (uid {nobody.pw_uid})" in line.detail
    table = format_checks(results)
    assert any(
        row.startswith("FAIL") and "work dir" in row and "owned by nobody" in row
        for row in table.splitlines()
    )


@AS_ROOT
def test_a_group_writable_parent_is_refused_naming_path_and_owner(tmp_path: Path) -> None:
    parent = tmp_path / "shared"
    parent.mkdir()
    parent.chmod(0o775)
    with pytest.raises(WorkDirError) as refused:
        check_work_dir(parent / "work")
    assert str(refused.value) == (
        f"work dir {parent / 'work'}: parent {parent} (owner root (uid 0)) is writable by its "
        f"group without the sticky bit (mode 0775); chmod go-w {parent}"
    )
    assert not (parent / "work").exists(), "nothing is created under a refused parent"
    parent.chmod(0o1777)  # sticky, like /tmp: nobody may rename another user's entries
    assert check_work_dir(parent / "work") == parent / "work"


@AS_ROOT
def test_a_parent_owned_by_another_user_and_their_link_are_refused(tmp_path: Path, nobody) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(WorkDirError, match=rf"parent {theirs} is owned by nobody \(uid"):
        check_work_dir(theirs / "work")
    link = tmp_path / "state"
    link.symlink_to(tmp_path / "elsewhere")
    os.lchown(link, nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(WorkDirError, match=rf"{link} is a link owned by nobody \(uid"):
        check_work_dir(link / "work")
    assert not (tmp_path / "elsewhere").exists()


def test_an_own_work_dir_writable_by_others_is_refused(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    work.chmod(0o777)
    with pytest.raises(WorkDirError, match=r"is writable by its group and others \(mode 0777\)"):
        check_work_dir(work)


def test_missing_directories_are_created_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o002)
    try:
        work = check_work_dir(tmp_path / "state" / "wrktalk-agent" / "work")
    finally:
        os.umask(old)
    for directory in (work, work.parent, work.parent.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_the_parents_check_can_be_left_out_for_a_single_user_volume(tmp_path: Path) -> None:
    volume = tmp_path / "emptydir"
    volume.mkdir()
    volume.chmod(0o777)  # how Kubernetes creates an emptyDir
    with pytest.raises(WorkDirError, match="without the sticky bit"):
        check_work_dir(volume / "agent")
    work = check_work_dir(volume / "agent", check_parents=False)
    assert stat.S_IMODE(work.stat().st_mode) == 0o700
    volume.chmod(0o700)


def test_the_default_is_a_directory_the_agent_owns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_work_dir() == Path("/var/lib/wrktalk-agent/work")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", "/home/alice/.state")
    assert default_work_dir() == Path("/home/alice/.state/wrktalk-agent/work")
    monkeypatch.setenv("XDG_STATE_HOME", "relative/is/ignored")
    monkeypatch.setenv("HOME", "/home/alice")
    assert default_work_dir() == Path("/home/alice/.local/state/wrktalk-agent/work")


# -- clean-up never follows a link ---------------------------------------------------------


def test_secure_delete_leaves_a_planted_link_and_what_it_points_to(shared_tmp: Path) -> None:
    victim = shared_tmp.parent / "victim"
    planted = shared_tmp / f"task-{uuid.uuid4()}-x"
    planted.symlink_to(victim)
    assert secure_delete(planted) == [
        f"{planted}: a link, not a directory the agent made; left alone"
    ]
    assert victim_intact(shared_tmp) and planted.is_symlink()


@AS_ROOT
def test_secure_delete_leaves_a_directory_it_did_not_make(tmp_path: Path, nobody) -> None:
    foreign = tmp_path / f"task-{uuid.uuid4()}-x"
    foreign.mkdir(mode=0o700)
    (foreign / "theirs").write_text("data")
    os.chown(foreign, nobody.pw_uid, nobody.pw_gid)
    assert secure_delete(foreign) == [
        f"{foreign}: owned by nobody (uid {nobody.pw_uid}), not by the agent's user; left alone"
    ]
    assert (foreign / "theirs").read_text() == "data"
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    assert "not a private directory the agent made; left alone" in secure_delete(loose)[0]


def test_links_inside_a_task_dir_are_removed_never_followed(shared_tmp: Path) -> None:
    victim = shared_tmp.parent / "victim"
    outside = shared_tmp.parent / "outside.txt"
    outside.write_text("untouched")
    os.link(outside, shared_tmp.parent / "outside-hardlink-source")  # nlink 2
    task = make_private_dir(shared_tmp / "work", f"task-{uuid.uuid4()}-")
    (task / "release").mkdir()
    (task / "release" / "dir-link").symlink_to(victim)
    (task / "release" / "file-link").symlink_to(victim / "a.conf")
    os.link(outside, task / "release" / "hard")  # a hard link out of the tree
    (task / "release" / ".env").write_text("TOKEN=abc")

    assert secure_delete(task) == []

    assert not task.exists()
    assert victim_intact(shared_tmp)
    assert outside.read_text() == "untouched", "zeros written through a hard link"


async def test_start_up_clean_up_of_a_checked_work_dir_never_follows_a_link(
    agent_settings, make_agent, shared_tmp: Path
) -> None:
    """A link named like a task's dir inside the agent's own work dir (made by root or a
    release's script): the start-up clean-up leaves it and what it points to."""
    work = shared_tmp / "work"
    planted = work / f"task-{uuid.uuid4()}-x"
    agent = await make_agent(agent_settings.model_copy(update={"work_dir": work}))
    planted.symlink_to(shared_tmp.parent / "victim")
    left = make_private_dir(work, f"task-{uuid.uuid4()}-")
    (left / ".env").write_text("TOKEN=abc")

    await agent.clean_work_dirs()

    assert victim_intact(shared_tmp) and planted.is_symlink()
    assert not left.exists(), "a dead task's own dir is still deleted"
