"""A task's live output: what its commands print, in its timeline while it runs.

The pipeline installs :meth:`LiveOutput.line` as :data:`wrktalk_agent.process.output_sink`
for the duration of a task, so the output of every plugin's commands (helm, docker
compose, a release's deploy script) arrives here line by line. Lines are

* masked: each passes the task's :class:`~wrktalk_agent.pipeline.redaction.Secrets` before it is
  kept (and the timeline masks every message again);
* bounded: at most :data:`LINE_CHARS` characters a line, :data:`MAX_LINES` lines and
  :data:`MAX_BYTES` bytes a task (the end of the output is in the task result anyway);
* in order: each line enters the task's timeline the moment it is printed, as an entry
  of the running step (status ``info``, the message prefixed with :data:`OUTPUT_MARK`),
  so it is stored before the entry that closes its step and a timeline is one total
  order — by id and by time;
* throttled: the timeline is written at most once per :data:`FLUSH_INTERVAL` while
  lines come, in one statement (and whatever is left with the step's close or the
  outcome).
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
    from wrktalk_agent.pipeline.redaction import Secrets
    from wrktalk_agent.pipeline.timeline import Timeline

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
        #: lines in the timeline since its last write started (for the throttled write)
        self.unwritten = 0
        self.last = ""
        self.lines = 0
        self.bytes = 0
        self.dropped = 0
        self._cut_noted = False

    def line(self, text: str) -> None:
        """The sink: keep one line (called while a command runs; never blocks)."""
        if self.lines >= MAX_LINES or self.bytes >= MAX_BYTES:
            self.dropped += 1
            self._note_cut()
            return
        # masked before it is cut: a cut could leave half a secret that no longer matches
        text = storable(self.secrets.redact(text), limit=LINE_CHARS)
        self.lines += 1
        self.bytes += len(text.encode())
        self.unwritten += 1
        self.last = text
        self.timeline.append(self.step(), "info", OUTPUT_MARK + text, at=datetime.now(UTC))

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
        """How many lines came since the last write (they are in the timeline already)."""
        count, self.unwritten = self.unwritten, 0
        if count:
            self.log.info("deploy.output", lines=count, last=self.last)
        return count

    def _note_cut(self) -> None:
        if self._cut_noted:
            return
        self._cut_noted = True
        self.timeline.append(
            self.step(),
            "info",
            f"output cut after {self.lines} lines: the rest is not recorded live "
            "(the task result keeps the end of it)",
        )
