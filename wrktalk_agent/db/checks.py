"""What ``db init``, ``db check``, ``check`` and the readiness probe ask: the schema (through
:mod:`wrktalk_agent.db.schema`), the role's privileges, whether the server answers.
Statements: :mod:`wrktalk_agent.db.queries.server`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from wrktalk_agent.db.base import RepositoryBase
from wrktalk_agent.db.queries import server as q
from wrktalk_agent.db.schema import (
    check_schema,
    init_schema,
    missing_constraints,
    release_type_constraints,
    stale_constraints,
)


class ChecksMixin(RepositoryBase):
    """The schema, the privileges, readiness."""

    async def check_schema(self) -> list[str]:
        async with self.pool.acquire() as conn:
            return await check_schema(conn)

    async def ping(self, timeout: float) -> None:
        """Raise unless the database answers within ``timeout`` seconds (readiness)."""
        async with self.pool.acquire(timeout=timeout) as conn:
            await asyncio.wait_for(conn.fetchval(q.PING), timeout)

    async def table_privileges(
        self, wanted: Sequence[tuple[str, str]]
    ) -> tuple[list[bool | None], dict[str, Any]]:
        """Whether the role has each (table, privilege), ``None`` for a missing table; and
        the other privileges the agent uses (schema, sequence, advisory locks, role)."""
        rows = await self.pool.fetch(
            q.TABLE_PRIVILEGES, [table for table, _ in wanted], [priv for _, priv in wanted]
        )
        other = await self.pool.fetchrow(q.OTHER_PRIVILEGES)
        assert other is not None
        return [r["granted"] for r in rows], dict(other)

    async def init_schema(self) -> list[str]:
        async with self.pool.acquire() as conn:
            return await init_schema(conn)

    async def schema_problems(self) -> list[str]:
        """What `db init` would add or drop: :meth:`check_schema`, the CHECK constraints
        the agent relies on, and stale ones of an earlier `db init`."""
        async with self.pool.acquire() as conn:
            return (
                await check_schema(conn)
                + await missing_constraints(conn)
                + await stale_constraints(conn)
            )

    async def release_type_constraints(self) -> list[tuple[str, str]]:
        """(name, expression) of a backend's own CHECK constraints on release types."""
        async with self.pool.acquire() as conn:
            return await release_type_constraints(conn)
