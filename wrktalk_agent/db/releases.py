"""Releases: storing and reading them, the artifact's bytes (read in slices from one
snapshot), and the current/previous flags an outcome moves (:class:`FlagChange`).
Statements: :mod:`wrktalk_agent.db.queries.releases`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from uuid import UUID

import asyncpg

from wrktalk_agent.db.base import RepositoryBase, bounded
from wrktalk_agent.db.models import ArtifactInfo
from wrktalk_agent.db.queries import releases as q


@dataclass(frozen=True)
class FlagChange:
    """How the outcome moves the release flags: ``promote`` makes a release current (the
    old current becomes previous); ``demote_current`` (nothing of the current release
    runs any more) makes the current release previous and leaves none current."""

    promote: UUID | None = None
    demote_current: bool = False


async def apply_flags(conn: asyncpg.Connection, change: FlagChange) -> None:
    if change.promote is not None:
        await promote_release(conn, change.promote)
    elif change.demote_current:
        await conn.execute(q.CLEAR_PREVIOUS_IF_CURRENT)
        await conn.execute(q.CURRENT_TO_PREVIOUS)


async def promote_release(conn: asyncpg.Connection, release_id: UUID) -> None:
    """Make ``release_id`` current; the old current becomes previous (redeploying the
    current release only refreshes applied_at). Call in a transaction."""
    await conn.execute(q.CLEAR_PREVIOUS, release_id)
    await conn.execute(q.DEMOTE_CURRENT, release_id)
    await conn.execute(q.PROMOTE, release_id)


class ReleasesMixin(RepositoryBase):
    """Releases and their artifacts."""

    async def add_release(
        self,
        *,
        version: str,
        chart_type: str,
        data: bytes,
        sha256: str,
        env_data: str | None = None,
        values_data: str | None = None,
        signature: str | None = None,
    ) -> ArtifactInfo:
        row = await self.pool.fetchrow(
            q.INSERT_RELEASE, version, chart_type, data, env_data, values_data, sha256, signature
        )
        assert row is not None
        return ArtifactInfo.model_validate(dict(row))

    @bounded
    async def release_by_id(self, release_id: UUID) -> ArtifactInfo | None:
        return self._artifact(await self.pool.fetchrow(q.RELEASE_BY_ID, release_id))

    @bounded
    async def release_by_version(self, version: str) -> ArtifactInfo | None:
        return self._artifact(await self.pool.fetchrow(q.RELEASE_BY_VERSION, version))

    @bounded
    async def current_release(self) -> ArtifactInfo | None:
        return self._artifact(await self.pool.fetchrow(q.CURRENT_RELEASE))

    @bounded
    async def previous_release(self) -> ArtifactInfo | None:
        return self._artifact(await self.pool.fetchrow(q.PREVIOUS_RELEASE))

    async def list_releases(self, limit: int = 100) -> list[ArtifactInfo]:
        rows = await self.pool.fetch(q.LIST_RELEASES, limit)
        return [ArtifactInfo.model_validate(dict(r)) for r in rows]

    async def release_secrets(self, release_id: UUID) -> tuple[str | None, str | None]:
        row = await self.pool.fetchrow(q.RELEASE_SECRETS, release_id)
        return (row["env_data"], row["values_data"]) if row else (None, None)

    async def set_release_signature(
        self, release_id: UUID, signature: str, previous: str | None
    ) -> bool:
        """Store a release's signature unless it changed since ``previous`` was read."""
        return (
            await self.pool.fetchval(q.SET_RELEASE_SIGNATURE, release_id, signature, previous)
            is not None
        )

    @staticmethod
    def _artifact(row: asyncpg.Record | None) -> ArtifactInfo | None:
        return ArtifactInfo.model_validate(dict(row)) if row else None

    async def artifact_chunks(
        self, artifact_id: UUID, size: int, chunk_bytes: int
    ) -> AsyncIterator[bytes]:
        """A release's bytes in slices of ``chunk_bytes``, all read from one snapshot (a
        row replaced meanwhile cannot be mixed in); one round trip when it fits in one.
        Close the iterator (``contextlib.aclosing``) when stopping early."""
        async with self.pool.acquire() as conn:
            if size <= chunk_bytes:  # no transaction needed
                data = await conn.fetchval(q.ARTIFACT_WHOLE, artifact_id)
                if data:
                    yield data
                return
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                statement = await conn.prepare(q.ARTIFACT_SLICE)
                for offset in range(1, size + 1, chunk_bytes):
                    chunk = await statement.fetchval(artifact_id, offset, chunk_bytes)
                    if not chunk:
                        return
                    yield chunk
