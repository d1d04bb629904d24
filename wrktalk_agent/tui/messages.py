"""Messages the dashboard's workers post; handlers update the widgets."""

from __future__ import annotations

from textual.message import Message

from wrktalk_agent.tui.snapshot import Snapshot, TaskDetail


class SnapshotLoaded(Message):
    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class FirstRowsLoaded(Message):
    """The newest tasks, read before the rest of the first snapshot: the task list is on
    screen while the other tables load."""

    def __init__(self, snapshot: Snapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class RefreshFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class TasksChanged(Message):
    """A NOTIFY arrived on the task channel (or the listener reconnected)."""


class ListenerState(Message):
    """``error`` is ``None`` while live updates are on."""

    def __init__(self, error: str | None) -> None:
        super().__init__()
        self.error = error


class ActionFinished(Message):
    """An operator's action was written (``ok``) or refused / failed (the reason)."""

    def __init__(self, text: str, *, ok: bool) -> None:
        super().__init__()
        self.text = text
        self.ok = ok


class DetailLoaded(Message):
    """``detail`` is ``None`` when the task no longer exists."""

    def __init__(self, detail: TaskDetail | None) -> None:
        super().__init__()
        self.detail = detail


class DetailFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error
