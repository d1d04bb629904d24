"""The table every tab of the dashboard is built on: it keeps the operator's place."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.text import Text
from textual.widgets import DataTable

Cells = tuple[Text, ...]


class KeyedTable(DataTable[Text]):
    """A row-cursor table refilled on every refresh that keeps the operator's place: the
    selected row stays selected by key, not by position, when new rows arrive on top.
    When the rows are the same ones (the common case), only changed cells are redrawn.

    Rows given before the table is mounted (a tab built with the data at hand) are shown
    as soon as it is."""

    #: (label, key) of each column, added when the table is mounted
    COLUMNS: tuple[tuple[str, str], ...] = ()

    def __init__(self, **kwargs: Any) -> None:
        # given to the constructor, not set once mounted: each change restyles the table
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self._shown: list[tuple[str, Cells]] = []
        self._pending: Sequence[tuple[str, Cells]] | None = None
        self._ready = False

    def on_mount(self) -> None:
        for label, key in self.COLUMNS:
            self.add_column(label, key=key)
        self._ready = True
        if self._pending is not None:
            rows, self._pending = self._pending, None
            self.replace_rows(rows)

    def replace_rows(self, rows: Sequence[tuple[str, Cells]]) -> None:
        if not self._ready:
            self._pending = rows
            return
        keys = [key for key, _ in rows]
        if keys == [key for key, _ in self._shown]:
            for (key, cells), (_, before) in zip(rows, self._shown, strict=True):
                for column, new, old in zip(self.ordered_columns, cells, before, strict=True):
                    if new != old:
                        self.update_cell(key, column.key, new, update_width=True)
            self._shown = list(rows)
            return
        selected, row_index = self.selected_key, self.cursor_row
        self.clear()
        for key, cells in rows:
            self.add_row(*cells, key=key)
        self._shown = list(rows)
        if selected in keys:
            self.move_cursor(row=keys.index(selected))
        elif rows:
            self.move_cursor(row=min(row_index, len(rows) - 1))

    @property
    def selected_key(self) -> str | None:
        if self.row_count == 0 or not self.is_valid_row_index(self.cursor_row):
            return None
        return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
