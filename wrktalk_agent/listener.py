"""The agent's LISTEN connection: a NOTIFY on a task change wakes the poll loop.

The connection is its own (never a pooled one) and is kept up for the agent's life:
after a loss it is reconnected with backoff, and every (re)connection wakes the loop,
since NOTIFYs sent while it was away are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Callable, Collection
from typing import Any

import asyncpg

from wrktalk_agent.config import AgentSettings
from wrktalk_agent.db.repository import connect_listener, keepalive
from wrktalk_agent.db.schema import NOTIFY_CHANNEL
from wrktalk_agent.guard import describe

#: asyncpg's listener callback: (connection, pid, channel, payload)
NotifyCallback = Callable[[Any, int, str, object], None]


async def listen(
    settings: AgentSettings,
    *,
    wake: asyncio.Event,
    stop: asyncio.Event,
    connected: asyncio.Event,
    on_notify: NotifyCallback,
    log: Any,
) -> None:
    """Keep a LISTEN connection until ``stop``; after (re)connecting, ``wake`` the loop.
    ``connected`` is set while the connection is up."""
    attempt = 0
    while not stop.is_set():
        conn: asyncpg.Connection | None = None
        try:
            conn = await connect_listener(settings, timeout=10)
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _c, lost=lost: lost.set())
            await conn.add_listener(NOTIFY_CHANNEL, on_notify)
            attempt = 0
            connected.set()
            log.info("listener.connected")
            wake.set()  # anything inserted while we were away
            # a half-open TCP connection sends no FIN: ask the server now and then
            every = max(settings.poll_interval, 30.0)
            while not lost.is_set() and not conn.is_closed():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), timeout=every)
                if not lost.is_set():
                    await keepalive(conn, 10)
            log.warning("listener.lost")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure: log one line, back off, reconnect
            log.warning("listener.failed", error=describe(exc))
        finally:
            connected.clear()
            if conn is not None and not conn.is_closed():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), timeout=2)
        attempt += 1
        delay = min(30.0, 0.25 * 2 ** min(attempt, 7)) * random.uniform(0.8, 1.2)
        wake.set()  # poll at once: NOTIFYs may have been missed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)


def wakes(payload: object, ran: Collection[str]) -> bool:
    """Whether a task change's NOTIFY should wake the loop: not a claim (it frees
    nothing), nor the outcome of a task this agent ran (``ran``: the loop polled after
    it already)."""
    try:
        change = json.loads(str(payload))
        status, task_id = change.get("status"), str(change.get("id"))
    except (ValueError, AttributeError):
        status = task_id = None
    if status == "inProgress":
        return False
    return not (status in ("completed", "failed") and task_id in ran)
