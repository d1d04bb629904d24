"""The dialogs: confirmation of an action that writes, the deploy dialog, the help."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from wrktalk_agent.db.models import ArtifactInfo
from wrktalk_agent.safe_text import visible
from wrktalk_agent.tui import format as fmt


class ConfirmDialog(ModalScreen[bool]):
    """Yes or no for an action that writes to the database, with the keys of every dialog
    of the dashboard: enter confirms, escape goes back (as in the deploy dialog)."""

    BINDINGS = [
        Binding("enter", "answer(True)", "Confirm", priority=True),
        Binding("escape", "answer(False)", "Back"),
    ]

    def __init__(self, title: str, body: Text, confirm_label: str) -> None:
        super().__init__()
        self.title_text = title
        self.body = body
        self.confirm_label = confirm_label

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(Text(self.title_text), classes="dialog-title")
            yield Static(self.body, classes="dialog-body")
            with Horizontal(classes="dialog-buttons"):
                yield Button(f"{self.confirm_label} (enter)", variant="error", id="confirm")
                yield Button("Back (esc)", id="back")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "confirm")


#: Every key of the dashboard, for the help screen: (where, keys, what).
HELP: tuple[tuple[str, str, str], ...] = (
    ("everywhere", "? / q", "this help / quit"),
    ("main", "1 2 3", "tasks, agents, releases tab"),
    ("main", "↑ ↓ pgup pgdn", "move in a table"),
    ("main", "enter", "open the selected task"),
    ("main", "/ / esc", "search tasks (id, version, type, status, agent, error) / clear"),
    ("main", "s / t", "filter by status / by type (each key cycles)"),
    ("main", "o", "sort: newest, oldest, status, version, type"),
    ("main", "l", "show or hide the running task's live output"),
    ("main", "ctrl+r", "refresh now"),
    ("main", "r", "request a rollback to the previous release *"),
    ("main", "d", "deploy the selected release (Releases tab) *"),
    ("main", "c", "cancel the selected task, if pending *"),
    ("task", "esc / ctrl+r", "back to the list / reload"),
    ("dialogs", "enter / esc", "confirm / back (nothing is written)"),
)


class HelpScreen(ModalScreen[None]):
    """Every key, in one table; any of escape, q or ? closes it."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss_help", "Close")]

    def __init__(self, *, read_only: bool = False) -> None:
        super().__init__()
        self.read_only = read_only

    def compose(self) -> ComposeResult:
        text = Text()
        where = ""
        for place, keys, what in HELP:
            if place != where:
                where = place
                text.append(f"{place}\n", style="bold underline")
            text.append(f"  {keys:<14}", style="bold cyan")
            text.append(f"{what}\n")
        note = "* hidden: the dashboard is read-only" if self.read_only else "* writes a task"
        text.append(note + "   ·   esc closes", style="dim")
        with Vertical(classes="dialog help") as box:
            box.border_title = "Keys"
            with VerticalScroll(classes="help-body"):
                yield Static(text)

    def action_dismiss_help(self) -> None:
        self.dismiss(None)


@dataclass(frozen=True)
class DeployChoice:
    """``execute_after`` ``None`` means as soon as an agent is free."""

    release: ArtifactInfo
    execute_after: datetime | None


class DeployDialog(ModalScreen[DeployChoice | None]):
    """Deploy a release now or at a time; the dialog is the confirmation."""

    BINDINGS = [Binding("escape", "dismiss_dialog", "Back")]

    def __init__(self, release: ArtifactInfo, current: str | None, now: datetime) -> None:
        super().__init__()
        self.release = release
        self.current = current
        self.now = now

    def compose(self) -> ComposeResult:
        release = self.release
        body = Text.assemble(
            (visible(release.chart_type), "bold"),
            f" · {fmt.human_size(release.size)}",
            f" · sha256 {visible(fmt.short_sha(release.sha256))} · ",
            ("signed", "green") if release.signature else ("not signed", "bold yellow"),
            "\n",
            ("live now: ", "dim"),
            visible(self.current or "none"),
        )
        if release.is_current:
            body.append("\nthis release is already live: it would be deployed again", "yellow")
        with Vertical(classes="dialog"):
            yield Label(Text(f"Deploy {visible(release.release_version)}?"), classes="dialog-title")
            yield Static(body, classes="dialog-body")
            yield Label("When (UTC, ISO 8601; empty = now):")
            yield Input(placeholder="e.g. 2025-06-01T22:00", id="when")
            yield Static(id="when-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Deploy (enter)", variant="error", id="confirm")
                yield Button("Back (esc)", id="back")

    def on_mount(self) -> None:
        self.query_one("#when", Input).focus()

    def action_dismiss_dialog(self) -> None:
        self.dismiss(None)

    @on(Input.Submitted)
    @on(Button.Pressed, "#confirm")
    def confirm(self) -> None:
        try:
            when = fmt.parse_when(self.query_one("#when", Input).value, self.now)
        except ValueError as exc:
            self.query_one("#when-error", Static).update(fmt.plain(exc, "bold red"))
            return
        self.dismiss(DeployChoice(self.release, when))

    @on(Button.Pressed, "#back")
    def back(self) -> None:
        self.dismiss(None)
