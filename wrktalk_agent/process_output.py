"""What commands print: the bounded tail every result keeps, and the lines streamed to
the running task's sink while they run, the task's secrets masked before any cut (public
through :mod:`wrktalk_agent.process`)."""

from __future__ import annotations

import codecs
import contextlib
import contextvars
from collections.abc import Callable, Iterator

from wrktalk_agent.redact import Masker, masked_tail, merged_spans, safe_cut
from wrktalk_agent.safe_text import storable

#: How much of a command's output is kept for task results and errors.
TAIL_BYTES = 8 * 1024
#: Output read beyond the tail, so that the secrets are masked before the tail is cut (a
#: cut through a secret leaves a piece that no longer matches).
TAIL_MARGIN_BYTES = 16 * 1024

#: Where the lines commands print go while they run (besides the bounded tail every
#: :class:`~wrktalk_agent.process.CommandResult` keeps): the core sets a sink for the
#: duration of a task, so that every plugin's commands stream into the task's timeline
#: without the plugin doing anything. The sink is called with one line at a time (no line
#: end) and must not block.
output_sink: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar(
    "wrktalk_output_sink", default=None
)
#: A line longer than this is passed to the sink in pieces (a progress bar without line
#: ends must not grow a buffer without limit), in characters.
SINK_LINE_BYTES = 4 * 1024
#: The secrets of the running task: commands' output is masked before any cut (the tail
#: kept in :class:`~wrktalk_agent.process.CommandResult`, the pieces of an over-long line).
output_masker: contextvars.ContextVar[Masker | None] = contextvars.ContextVar(
    "wrktalk_output_masker", default=None
)


@contextlib.contextmanager
def streaming_output(
    sink: Callable[[str], None] | None, masker: Masker | None = None
) -> Iterator[None]:
    """Send the output lines of commands run in this context (and in tasks it creates)
    to ``sink`` while they run; ``masker`` names the secrets no cut may split. For the
    core."""
    token = output_sink.set(sink)
    mask_token = output_masker.set(masker) if masker is not None else None
    try:
        yield
    finally:
        output_sink.reset(token)
        if mask_token is not None:
            output_masker.reset(mask_token)


def tail(text: str, limit: int = TAIL_BYTES) -> str:
    """The end of ``text``, at most ``limit`` bytes of UTF-8, as storable text. Mask
    secrets first: a cut can leave half a secret that no longer matches."""
    text = storable(text, limit=max(limit, 1) * 4, keep="tail")
    return masked_tail(text, None, limit, head_cut=False)


class OutputTail:
    """The end of a command's output as it is read: :data:`TAIL_BYTES` plus a margin, so
    that the secrets of the task can be masked before the final cut."""

    def __init__(self, masker: Masker | None) -> None:
        self.masker = masker
        longest = masker.longest if masker is not None else 0
        self.keep = TAIL_BYTES + max(TAIL_MARGIN_BYTES, 4 * longest)
        self.data = bytearray()
        self.cut = False

    def feed(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > self.keep:
            del self.data[: len(self.data) - self.keep]
            self.cut = True

    def text(self, note: str = "") -> str:
        data = bytes(self.data)
        if self.cut:  # no half character at the start
            data = data.lstrip(bytes(range(0x80, 0xC0)))
        text = storable(data, limit=len(data) * 4 + 16) + note
        return masked_tail(text, self.masker, TAIL_BYTES, head_cut=self.cut)


class LineSplitter:
    """Cuts a command's output into lines for an :data:`output_sink`: a newline or a
    carriage return ends a line (progress bars redraw with the latter), blank lines are
    dropped, a line longer than :data:`SINK_LINE_BYTES` is passed on in pieces — never
    cut inside one of the task's secrets (``masker``): the last ``masker.longest``
    characters wait for the next chunk. Lines are storable text. A sink that raises is
    dropped: streaming is a view, never a reason for a command to fail."""

    def __init__(self, sink: Callable[[str], None], masker: Masker | None = None) -> None:
        self.sink: Callable[[str], None] | None = sink
        self.masker = masker
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        self.partial = ""

    def feed(self, chunk: bytes) -> None:
        self.partial += self.decoder.decode(chunk).replace("\r", "\n")
        *complete, self.partial = self.partial.split("\n")
        for line in complete:
            self._emit(line)
        hold = self.masker.longest if self.masker is not None else 0
        if len(self.partial) <= SINK_LINE_BYTES + hold:
            return
        spans = merged_spans(self.masker, self.partial) if self.masker is not None else []
        begin = 0
        while len(self.partial) - begin > SINK_LINE_BYTES + hold:
            at = begin + SINK_LINE_BYTES
            # at a space if there is one: a NAME=value the sink masks by its shape stays whole
            space = self.partial.rfind(" ", begin + SINK_LINE_BYTES // 2, at)
            end = safe_cut(spans, space + 1 if space != -1 else at, floor=begin)
            self._emit(self.partial[begin:end])
            begin = end
        self.partial = self.partial[begin:]

    def close(self) -> None:
        self.partial += self.decoder.decode(b"", final=True)
        if self.partial:
            self._emit(self.partial)
            self.partial = ""

    def _emit(self, line: str) -> None:
        text = storable(line.rstrip())
        if not text.strip() or self.sink is None:
            return
        try:
            self.sink(text)
        except Exception:
            self.sink = None
