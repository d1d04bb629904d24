"""Release artifacts: streamed out of PostgreSQL, verified, safely extracted, securely deleted.

The tarball is never held whole in memory: it is read in ``substring`` slices of the
BYTEA column by one prepared statement inside a read-only repeatable-read transaction (one
snapshot for all slices), and hashed while it is written to a file in a private (0700)
directory; the next slices are read while a worker thread hashes and writes the current
one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import stat
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wrktalk_agent.db.models import ArtifactInfo
from wrktalk_agent.signing import Manifest, SignatureError, verify_release

#: Slice size, measured best of 256 KiB .. 16 MiB (benchmarks/bench_artifacts.py).
CHUNK_BYTES = 1024 * 1024
READ_AHEAD = 4
ARTIFACT_FILE = "artifact.tar"
RELEASE_DIR = "release"
ENV_FILE = ".env"
VALUES_FILE = "values.yaml"


class ArtifactError(Exception):
    """The artifact cannot be used; the message names the problem (and the member)."""


@dataclass(frozen=True)
class FetchedArtifact:
    path: Path
    size: int
    sha256: str
    seconds: float


def make_private_dir(parent: Path, prefix: str) -> Path:
    """A fresh 0700 directory under ``parent`` (created 0700 if missing; the agent checks
    at start-up that ``parent`` is its own: :mod:`wrktalk_agent.workdir`)."""
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


async def fetch_artifact(
    repo: Any,
    artifact: ArtifactInfo,
    dest_dir: Path,
    *,
    max_bytes: int,
    chunk_bytes: int = CHUNK_BYTES,
) -> FetchedArtifact:
    """Stream the artifact's bytes (``repo.artifact_chunks``, a
    :class:`~wrktalk_agent.db.Repository`) into ``dest_dir/artifact.tar`` and check its
    sha256."""
    if artifact.size > max_bytes:
        raise ArtifactError(
            f"artifact {artifact.release_version} is {artifact.size} bytes, over the limit of "
            f"{max_bytes} (WRKTALK_AGENT_MAX_ARTIFACT_BYTES)"
        )
    started = time.perf_counter()
    digest = hashlib.sha256()
    path = dest_dir / ARTIFACT_FILE
    written = 0
    # The next slices arrive while a worker thread hashes and writes this one (hashlib
    # and file writes release the GIL); the bounded queue caps memory at a few slices.
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=READ_AHEAD)

    async def produce() -> None:
        chunks = repo.artifact_chunks(artifact.id, artifact.size, chunk_bytes)
        async with contextlib.aclosing(chunks):  # stopped early: the connection goes back
            async for chunk in chunks:
                await queue.put(chunk)
        await queue.put(None)

    def absorb(chunk: bytes) -> None:
        digest.update(chunk)
        out.write(chunk)

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        producer = asyncio.create_task(produce(), name="artifact-read")
        try:
            while (chunk := await _next(queue, producer)) is not None:
                written += len(chunk)
                if written > max_bytes:  # the row changed under us
                    raise ArtifactError(f"artifact grew past {max_bytes} bytes while read")
                await asyncio.to_thread(absorb, chunk)
        finally:
            if not producer.done():
                producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
    if written != artifact.size:
        raise ArtifactError(
            f"artifact {artifact.release_version}: read {written} bytes, expected {artifact.size}"
        )
    actual = digest.hexdigest()
    if actual != artifact.sha256.strip().lower():
        raise ArtifactError(
            f"sha256 mismatch: expected {artifact.sha256.strip().lower()}, got {actual}"
        )
    return FetchedArtifact(
        path=path, size=written, sha256=actual, seconds=time.perf_counter() - started
    )


async def _next(queue: asyncio.Queue[bytes | None], producer: asyncio.Task[None]) -> bytes | None:
    """The next slice, or the reader's exception as soon as it fails."""
    getter = asyncio.ensure_future(queue.get())
    await asyncio.wait({getter, producer}, return_when=asyncio.FIRST_COMPLETED)
    if getter.done():
        return getter.result()
    getter.cancel()
    producer.result()  # raises what the reader raised
    return await queue.get()  # the reader finished normally: its None is queued


def check_signature(
    artifact: ArtifactInfo,
    sha256_hex: str,
    env_data: str | None,
    values_data: str | None,
    trusted_keys: list[Any],
) -> str:
    """Verify the release's signature over every field that shapes the deploy (the
    artifact's digest as fetched, version, chart type, env and values as read) when keys
    are configured; returns what was checked, in words for the timeline."""
    if not trusted_keys:
        return "signature not checked (no trusted keys configured)"
    actual = Manifest.of(
        artifact_sha256=sha256_hex,
        version=artifact.release_version,
        chart_type=artifact.chart_type,
        env_data=env_data,
        values_data=values_data,
    )
    try:
        return verify_release(trusted_keys, artifact.signature, actual).describe()
    except SignatureError as exc:
        raise ArtifactError(str(exc)) from None


