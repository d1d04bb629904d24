"""The Releases tab: the stored releases, the live and the previous one marked."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text

from wrktalk_agent.tui import format as fmt
from wrktalk_agent.tui.table import Cells, KeyedTable

if TYPE_CHECKING:
    from datetime import datetime

    from wrktalk_agent.db.models import ArtifactInfo
    from wrktalk_agent.tui.snapshot import Snapshot


class ReleasesTable(KeyedTable):
    COLUMNS = tuple(
        (label, label.lower())
        for label in ("Version", "Live", "Type", "Size", "SHA-256", "Signed", "Applied", "Created")
    )

    def show(self, snapshot: Snapshot) -> None:
        self.replace_rows([(str(r.id), release_cells(r, snapshot.now)) for r in snapshot.releases])

    def selected_release(self, snapshot: Snapshot | None) -> ArtifactInfo | None:
        key = self.selected_key
        if snapshot is None or key is None:
            return None
        return next((r for r in snapshot.releases if str(r.id) == key), None)


def release_cells(release: ArtifactInfo, now: datetime) -> Cells:
    if release.is_current:
        flag = Text("current", style="bold green")
    elif release.is_previous:
        flag = Text("previous", style="yellow")
    else:
        flag = Text("")
    return (
        fmt.plain(release.release_version, "bold" if release.is_current else ""),
        flag,
        fmt.plain(release.chart_type),
        Text(fmt.human_size(release.size), justify="right"),
        fmt.plain(fmt.short_sha(release.sha256)),
        Text("signed", style="green") if release.signature else Text("no", style="dim"),
        Text(fmt.clock_time(release.applied_at, now)),
        Text(fmt.clock_time(release.created_at, now)),
    )
