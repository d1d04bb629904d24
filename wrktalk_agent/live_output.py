"""A task's live output: what its commands print, in its timeline while it runs.

The pipeline installs :meth:`LiveOutput.line` as :data:`wrktalk_agent.process.output_sink`
for the duration of a task, so the output of every plugin's commands (helm, docker
compose, a release's deploy script) arrives here line by line. Lines are

* masked: each passes the task's :class:`~wrktalk_agent.pipeline.Secrets` before it is
  kept (and the timeline masks every message again);
* bounded: at most :data:`LINE_CHARS` characters a line, :data:`MAX_LINES` lines and
  :data:`MAX_BYTES` bytes a task (the end of the output is in the task result anyway);
* throttled: buffered, and written at most once per :data:`FLUSH_INTERVAL` as timeline
  entries of the running step with status ``info`` and the message prefixed with
  :data:`OUTPUT_MARK`, each with the time it was printed, in one statement.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from wrktalk_agent import process
from wrktalk_agent.safe_text import storable

if TYPE_CHECKING:
    from wrktalk_agent.pipeline import Secrets, Timeline

#: Marks a timeline message as a line of a command's output (readers strip it).
OUTPUT_MARK = "│ "
#: Seconds between two writes of output lines (at most one write per interval).
FLUSH_INTERVAL = 1.0
#: Longest line kept, in characters (the rest is cut and marked with "…").
LINE_CHARS = 400
#: Most output lines a task records in its timeline.
MAX_LINES = 2000
#: Most bytes of output a task records in its timeline.
MAX_BYTES = 256 * 1024
#: How long the end of a task waits for a write in flight before leaving the rest to the
#: outcome's transaction.
STOP_WAIT = 2.0


def is_output(message: str) -> bool:
    """Whether a timeline message is a line of output (see :data:`OUTPUT_MARK`)."""
    return message.startswith(OUTPUT_MARK)


def output_text(message: str) -> str:
    return message.removeprefix(OUTPUT_MARK)


class LiveOutput:
    """The throttled sink of one task run; use :meth:`streaming` around its steps."""

    def __init__(
        self,
        timeline: Timeline,
        secrets: Secrets,
        log: Any,
        step: Callable[[], str],
        *,
        interval: float = FLUSH_INTERVAL,
    ) -> None:
        self.timeline = timeline
        self.secrets = secrets
        self.log = log
        self.step = step
        self.interval = interval
        self.pending: list[tuple[datetime, str, str]] = []
        self.lines = 0
        self.bytes = 0
        self.dropped = 0
        self._cut_noted = False

    def line(self, text: str) -> None:
        """The sink: keep one line (called while a command runs; never blocks)."""
        if self.lines >= MAX_LINES or self.bytes >= MAX_BYTES:
            self.dropped += 1
            return
        # masked before it is cut: a cut could leave half a secret that no longer matches
        text = storable(self.secrets.redact(text), limit=LINE_CHARS)
        self.lines += 1
        self.bytes += len(text.encode())
        self.pending.append((datetime.now(UTC), self.step(), text))

    @contextlib.asynccontextmanager
    async def streaming(self) -> AsyncIterator[None]:
        """Commands run inside stream here; the lines reach the timeline every interval,
        and what is left at the end is handed to the timeline (written with the outcome)."""
        stop = asyncio.Event()
        writer = asyncio.create_task(self._write_every_interval(stop), name="live-output")
        try:
            with process.streaming_output(self.line, self.secrets):
                yield
        finally:
            stop.set()
            done, _ = await asyncio.wait({writer}, timeout=STOP_WAIT)
            if not done:
                writer.cancel()
            self._hand_over()

    async def _write_every_interval(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
            if stop.is_set():
                return
            if self._hand_over():
                # one statement for everything buffered; an outage only delays it
                await self.timeline.flush(timeout=max(self.interval * 5, 5.0))

    def _hand_over(self) -> int:
        """Move the buffered lines into the timeline; returns how many."""
        batch, self.pending = self.pending, []
        for at, step, text in batch:
            self.timeline.append(step, "info", OUTPUT_MARK + text, at=at)
        if self.dropped and not self._cut_noted:
            self._cut_noted = True
            step = batch[-1][1] if batch else self.step()
            self.timeline.append(
                step,
                "info",
                f"output cut after {self.lines} lines: the rest is not recorded live "
                "(the task result keeps the end of it)",
            )
        if batch:
            self.log.info("deploy.output", lines=len(batch), last=batch[-1][2])
        return len(batch)
