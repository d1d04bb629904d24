"""The task detail screen: a task's facts, its step timeline, its error, its output and
its (masked) result."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Static

from wrktalk_agent.safe_text import visible, visible_value
from wrktalk_agent.tui import format as fmt
from wrktalk_agent.tui.data import DashboardSource, SourceUnavailable
from wrktalk_agent.tui.messages import DetailFailed, DetailLoaded
from wrktalk_agent.tui.snapshot import OutputLine, TaskDetail
from wrktalk_agent.tui.table import KeyedTable

if TYPE_CHECKING:
    from wrktalk_agent.db.models import Task, TaskEvent

#: Lines of a tool's output shown in the detail screen (the result keeps a bounded tail).
OUTPUT_TAIL_LINES = 40
_FINISHED_STEP = {"succeeded", "failed", "skipped"}


class Timeline(KeyedTable):
    """A task's steps, oldest first."""

    COLUMNS = tuple(
        (label, label.lower()) for label in ("Time", "Took", "Step", "Status", "Message")
    )


class TaskDetailScreen(Screen[None]):
    """One task: its facts, the step timeline, the error and the (masked) result. Reloads
    while the task is pending or running."""

    BINDINGS = [
        Binding("escape,backspace", "app.pop_screen", "Back"),
        Binding("ctrl+r", "reload", "Refresh"),
    ]

    def __init__(self, source: DashboardSource, task_id: UUID, refresh_interval: float) -> None:
        super().__init__()
        self.source = source
        self.task_id = task_id
        self.refresh_interval = refresh_interval
        self._timer: Timer | None = None
        self.detail: TaskDetail | None = None
        self._placed = False

    def compose(self) -> ComposeResult:
        yield Static(Text(f"task {self.task_id} · loading…"), id="detail-header")
        yield Timeline(id="timeline")
        with VerticalScroll(id="detail-body"):
            yield Static(id="detail-error")
            yield Static(id="detail-live")
            yield Static(id="detail-output")
            yield Static(id="detail-result")
        yield Static(id="detail-status")
        yield Footer()

    def on_mount(self) -> None:
        self.load()

    def action_reload(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        self.load()

    @work(exclusive=True, group="detail")
    async def load(self) -> None:
        try:
            detail = await self.source.detail(self.task_id)
        except SourceUnavailable as exc:
            self.post_message(DetailFailed(str(exc)))
        else:
            self.post_message(DetailLoaded(detail))

    @on(DetailLoaded)
    def show_detail(self, message: DetailLoaded) -> None:
        status = self.query_one("#detail-status", Static)
        status.remove_class("error")
        status.update("")
        self.detail = message.detail
        if message.detail is None:
            self.query_one("#detail-header", Static).update(
                Text(f"task {self.task_id} no longer exists", style="bold red")
            )
            return
        task, events, now = message.detail.task, message.detail.events, message.detail.now
        self.query_one("#detail-header", Static).update(header_text(task, now))
        # times of day, with the date only when a task runs past midnight
        day = task.picked_up_at or task.created_at or now
        output = message.detail.output
        events = message.detail.steps  # the output has a pane of its own
        took = step_durations(events, task, now)
        self.query_one("#timeline", KeyedTable).replace_rows(
            [
                (
                    str(event.id),
                    (
                        Text(fmt.clock_time(event.created_at, day)),
                        Text(event_took),
                        fmt.plain(event.step, "bold"),
                        fmt.event_status_text(event.status),
                        fmt.plain(fmt.mask_secrets(event.message)),
                    ),
                )
                for event, event_took in zip(events, took, strict=True)
            ]
        )
        error = self.query_one("#detail-error", Static)
        error.display = bool(task.error_message)
        # errors quote tool output and URLs: masked like the result
        error_text = visible(fmt.mask_secrets(task.error_message or ""), newlines=True)
        error.update(Text.assemble(("Error\n", "bold"), (error_text, "red")))
        live = self.query_one("#detail-live", Static)
        live_text = recovery_text(task.result)
        live.display = live_text is not None
        live.update(live_text or "")
        pane = self.query_one("#detail-output", Static)
        if not output and task.status == "failed":
            # no live output recorded (an older agent): the end of the deployer's output
            output = result_output(task.result, day)
        pane.display = bool(output) or task.status == "inProgress"
        pane.update(output_text(output, now, running=task.status == "inProgress"))
        self.query_one("#detail-result", Static).update(result_text(task.result))
        timeline = self.query_one("#timeline", KeyedTable)
        body = self.query_one("#detail-body", VerticalScroll)
        if task.status == "failed" and not self._placed:
            # a failed task opens on its error: the failing step selected, the error and
            # the end of the output at the top of the body
            self._placed = True
            failed = [i for i, e in enumerate(events) if e.status == "failed"]
            if failed:
                timeline.move_cursor(row=failed[0])
            body.scroll_home(animate=False)
        elif task.status == "inProgress":
            timeline.move_cursor(row=max(timeline.row_count - 1, 0))  # follow the newest
            body.scroll_home(animate=False)
        if task.status in ("pending", "inProgress"):
            self._timer = self.set_timer(self.refresh_interval, self.load)

    @on(DetailFailed)
    def show_failure(self, message: DetailFailed) -> None:
        status = self.query_one("#detail-status", Static)
        status.add_class("error")
        status.update(Text(f"✖ {visible(message.error)} · retrying"))
        self._timer = self.set_timer(self.refresh_interval, self.load)


def header_text(task: Task, now: datetime) -> Text:
    end = task.completed_at or (now if task.status == "inProgress" else None)
    text = Text.assemble(
        (visible(f"{task.type} {task.release_version or ''}".rstrip()), "bold"),
        "  ",
        fmt.status_text(task.shown_status),
        ("  task ", "dim"),
        str(task.id),
        "\n",
        ("created ", "dim"),
        fmt.full_time(task.created_at),
        ("   due ", "dim"),
        fmt.full_time(task.execute_after) if task.execute_after else "now",
        "\n",
        ("picked up ", "dim"),
        fmt.full_time(task.picked_up_at),
        ("   by ", "dim"),
        visible(task.claimed_by or "—"),
        ("   took ", "dim"),
        fmt.duration(task.picked_up_at, end),
        "\n",
        ("completed ", "dim"),
        fmt.full_time(task.completed_at),
        ("   heartbeat ", "dim"),
        fmt.age(task.last_heartbeat, now),
    )
    return text


def recovery_text(result: dict[str, Any] | None) -> Text | None:
    """What an agent found live after it took over an interrupted or abandoned task, and
    what the operator should do next (``result.live`` and ``result.next_step``)."""
    if not result or not isinstance(result.get("live"), dict):
        return None
    live = visible_value(fmt.mask_secrets(result["live"]))
    state = str(live.get("state") or "unknown")
    text = Text("Recovered after an interruption\n", style="bold yellow")
    text.append("live now: ", style="dim")
    text.append(visible(live.get("version") or "nothing"), style="bold")
    text.append(f" ({visible(state)})", style="green" if state == "deployed" else "bold red")
    if live.get("detail"):
        text.append(f" · {visible(live['detail'])}")
    next_step = result.get("next_step")
    if next_step:
        text.append("\nnext: ", style="bold")
        text.append(visible(fmt.mask_secrets(str(next_step)), newlines=True))
    return text


def result_output(result: dict[str, Any] | None, at: datetime) -> list[OutputLine]:
    """The deployer's output tail kept in a task result, as output lines."""
    deployer = (result or {}).get("deployer")
    text = deployer.get("output") if isinstance(deployer, dict) else None
    if not isinstance(text, str):
        return []
    return [OutputLine(at, "deploy", line) for line in text.splitlines() if line.strip()]


def output_text(lines: list[OutputLine], now: datetime, *, running: bool) -> Text:
    """The end of what the task's commands printed (masked), newest last."""
    shown = lines[-OUTPUT_TAIL_LINES:]
    cut = f", last {len(shown)} of {len(lines)} lines" if len(shown) < len(lines) else ""
    text = Text(f"Output{cut}" + (" (live)" if running else ""), style="bold")
    if not lines:
        text.append("\nno output yet", style="dim")
    for line in shown:
        text.append("\n")
        text.append(fmt.clock_time(line.at, now) + " ", style="dim")
        text.append(visible(fmt.mask_secrets(line.text)))
    return text


def step_durations(events: list[TaskEvent], task: Task, now: datetime) -> list[str]:
    """How long each step took, written on the row that started it: from a ``started``
    event to the next finishing event of the same step. A step still open is counted up
    to now while the task runs (``…`` marks it); other rows stay blank."""
    took = [""] * len(events)
    for index, event in enumerate(events):
        if event.status != "started":
            continue
        end = next(
            (
                later.created_at
                for later in events[index + 1 :]
                if later.step == event.step and later.status in _FINISHED_STEP
            ),
            None,
        )
        if end is not None:
            took[index] = fmt.duration(event.created_at, end)
        elif task.status == "inProgress":
            took[index] = fmt.duration(event.created_at, now) + "…"
        elif task.completed_at is not None:
            took[index] = fmt.duration(event.created_at, task.completed_at)
    return took


def result_text(result: dict[str, Any] | None) -> Text:
    """The task result with secrets masked, one ``path: value`` line per fact (small
    objects stay on one line); multi-line strings (a deployer's output) follow as text,
    their last lines only."""
    if not result:
        return Text("no result recorded", style="dim")
    lines: list[str] = []
    outputs: list[tuple[str, str]] = []
    _flatten(visible_value(fmt.mask_secrets(result), newlines=True), "", lines, outputs)
    text = Text("Result\n", style="bold")
    text.append("\n".join(lines))
    for path, output in outputs:
        tail = output.rstrip("\n").splitlines()
        shown = tail[-OUTPUT_TAIL_LINES:]
        cut = f", last {len(shown)} of {len(tail)} lines" if len(shown) < len(tail) else ""
        text.append(f"\n\n{path}{cut}\n", style="bold")
        text.append("\n".join(shown))
    return text


def _flatten(value: Any, path: str, lines: list[str], outputs: list[tuple[str, str]]) -> None:
    if isinstance(value, str) and "\n" in value.strip():
        outputs.append((path, value))
    elif isinstance(value, dict) and (not path or not _is_flat(value)):
        for key, item in value.items():
            _flatten(item, f"{path}.{key}" if path else str(key), lines, outputs)
    elif isinstance(value, list) and not _is_flat(value):
        for index, item in enumerate(value):
            _flatten(item, f"{path}[{index}]", lines, outputs)
    else:
        shown = value if isinstance(value, str) else json.dumps(value, default=str)
        lines.append(f"{path}: {shown}")


def _is_flat(value: dict[str, Any] | list[Any]) -> bool:
    items = value.values() if isinstance(value, dict) else value
    return not any(
        isinstance(item, dict | list) or (isinstance(item, str) and "\n" in item.strip())
        for item in items
    )
