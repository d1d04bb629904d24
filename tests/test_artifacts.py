"""Artifacts: hostile tarballs, the streaming fetch, signatures, secrets on disk, deletion."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wrktalk_agent.artifacts import (
    ArtifactError,
    extract_release,
    fetch_artifact,
    secure_delete,
    write_secret_file,
)
from wrktalk_agent.testing import add_release, make_tarball

LIMITS = {"max_members": 1000, "max_bytes": 10 * 1024 * 1024}


def tar_with(*members: tuple[tarfile.TarInfo, bytes | None], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def member(name: str, kind: bytes = tarfile.REGTYPE, **attrs) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def snapshot(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*")}


HOSTILE = {
    "dotdot": (tar_with((member("../evil.txt"), b"x")), "'../evil.txt'"),
    "absolute": (tar_with((member("/tmp/evil-abs.txt"), b"x")), "'/tmp/evil-abs.txt'"),
    "symlink to /etc": (
        tar_with((member("etc", tarfile.SYMTYPE, linkname="/etc"), None)),
        "'etc'",
    ),
    "hardlink outside": (
        tar_with((member("passwd", tarfile.LNKTYPE, linkname="../../etc/passwd"), None)),
        "'passwd'",
    ),
    "symlink chain escaping": (
        tar_with(
            (member("a", tarfile.SYMTYPE, linkname="."), None),
            (member("b", tarfile.SYMTYPE, linkname="a/.."), None),
            (member("c", tarfile.SYMTYPE, linkname="b/../.."), None),
            (member("c/evil.txt"), b"x"),
        ),
        "unsafe member",
    ),
    "device node": (
        tar_with((member("null", tarfile.CHRTYPE, devmajor=1, devminor=3), None)),
        "'null'",
    ),
    "fifo": (tar_with((member("pipe", tarfile.FIFOTYPE), None)), "'pipe'"),
    "setuid file": (tar_with((member("suid", mode=0o4755), b"#!/bin/sh\n")), "setuid"),
    "too many members": (
        tar_with(*[(member(f"f{i}"), b"") for i in range(LIMITS["max_members"] + 1)]),
        "more than 1000 members",
    ),
    "gzip bomb": (
        tar_with((member("zeros"), bytes(LIMITS["max_bytes"] + 1)), mode="w:gz"),
        "expands past",
    ),
    "truncated gzip": (make_tarball({"a.txt": os.urandom(50_000)})[:-4000], "archive"),
    "not a tar": (b"just some text, not an archive\n" * 20, "not a tar archive"),
    "empty file": (b"", "not a tar archive"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_tarballs_are_refused(case: str, tmp_path: Path) -> None:
    data, expected = HOSTILE[case]
    archive = tmp_path / "artifact.tar"
    archive.write_bytes(data)
    dest = tmp_path / "work" / "release"
    dest.parent.mkdir()
    outside_before = snapshot(tmp_path)
    etc_before = sorted(os.listdir("/etc"))
    with pytest.raises(ArtifactError) as caught:
        extract_release(archive, dest, **LIMITS)
    assert expected in str(caught.value)
    created_outside = {p for p in snapshot(tmp_path) - outside_before if not p.startswith("work")}
    assert created_outside == set()
    assert not Path("/tmp/evil-abs.txt").exists()
    assert sorted(os.listdir("/etc")) == etc_before


def test_sane_tarball_extracts_with_safe_modes(tmp_path: Path) -> None:
    archive = tmp_path / "a.tgz"
    archive.write_bytes(
        tar_with(
            (member("chart", tarfile.DIRTYPE, mode=0o555), None),
            (member("chart/Chart.yaml", mode=0o666), b"name: x\n"),
            (member("chart/link", tarfile.SYMTYPE, linkname="Chart.yaml"), None),
            (member("run.sh", mode=0o755), b"#!/bin/sh\n"),
            mode="w:gz",
        )
    )
    dest = tmp_path / "release"
    files, size = extract_release(archive, dest, **LIMITS)
    assert files == 4 and size == len(b"name: x\n") + len(b"#!/bin/sh\n")
    assert (dest / "chart" / "link").read_text() == "name: x\n"
    assert stat.S_IMODE((dest / "chart/Chart.yaml").stat().st_mode) & 0o022 == 0  # no g/o write
    assert os.access(dest / "run.sh", os.X_OK)


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.REGTYPE])
def test_a_member_over_a_directory_of_its_name_is_refused(tmp_path: Path, kind: bytes) -> None:
    """Found by the property below: a link over a directory sent tarfile into endless
    recursion (it falls back to copying the link's target: the link itself)."""
    link = member("-", kind, linkname="-") if kind != tarfile.REGTYPE else member("-")
    archive = tmp_path / "a.tar"
    archive.write_bytes(
        tar_with(
            (member("-", tarfile.DIRTYPE), None),
            (link, b"data" if kind == tarfile.REGTYPE else None),
        )
    )
    with pytest.raises(ArtifactError, match="would replace the directory of that name"):
        extract_release(archive, tmp_path / "release", **LIMITS)


names = st.text(alphabet=st.sampled_from("ab./-_"), min_size=1, max_size=12)
kinds = st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE])


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(entries=st.lists(st.tuples(names, kinds, names), min_size=1, max_size=8))
def test_property_nothing_is_written_outside(entries, tmp_path_factory) -> None:
    base = tmp_path_factory.mktemp("prop")
    outside = base / "outside"
    outside.mkdir()
    members = []
    for name, kind, target in entries:
        info = member(name, kind)
        if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
            info.linkname = target
            members.append((info, None))
        elif kind == tarfile.DIRTYPE:
            members.append((info, None))
        else:
            members.append((info, b"data"))
    archive = base / "a.tar"
    try:
        archive.write_bytes(tar_with(*members))
    except (ValueError, tarfile.TarError):
        return
    dest = outside / "work"
    try:
        extract_release(archive, dest, **LIMITS)
    except ArtifactError:
        pass
    for path in base.rglob("*"):
        if path == archive or path in (outside, dest):
            continue
        assert dest in path.parents, f"{path} written outside the target"
        if path.is_symlink():  # a link may dangle or loop, but must not reach outside
            try:
                resolved = Path(os.path.realpath(path, strict=True))
            except OSError:
                continue
            assert resolved == dest or dest in resolved.parents, f"{path} -> {resolved}"


