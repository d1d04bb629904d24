"""Release tarballs and stored releases for tests (public as :mod:`wrktalk_agent.testing`)."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Mapping

from wrktalk_agent.db.models import ArtifactInfo
from wrktalk_agent.db.repository import Repository


def make_tarball(files: Mapping[str, bytes | str], *, gzip: bool = True) -> bytes:
    """A release tarball from ``{path: content}``; paths ending in ``/`` become directories
    and contents starting with ``#!`` become executable."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gzip else "w") as tar:
        for path, content in files.items():
            if path.endswith("/"):
                info = tarfile.TarInfo(path.rstrip("/"))
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
                continue
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o755 if data.startswith(b"#!") else 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def add_release(
    repo: Repository,
    version: str,
    files: Mapping[str, bytes | str] | None = None,
    *,
    chart_type: str = "compose",
    data: bytes | None = None,
    env_data: str | None = None,
    values_data: str | None = None,
    sha256: str | None = None,
    signature: str | None = None,
) -> ArtifactInfo:
    """Store a release built from ``files`` (or raw ``data``)."""
    if data is None:
        data = make_tarball(files or {"README": f"release {version}\n"})
    return await repo.add_release(
        version=version,
        chart_type=chart_type,
        data=data,
        sha256=sha256 or hashlib.sha256(data).hexdigest(),
        env_data=env_data,
        values_data=values_data,
        signature=signature,
    )
