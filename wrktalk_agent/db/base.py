"""What every section of the repository stands on: the pool, the settings, and the bound
on each call (:meth:`RepositoryBase.within`, :func:`bounded`). The sections
(:mod:`~wrktalk_agent.db.claims`, :mod:`~wrktalk_agent.db.outbox`, ...) are mixins of
:class:`RepositoryBase`; :class:`~wrktalk_agent.db.repository.Repository` joins them."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

import asyncpg

from wrktalk_agent.config import AgentSettings
from wrktalk_agent.db.connection import SERVER, create_pool, noting_connections


class DatabaseTimeout(TimeoutError):
    """A database call did not answer within its bound; its connection was abandoned."""


_P = ParamSpec("_P")
_T = TypeVar("_T")


class RepositoryBase:
    """An asyncpg pool and the settings, with the bound every call of the agent's loop
    runs under (:meth:`within`): a server that stops answering costs at most
    ``DB_TIMEOUT``, never the time a dead TCP link takes to be noticed."""

    def __init__(self, pool: asyncpg.Pool, settings: AgentSettings) -> None:
        self.pool = pool
        self.settings = settings
        self.closed = False
        self.call_timeout = settings.db_timeout
        self.server = SERVER

    async def within(self, timeout: float, call: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``call()`` for at most ``timeout`` seconds. When time is up its
        connections are terminated (closed locally, no round trip) rather than cancelled
        — asyncpg's cancel asks the server and waits for the network, which is what a
        link that drops packets never gives — and :class:`DatabaseTimeout` is raised."""
        with noting_connections() as used:
            job = asyncio.ensure_future(call())
        try:
            done, _ = await asyncio.wait({job}, timeout=max(0.0, timeout))
        except asyncio.CancelledError:
            job.cancel()
            for conn in used:
                conn.terminate()
            raise
        if job in done:
            return job.result()
        for conn in used:
            conn.terminate()
        job.cancel()
        # closed locally, the call ends at once; a connect still under way is cancelled
        await asyncio.wait({job}, timeout=1.0)
        if job.done() and not job.cancelled():
            job.exception()  # retrieved: it is the consequence of our terminate
        raise DatabaseTimeout(f"no answer from PostgreSQL within {timeout:g}s")

    @classmethod
    async def connect(
        cls, settings: AgentSettings, *, timeout: float = 10.0, tui: bool = False
    ) -> Self:
        """A pool on the main DSN; ``tui`` picks TUI_TARGET_SESSION_ATTRS when set."""
        return cls(await create_pool(settings, timeout=timeout, tui=tui), settings)

    async def close(self) -> None:
        self.closed = True
        await self.pool.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire() as conn:
            yield conn


_R = TypeVar("_R", bound=RepositoryBase)


def bounded(
    method: Callable[Concatenate[_R, _P], Coroutine[Any, Any, _T]],
) -> Callable[Concatenate[_R, _P], Coroutine[Any, Any, _T]]:
    """Run a repository method within ``DB_TIMEOUT`` (see :meth:`RepositoryBase.within`)."""

    @functools.wraps(method)
    async def wrapper(self: _R, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return await self.within(self.call_timeout, lambda: method(self, *args, **kwargs))

    return wrapper