async def test_fetch_streams_and_hashes(repo, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    info = await add_release(repo, "1.0.0", data=data)
    fetched = await fetch_artifact(repo, info, tmp_path, max_bytes=10**8, chunk_bytes=1 << 20)
    assert fetched.size == len(data)
    assert fetched.sha256 == hashlib.sha256(data).hexdigest()
    assert fetched.path.read_bytes() == data
    assert stat.S_IMODE(fetched.path.stat().st_mode) == 0o600


async def test_fetch_refuses_oversized_and_mismatched(repo, tmp_path: Path) -> None:
    data = os.urandom(1000)
    big = await add_release(repo, "1.0.0", data=data)
    with pytest.raises(ArtifactError, match="over the limit of 999"):
        await fetch_artifact(repo, big, tmp_path, max_bytes=999)
    wrong = await add_release(repo, "1.0.1", data=data, sha256="0" * 64)
    with pytest.raises(ArtifactError, match=r"sha256 mismatch: expected 0{64}, got "):
        await fetch_artifact(repo, wrong, _fresh(tmp_path), max_bytes=10**6)
    upper = await add_release(
        repo, "1.0.2", data=data, sha256=hashlib.sha256(data).hexdigest().upper()
    )
    fetched = await fetch_artifact(repo, upper, _fresh(tmp_path), max_bytes=10**6)
    assert fetched.size == 1000


def _fresh(base: Path) -> Path:
    path = base / f"d{len(list(base.iterdir()))}"
    path.mkdir()
    return path


def test_secret_files_are_0600_and_replace_shipped_ones(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SHIPPED=1")
    path = write_secret_file(tmp_path / ".env", "DB_PASSWORD=s3cret\n")
    assert path.read_text() == "DB_PASSWORD=s3cret\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (tmp_path / "values.yaml").symlink_to("/etc/passwd")
    with pytest.raises(ArtifactError, match="as a link"):
        write_secret_file(tmp_path / "values.yaml", "x: 1")


def test_secure_delete_overwrites_then_removes(tmp_path: Path) -> None:
    root = tmp_path / "task"
    root.mkdir(mode=0o700)
    (root / "ro").mkdir()
    secret = root / "ro" / ".env"
    secret.write_text("TOKEN=abc")
    (root / "ro").chmod(0o500)
    (root / "link").symlink_to(secret)
    seen: list[bytes] = []
    real_unlink = os.unlink

    def spy(path, *a, dir_fd=None, **kw):
        if str(path).endswith(".env"):
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
            with os.fdopen(fd, "rb") as handle:
                seen.append(handle.read())
        return real_unlink(path, *a, dir_fd=dir_fd, **kw)

    os.unlink = spy  # type: ignore[assignment]
    try:
        assert secure_delete(root) == []
    finally:
        os.unlink = real_unlink  # type: ignore[assignment]
    assert seen == [b"\0" * len("TOKEN=abc")]  # overwritten before unlinking
    assert not root.exists()


def test_gzip_detected_by_content_not_name(tmp_path: Path) -> None:
    plain = tmp_path / "release.tgz"  # misleading name: an uncompressed tar
    plain.write_bytes(make_tarball({"a": "1"}, gzip=False))
    assert extract_release(plain, tmp_path / "x", **LIMITS) == (1, 1)
    gz = tmp_path / "release.tar"
    gz.write_bytes(gzip.compress(make_tarball({"b": "22"}, gzip=False)))
    assert extract_release(gz, tmp_path / "y", **LIMITS) == (1, 2)
