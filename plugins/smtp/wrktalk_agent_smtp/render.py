"""Turning a :class:`NotificationEvent` into a subject and text + HTML bodies."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2

from wrktalk_agent.interfaces import NotificationEvent, NotificationKind

TEXT_TEMPLATE = "body.txt.j2"
HTML_TEMPLATE = "body.html.j2"


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


def outcome_phrase(event: NotificationEvent) -> str:
    """The last words of the subject: what happened to the task."""
    kind = event.kind
    if kind in (NotificationKind.DEPLOY_SUCCEEDED, NotificationKind.ROLLBACK_SUCCEEDED):
        return "succeeded"
    if kind is NotificationKind.TASK_ABANDONED:
        return "abandoned"
    if kind is NotificationKind.AUTO_ROLLBACK:
        if event.rollback_error:
            return "failed, automatic rollback failed too"
        return f"failed, rolled back to {event.from_version or 'the previous release'}"
    return "failed"


def headline(event: NotificationEvent) -> str:
    """One sentence that opens the body, worded for the kind of event."""
    version = event.version or event.to_version or "(unknown)"
    previous = event.from_version or "the previous release"
    match event.kind:
        case NotificationKind.DEPLOY_SUCCEEDED:
            return f"Release {version} was deployed."
        case NotificationKind.DEPLOY_FAILED:
            return f"Deploying release {version} failed."
        case NotificationKind.ROLLBACK_SUCCEEDED:
            return f"The installation was rolled back to release {version}."
        case NotificationKind.ROLLBACK_FAILED:
            return f"Rolling back to release {version} failed."
        case NotificationKind.TASK_ABANDONED:
            return (
                f"The {event.task_type} of release {version} was abandoned: its agent "
                "stopped sending heartbeats. Check the installation before retrying."
            )
        case NotificationKind.AUTO_ROLLBACK:
            if event.rollback_error:
                # both causes on the first line: the site is in an unknown state
                cause = " ".join((event.error or "no cause recorded").split())
                rollback = " ".join(event.rollback_error.split())
                return (
                    f"Deploying release {version} failed ({cause}), and the automatic "
                    f"rollback to {previous} failed too ({rollback}). The installation "
                    "needs attention."
                )
            return f"Deploying release {version} failed; the agent rolled back to {previous}."
    return f"The {event.task_type} task ended: {event.outcome}."  # a kind added later


def subject(event: NotificationEvent) -> str:
    """E.g. ``[Acme WrkTalk] deploy 1.2.0 failed``."""
    words = [f"[{event.installation}]", event.task_type]
    if event.version:
        words.append(event.version)
    words.append(outcome_phrase(event))
    # A header must be one line; installation names come from configuration.
    return " ".join(" ".join(words).split())


def format_time(value: datetime | None) -> str:
    if value is None:
        return "-"
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    return value.strftime("%Y-%m-%d %H:%M:%S")


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


class Templates:
    """The two body templates: the shipped ones, or same-named files from ``override_dir``."""

    def __init__(self, override_dir: Path | None = None) -> None:
        loaders: list[jinja2.BaseLoader] = []
        if override_dir is not None:
            loaders.append(jinja2.FileSystemLoader(override_dir))
        loaders.append(jinja2.PackageLoader("wrktalk_agent_smtp", "templates"))
        loader = jinja2.ChoiceLoader(loaders)
        common: dict[str, Any] = {
            "loader": loader,
            # A typo in an operator's template must fail loudly, not send a blank field.
            "undefined": jinja2.StrictUndefined,
            "trim_blocks": True,
            "lstrip_blocks": True,
            "keep_trailing_newline": True,
        }
        html_env = jinja2.Environment(autoescape=True, **common)
        # The text part is not HTML: escaping would turn "a < b" into "a &lt; b" there.
        text_env = jinja2.Environment(autoescape=False, **common)  # noqa: S701
        for env in (html_env, text_env):
            env.filters["when"] = format_time
            env.filters["duration"] = format_seconds
        # Loaded now, so a broken override stops the agent at startup rather than
        # surfacing at the first deploy that needs an email.
        self.html = html_env.get_template(HTML_TEMPLATE)
        self.text = text_env.get_template(TEXT_TEMPLATE)

    def render(self, event: NotificationEvent) -> Rendered:
        total = None
        if event.started_at is not None:
            total = (event.finished_at - event.started_at).total_seconds()
        title = subject(event)
        context = {
            "event": event,
            "kind": event.kind.value,
            "headline": headline(event),
            "subject": title,
            "duration": total,
        }
        return Rendered(
            subject=title,
            text=self.text.render(context),
            html=self.html.render(context),
        )
