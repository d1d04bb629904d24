"""The actions that write a task — rollback, deploy, cancel — started from the main
screen: the dialog that confirms each, then the write in a worker of the screen. The
outcome comes back to the screen as an :class:`ActionFinished` message.

The dialogs are imported when first opened: nothing here weighs on the first paint.
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import datetime
from typing import TYPE_CHECKING
from uuid import UUID

from rich.text import Text
from textual.widgets import TabbedContent

from wrktalk_agent.safe_text import visible
from wrktalk_agent.tui import format as fmt
from wrktalk_agent.tui.data import ActionRefused, SourceUnavailable
from wrktalk_agent.tui.messages import ActionFinished
from wrktalk_agent.tui.releases_tab import ReleasesTable

if TYPE_CHECKING:
    from wrktalk_agent.db.models import ArtifactInfo, Task
    from wrktalk_agent.tui.dialogs import DeployChoice
    from wrktalk_agent.tui.main_screen import MainScreen

#: Actions that write; hidden in read-only mode.
WRITE_ACTIONS = {"rollback", "deploy", "cancel_task"}

#: Why a task that is not pending is not cancelled, by status.
NOT_CANCELLED = {
    "inProgress": "it is running; an agent stops a deploy only on shutdown",
    "completed": "it has completed",
    "failed": "it has already failed",
}


class WriteActions:
    """The write actions of one main screen (see the module's docstring)."""

    def __init__(self, screen: MainScreen) -> None:
        self.screen = screen

    def allowed(self, action: str) -> bool | None:
        """Hidden (``False``) when read-only or on another tab, shown but disabled
        (``None``) when the selected row does not allow it (no release selected)."""
        if self.screen.read_only:
            return False
        active = self.screen.query_one(TabbedContent).active
        if action == "deploy":
            if active != "releases":
                return False
            allowed = self.selected_release() is not None
        elif action == "cancel_task":
            if active != "tasks":
                return False
            # always allowed: on a task that is not pending it says why nothing happens
            allowed = self.selected_task() is not None
        else:
            allowed = True
        return True if allowed else None

    def selected_task(self) -> Task | None:
        snapshot = self.screen.snapshot
        if snapshot is None:
            return None
        key = self.screen.tasks.table.selected_key
        return next((t for t in snapshot.tasks if str(t.id) == key), None)

    def selected_release(self) -> ArtifactInfo | None:
        """The release selected in the Releases tab (built when first shown)."""
        table = next(self.screen.query(ReleasesTable).results(), None)
        return None if table is None else table.selected_release(self.screen.snapshot)

    def _write(self, work: Awaitable[None]) -> None:
        """One write at a time, as a worker of the screen."""
        self.screen.run_worker(work, group="action", exclusive=True)

    # -- rollback --------------------------------------------------------------------
    def rollback(self) -> None:
        from wrktalk_agent.tui.dialogs import ConfirmDialog

        screen, snapshot = self.screen, self.screen.snapshot
        if snapshot is None:
            screen.notify("No data from the database yet.", severity="warning")
            return
        state = snapshot.installation
        if state.previous_id is None:
            screen.notify("There is no previous release to roll back to.", severity="warning")
            return
        previous_id = state.previous_id
        body = Text.assemble(
            "Queue a rollback from ",
            (visible(state.current_version or "none"), "bold"),
            " to ",
            (visible(state.previous_version or "?"), "bold"),
            ".\n",
            "An agent will put the site in maintenance mode while it runs.",
        )
        body.append("\n")
        body.append_text(rollback_timing(state.due_count, len(snapshot.running)))

        def confirmed(yes: bool | None) -> None:
            if yes:
                self._write(self._request_rollback(previous_id))

        screen.app.push_screen(ConfirmDialog("Request a rollback?", body, "Roll back"), confirmed)

    async def _request_rollback(self, previous_id: UUID) -> None:
        try:
            task = await self.screen.source.request_rollback(previous_id)
        except (SourceUnavailable, ActionRefused) as exc:
            self.screen.post_message(ActionFinished(f"Rollback not requested: {exc}", ok=False))
        else:
            self.screen.post_message(
                ActionFinished(f"Rollback queued (task {fmt.short_id(task.id)}).", ok=True)
            )

    # -- deploy ----------------------------------------------------------------------
    def deploy(self) -> None:
        from wrktalk_agent.tui.dialogs import DeployDialog

        screen = self.screen
        release = self.selected_release()
        if release is None or screen.snapshot is None:
            screen.notify("Select a release in the Releases tab first.", severity="warning")
            return
        current = screen.snapshot.installation.current_version
        screen.app.push_screen(
            DeployDialog(release, current, screen.source.now()), self._deploy_chosen
        )

    def _deploy_chosen(self, choice: DeployChoice | None) -> None:
        if choice is not None:
            release = choice.release
            self._write(
                self._queue_deploy(release.id, release.release_version, choice.execute_after)
            )

    async def _queue_deploy(self, release_id: UUID, version: str, when: datetime | None) -> None:
        try:
            task = await self.screen.source.deploy(release_id, when)
        except SourceUnavailable as exc:
            self.screen.post_message(ActionFinished(f"Deploy not queued: {exc}", ok=False))
        else:
            due = f"for {fmt.full_time(when)}" if when else "to run now"
            self.screen.post_message(
                ActionFinished(
                    f"Deploy of {version} queued {due} (task {fmt.short_id(task.id)}).", ok=True
                )
            )

    # -- cancel ----------------------------------------------------------------------
    def cancel(self) -> None:
        from wrktalk_agent.tui.dialogs import ConfirmDialog

        screen = self.screen
        task = self.selected_task()
        if task is None:
            return
        if task.status != "pending":
            why = NOT_CANCELLED.get(task.status, f"it is {task.status}")
            screen.notify(
                visible(
                    f"Task {fmt.short_id(task.id)} is not cancelled: {why}. "
                    "Only pending tasks can be cancelled."
                ),
                severity="warning",
                markup=False,
            )
            return
        body = Text.assemble(
            "Cancel the pending ",
            (visible(f"{task.type} {task.release_version or ''}".strip()), "bold"),
            f" (task {fmt.short_id(task.id)})?\n",
            "It will be marked failed with a 'cancelled' message.",
        )
        task_id = task.id

        def confirmed(yes: bool | None) -> None:
            if yes:
                self._write(self._cancel_pending(task_id))

        screen.app.push_screen(ConfirmDialog("Cancel this task?", body, "Cancel task"), confirmed)

    async def _cancel_pending(self, task_id: UUID) -> None:
        try:
            await self.screen.source.cancel(task_id)
        except (SourceUnavailable, ActionRefused) as exc:
            self.screen.post_message(ActionFinished(f"Not cancelled: {exc}", ok=False))
        else:
            self.screen.post_message(
                ActionFinished(f"Task {fmt.short_id(task_id)} cancelled.", ok=True)
            )


def rollback_timing(due: int, running: int) -> Text:
    """When a rollback queued now runs: tasks are claimed oldest first, one at a time."""
    if not due and not running:
        return Text("It starts at once (nothing is running or due before it).")
    ahead = []
    if running:
        ahead.append("a task is running")
    if due:
        ahead.append(f"{due} task{'s' if due != 1 else ''} due before it")
    return Text(f"It waits: {' and '.join(ahead)}.", style="yellow")
