"""What differs between two things a user compares: two sources, two parameter sets, two tables.

Pure functions over plain values; the pages (versions, compare runs) render what they return.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from scripts_app.results import Table

# Rows of each kind shown at most: a diff of two 5,000-row tables must stay a readable page.
MAX_ROWS_SHOWN = 200


def source_diff(old: str, new: str, *, old_label: str, new_label: str) -> list[tuple[str, str]]:
    """A unified diff as (kind, line) rows, kind one of file, hunk, add, del, same; the template escapes."""
    rows = []
    for line in difflib.unified_diff(
        old.splitlines(), new.splitlines(), fromfile=old_label, tofile=new_label, lineterm=""
    ):
        if line.startswith(("---", "+++")):
            kind = "file"
        elif line.startswith("@@"):
            kind = "hunk"
        elif line.startswith("+"):
            kind = "add"
        elif line.startswith("-"):
            kind = "del"
        else:
            kind = "same"
        rows.append((kind, line))
    return rows


@dataclass(frozen=True)
class ParameterChange:
    name: str
    kind: str  # added, removed, changed, same
    old: Any = None
    new: Any = None


def parameter_diff(old: dict, new: dict) -> list[ParameterChange]:
    """Every parameter of either run, in a stable order, with what happened to it."""
    changes = []
    for name in list(dict.fromkeys([*old, *new])):
        if name not in new:
            changes.append(ParameterChange(name, "removed", old=old[name]))
        elif name not in old:
            changes.append(ParameterChange(name, "added", new=new[name]))
        elif old[name] != new[name]:
            changes.append(ParameterChange(name, "changed", old=old[name], new=new[name]))
        else:
            changes.append(ParameterChange(name, "same", old=old[name], new=new[name]))
    return changes


@dataclass
class ChangedRow:
    key: Any
    cells: list[tuple[Any, Any, bool]]  # (old, new, differs) per column but the key


@dataclass
class TableDiff:
    key: str | None  # the key column, or None: rows matched by position
    columns: list[str]
    added_columns: list[str]
    removed_columns: list[str]
    added: list[list[Any]] = field(default_factory=list)
    removed: list[list[Any]] = field(default_factory=list)
    changed: list[ChangedRow] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def value_columns(self) -> list[str]:
        """The columns of a changed row's cells: all but the key, which heads the row."""
        return [column for column in self.columns if column != self.key]

    @property
    def identical(self) -> bool:
        return not (
            self.added_columns or self.removed_columns or any(self.counts[k] for k in self.counts if k != "same")
        )


def key_candidates(old: Table, new: Table) -> list[str]:
    """Columns of both tables whose values are unique and hashable in each: what rows can be matched by."""
    return [column for column in old.columns if column in new.columns and _unique(old, column) and _unique(new, column)]


def table_diff(old: Table, new: Table, *, key: str | None = None) -> TableDiff:
    """Rows matched by `key` (else the first key candidate, else position): added, removed and changed cells."""
    candidates = key_candidates(old, new)
    if key not in candidates:
        key = candidates[0] if candidates else None
    columns = list(dict.fromkeys([*old.columns, *new.columns]))
    old_rows = _keyed(old, key, columns)
    new_rows = _keyed(new, key, columns)
    diff = TableDiff(
        key=key,
        columns=columns,
        added_columns=[c for c in new.columns if c not in old.columns],
        removed_columns=[c for c in old.columns if c not in new.columns],
    )
    counts = {"added": 0, "removed": 0, "changed": 0, "same": 0}
    for row_key, row in old_rows.items():
        if row_key not in new_rows:
            counts["removed"] += 1
            if len(diff.removed) < MAX_ROWS_SHOWN:
                diff.removed.append(row)
            continue
        other = new_rows[row_key]
        cells = [(a, b, a != b) for column, a, b in zip(columns, row, other, strict=True) if column != key]
        if any(differs for _, _, differs in cells):
            counts["changed"] += 1
            if len(diff.changed) < MAX_ROWS_SHOWN:
                diff.changed.append(ChangedRow(row_key, cells))
        else:
            counts["same"] += 1
    for row_key, row in new_rows.items():
        if row_key not in old_rows:
            counts["added"] += 1
            if len(diff.added) < MAX_ROWS_SHOWN:
                diff.added.append(row)
    diff.counts = counts
    return diff


def _unique(table: Table, column: str) -> bool:
    index = table.columns.index(column)
    values = [row[index] for row in table.rows]
    try:
        return len(set(values)) == len(values)
    except TypeError:  # lists or dicts in the column: not a key
        return False


def _keyed(table: Table, key: str | None, columns: list[str]) -> dict[Any, list[Any]]:
    """Each row spread over `columns` (missing ones None), by its key value, or by its position (1-based)."""
    positions = {column: table.columns.index(column) for column in table.columns}
    rows = {}
    for number, row in enumerate(table.rows, start=1):
        spread = [row[positions[c]] if c in positions else None for c in columns]
        rows[row[positions[key]] if key is not None else number] = spread
    return rows
