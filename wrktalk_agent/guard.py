"""Calling a plugin's backend: bounded in time, and any failure one readable error."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from wrktalk_agent.interfaces import BackendError

T = TypeVar("T")


def describe(exc: BaseException | None) -> str:
    """``TypeName: message`` (or the type name alone), for logs and task errors."""
    if exc is None:
        return ""
    text = " ".join(str(exc).split())  # one line, whatever the exception carried
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def bounded(call: Awaitable[T], seconds: float, what: str) -> T:
    """Await a backend method for at most ``seconds``. A hang becomes a
    :class:`BackendError` saying so, and so does any exception that is not already one
    (a bug in a plugin is a failed step, never a crashed agent). A cancellation the agent
    asked for passes; one the backend raised by itself is a failure like any other."""
    try:
        async with asyncio.timeout(seconds):
            return await call
    except BackendError:
        raise
    except TimeoutError:
        raise BackendError(f"{what} did not finish within {seconds:g}s") from None
    except asyncio.CancelledError:
        if cancel_requested():
            raise
        # the backend cancelled something of its own and let it escape: a failure
        raise BackendError(f"{what} was cancelled from within") from None
    except Exception as exc:
        raise BackendError(f"{what} failed: {describe(exc)}") from exc


def cancel_requested() -> bool:
    """Whether the running task was asked to stop (as opposed to a ``CancelledError``
    that a backend raised on its own)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
