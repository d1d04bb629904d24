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
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def bounded(call: Awaitable[T], seconds: float, what: str) -> T:
    """Await a backend method for at most ``seconds``. A hang becomes a
    :class:`BackendError` saying so, and so does any exception that is not already one
    (a bug in a plugin is a failed step, never a crashed agent). Cancellation passes."""
    try:
        async with asyncio.timeout(seconds):
            return await call
    except BackendError:
        raise
    except TimeoutError:
        raise BackendError(f"{what} did not finish within {seconds:g}s") from None
    except Exception as exc:
        raise BackendError(f"{what} failed: {describe(exc)}") from exc
