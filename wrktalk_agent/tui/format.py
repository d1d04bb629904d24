"""How the dashboard writes times, sizes, statuses and task results (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from rich.text import Text

from wrktalk_agent.safe_text import visible
from wrktalk_agent.secrets import mask_mapping

#: One colour per task status, so a failed deploy catches the eye among completed ones.
STATUS_STYLES: dict[str, str] = {
    "pending": "yellow",
    "inProgress": "bold cyan",
    "completed": "green",
    "failed": "bold red",
    "cancelled": "magenta",
}

EVENT_STYLES: dict[str, str] = {
    "started": "cyan",
    "succeeded": "green",
    "failed": "bold red",
    "skipped": "dim",
    "info": "",
}


def mask_secrets(value: Any) -> Any:
    """A copy of a JSON value with the values of secret names and credentials inside text
    masked (:mod:`wrktalk_agent.secrets` decides what is secret).

    The result column is written by plugins we do not control: the dashboard is the last
    place a leaked password could be shown, so it masks whatever looks like one.
    """
    return mask_mapping(value)


def clock_time(moment: datetime | None, now: datetime) -> str:
    """UTC time of day for today's moments, month-day and minutes for older ones."""
    if moment is None:
        return "—"
    moment, now = moment.astimezone(UTC), now.astimezone(UTC)
    if moment.date() == now.date():
        return moment.strftime("%H:%M:%S")
    if moment.year == now.year:
        return moment.strftime("%m-%d %H:%M")
    return moment.strftime("%Y-%m-%d")


def full_time(moment: datetime | None) -> str:
    return "—" if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def span(seconds: float) -> str:
    """A compact length of time: ``850ms``, ``42s``, ``3m05s``, ``2h10m``, ``3d4h``."""
    if seconds < 0:
        seconds = 0
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 10:
        return f"{seconds:.1f}".removesuffix(".0") + "s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h"


def duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "—"
    return span((end - start).total_seconds())


def age(moment: datetime | None, now: datetime) -> str:
    """Whole seconds: tenths of a second of an age are noise."""
    if moment is None:
        return "—"
    return span(round((now - moment).total_seconds())) + " ago"


def is_stale(moment: datetime | None, now: datetime, stale_after: float) -> bool:
    return moment is None or now - moment > timedelta(seconds=stale_after)


def plain(value: object, style: str = "") -> Text:
    """Data as a Text: never read as markup, control characters made visible."""
    return Text(visible(value), style=style)


def status_text(status: str) -> Text:
    return plain(status, STATUS_STYLES.get(status, ""))


def event_status_text(status: str) -> Text:
    return plain(status, EVENT_STYLES.get(status, ""))


def first_line(text: str | None, width: int = 120) -> str:
    """The first line, cut to ``width``, control characters made visible."""
    if not text:
        return ""
    line = text.strip().splitlines()[0] if text.strip() else ""
    line = visible(line[: width * 4])  # escapes lengthen the text: cut after them too
    return line if len(line) <= width else line[: width - 1] + "…"


def human_size(size: int) -> str:
    if size < 1000:
        return f"{size} B"
    amount = size / 1000
    for unit in ("kB", "MB"):
        if amount < 1000:
            return f"{amount:.1f} {unit}"
        amount /= 1000
    return f"{amount:.1f} GB"


def short_sha(sha256: str) -> str:
    return sha256[:12]


def short_id(value: object) -> str:
    return str(value)[:8]


def parse_when(text: str, now: datetime) -> datetime | None:
    """An operator's "when" for a deploy: empty means now (``None``); otherwise an ISO 8601
    time, read as UTC when it has no offset. Raises ``ValueError`` for text that is not a
    time or a time in the past (a mistyped year would otherwise deploy at once)."""
    text = text.strip()
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {text!r} (e.g. 2025-06-01T22:00)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment <= now:
        raise ValueError(f"{full_time(moment)} is in the past; leave the field empty to deploy now")
    return moment