def extract_release(
    archive: Path,
    dest: Path,
    *,
    max_members: int,
    max_bytes: int,
) -> tuple[int, int]:
    """Extract ``archive`` (.tar, .tar.gz, .tgz — detected by content) into ``dest``.

    Python's ``data`` filter refuses absolute paths, ``..``, links leaving ``dest`` and
    device/fifo members; on top of it this refuses setuid/setgid bits and enforces the
    member-count and total-size limits while streaming, so a bomb is stopped early.
    Returns (files extracted, bytes extracted).
    """
    dest.mkdir(mode=0o700, exist_ok=True)
    count = total = 0
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member in tar:
                count += 1
                if count > max_members:
                    raise ArtifactError(
                        f"archive has more than {max_members} members "
                        f"(WRKTALK_AGENT_MAX_MEMBERS); stopped at {member.name!r}"
                    )
                # The data filter would silently strip a leading "/": refuse instead.
                if member.name.startswith("/") or ".." in member.name.split("/"):
                    raise ArtifactError(f"unsafe member {member.name!r}: absolute path or '..'")
                if os.path.normpath(member.name) == "." and not member.isdir():
                    # a link named "." sends tarfile into endless recursion
                    raise ArtifactError(f"unsafe member {member.name!r}: replaces the root")
                target = dest / member.name
                if not member.isdir() and target.is_dir() and not target.is_symlink():
                    # tarfile cannot replace a directory with a link and falls back to
                    # copying the link's target, which may be the member itself: endless
                    raise ArtifactError(
                        f"member {member.name!r} would replace the directory of that name"
                    )
                if member.mode & (stat.S_ISUID | stat.S_ISGID):
                    raise ArtifactError(f"member {member.name!r} has a setuid/setgid bit")
                if member.isfile():
                    total += member.size
                    if total > max_bytes:
                        raise ArtifactError(
                            f"archive expands past {max_bytes} bytes "
                            f"(WRKTALK_AGENT_MAX_EXTRACTED_BYTES) at {member.name!r}"
                        )
                try:
                    # Directory modes are not applied: a read-only directory would
                    # block the members extracted into it after it.
                    tar.extract(member, dest, set_attrs=not member.isdir(), filter="data")
                except tarfile.FilterError as exc:
                    raise ArtifactError(f"unsafe member {member.name!r}: {exc}") from None
                except KeyError:  # tarfile's way of saying a hard link's target is absent
                    raise ArtifactError(
                        f"member {member.name!r} links to {member.linkname!r}, "
                        "which is not in the archive"
                    ) from None
    except ArtifactError:
        raise
    except RecursionError:  # tarfile following links that refer to each other
        raise ArtifactError(
            f"the archive's links refer to each other in a loop (at member {count})"
        ) from None
    except (tarfile.TarError, EOFError, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        if count == 0:
            raise ArtifactError(f"not a tar archive (.tar, .tar.gz or .tgz): {reason}") from None
        raise ArtifactError(
            f"corrupt or truncated archive after {count} members: {reason}"
        ) from None
    if count == 0:
        raise ArtifactError("the archive is empty")
    return count, total


def write_secret_file(path: Path, content: str) -> Path:
    """Write ``content`` to ``path`` with mode 0600, replacing a file the tarball shipped
    (never following a link it may have planted)."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_symlink() or path.is_dir():
            raise ArtifactError(f"the release contains {path.name!r} as a link or directory")
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(content)
    return path


def secure_delete(root: Path) -> list[str]:
    """Overwrite every regular file under ``root`` with zeros, then remove the tree.

    Returns the problems met (logged by the caller, never raised over a task's outcome).
    Only a directory the agent made is deleted: ``root`` must be a real directory (not a
    link to one) owned by the agent's user and private (mode 0700, as
    :func:`make_private_dir` makes it); anything else is left alone and reported. The
    walk never follows a link: every entry is opened relative to its directory's file
    descriptor with ``O_NOFOLLOW``, and a file is overwritten only when the file opened
    is the one inspected (same st_dev and st_ino), a regular file with one link (zeros
    written through a hard link would reach a file outside the tree). Links, devices and
    sockets are unlinked, never opened.

    Overwriting in place is best effort: copy-on-write file systems, SSD wear levelling
    and snapshots may keep old blocks; see docs/operator.md.
    """
    problems: list[str] = []
    parent, name = str(root.parent), root.name
    try:
        parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return problems
    except OSError as exc:
        return [f"{parent}: {exc.strerror or exc}"]
    try:
        try:
            info = os.lstat(name, dir_fd=parent_fd)
        except FileNotFoundError:
            return problems
        refusal = _not_ours(info)
        if refusal:
            return [f"{root}: {refusal}; left alone"]
        try:
            fd = _open_dir(name, parent_fd, info)
        except OSError as exc:
            return [f"{root}: {exc.strerror or exc}; left alone"]
        try:
            _empty_dir(fd, str(root), problems)
        finally:
            os.close(fd)
        try:
            os.rmdir(name, dir_fd=parent_fd)
        except OSError as exc:
            problems.append(f"{root}: {exc.strerror or exc}")
    finally:
        os.close(parent_fd)
    return problems


def _not_ours(info: os.stat_result) -> str:
    """Why a would-be work dir is not one the agent made ('' when it is)."""
    if stat.S_ISLNK(info.st_mode):
        return "a link, not a directory the agent made"
    if not stat.S_ISDIR(info.st_mode):
        return "not a directory"
    if info.st_uid != os.geteuid():
        from wrktalk_agent.workdir import owner_name

        return f"owned by {owner_name(info.st_uid)}, not by the agent's user"
    if stat.S_IMODE(info.st_mode) & 0o077:
        return f"mode {stat.S_IMODE(info.st_mode):04o}, not a private directory the agent made"
    return ""


def _open_dir(name: str, dir_fd: int, seen: os.stat_result) -> int:
    """Open directory ``name`` without following a link; it must be the one inspected."""
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
    opened = os.fstat(fd)
    if (opened.st_dev, opened.st_ino) != (seen.st_dev, seen.st_ino):
        os.close(fd)
        raise OSError(0, "replaced while it was being deleted")
    return fd


def _empty_dir(fd: int, label: str, problems: list[str]) -> None:
    with contextlib.suppress(OSError):  # a read-only directory would keep its entries
        os.fchmod(fd, 0o700)
    for name in os.listdir(fd):
        path = os.path.join(label, name)
        try:
            info = os.lstat(name, dir_fd=fd)
            if stat.S_ISDIR(info.st_mode):
                child = _open_dir(name, fd, info)
                try:
                    _empty_dir(child, path, problems)
                finally:
                    os.close(child)
                os.rmdir(name, dir_fd=fd)
                continue
            if stat.S_ISREG(info.st_mode) and info.st_size and info.st_nlink == 1:
                _overwrite(name, fd, info)
            os.unlink(name, dir_fd=fd)
        except OSError as exc:
            problems.append(f"{path}: {exc.strerror or exc}")


def _overwrite(name: str, dir_fd: int, seen: os.stat_result) -> None:
    flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except PermissionError:  # a read-only file of ours: the directory is ours and private
        os.chmod(name, 0o600, dir_fd=dir_fd)
        fd = os.open(name, flags, dir_fd=dir_fd)
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (seen.st_dev, seen.st_ino) or not stat.S_ISREG(
            opened.st_mode
        ):
            raise OSError(0, "replaced while it was being overwritten; not overwritten")
        zeros = bytes(min(opened.st_size, 1024 * 1024))
        remaining = opened.st_size
        while remaining > 0:
            remaining -= os.write(fd, zeros[: min(remaining, len(zeros))])
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Materialized:
    """A release fetched, verified and extracted: ``root`` holds its files, ``.env`` and
    ``values.yaml`` (0600); ``env_data``/``values_data`` are those secrets, for redaction."""

    root: Path
    fetched: FetchedArtifact
    files: int
    size: int
    signature: str
    env_data: str | None
    values_data: str | None


async def materialize(
    repo: Any,
    artifact: ArtifactInfo,
    workdir: Path,
    *,
    trusted_keys: list[Any],
    max_artifact_bytes: int,
    max_members: int,
    max_extracted_bytes: int,
) -> Materialized:
    """Fetch ``artifact`` into ``workdir`` (private, made by :func:`make_private_dir`),
    check its sha256 and its signature over all it consists of, extract it safely and
    write its ``.env`` and ``values.yaml``. Raises :class:`ArtifactError`. The caller
    deletes ``workdir``."""
    fetched = await fetch_artifact(repo, artifact, workdir, max_bytes=max_artifact_bytes)
    # what is verified is what is used: these very texts are written below
    env_data, values_data = await repo.release_secrets(artifact.id)
    signature = check_signature(artifact, fetched.sha256, env_data, values_data, trusted_keys)
    root = workdir / RELEASE_DIR
    files, size = await asyncio.to_thread(
        extract_release, fetched.path, root, max_members=max_members, max_bytes=max_extracted_bytes
    )
    fetched.path.unlink()
    if env_data is not None:
        write_secret_file(root / ENV_FILE, env_data)
    if values_data is not None:
        write_secret_file(root / VALUES_FILE, values_data)
    return Materialized(root, fetched, files, size, signature, env_data, values_data)
