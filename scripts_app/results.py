"""How a run's returned value is shown and downloaded: a table when it is tabular, else JSON."""

from __future__ import annotations

import csv
import io
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scripts_app.models import Run


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[list[Any]]

    @cached_property
    def numeric(self) -> list[bool]:
        """numeric_columns, worked out once per table."""
        return numeric_columns(self)


def as_table(value: Any, *, kind: str = "do-eval") -> Table | None:
    """Records (a list of dicts, as a DataFrame comes back) or a dict of equal-length columns; else None.

    A group-apply result ({group: what the function gave}) is one table keyed by group: the records of
    every group with a `group` column first, or one row per group when each gave a single value.
    """
    if kind == "group-apply" and isinstance(value, dict) and value:
        return _groups_table(value)
    if isinstance(value, list) and value and all(isinstance(row, dict) for row in value):
        columns = list(dict.fromkeys(str(key) for row in value for key in row))
        return Table(columns, [[row.get(column) for column in columns] for row in value])
    if (
        isinstance(value, dict)
        and value
        and all(isinstance(column, list) for column in value.values())
        and len({len(column) for column in value.values()}) == 1
    ):
        columns = [str(key) for key in value]
        return Table(columns, [list(row) for row in zip(*value.values(), strict=True)])
    return None


# The DATA tables of the runs this process showed last. A finished run's value never changes, so sorting,
# filtering and paging a large table (each an htmx request of its own) decode and convert it only once.
TABLES_KEPT = 4
_tables: OrderedDict[tuple, Table | None] = OrderedDict()
_tables_lock = threading.Lock()


def run_table(run: Run) -> Table | None:
    """A succeeded run's value as a table (as_table), or None; kept for the last few runs shown."""
    if run.status != "SUCCEEDED":
        return None
    # A run's value and finished_at are written once, together (RunQuerySet.finish).
    key = (run.pk, run.finished_at)
    with _tables_lock:
        if key in _tables:
            _tables.move_to_end(key)
            return _tables[key]
    table = as_table(run.result, kind=run.kind)
    with _tables_lock:
        _tables[key] = table
        while len(_tables) > TABLES_KEPT:
            _tables.popitem(last=False)
    return table


def _groups_table(groups: dict) -> Table | None:
    if all(isinstance(part, list) and all(isinstance(row, dict) for row in part) for part in groups.values()):
        records = [{"group": group, **row} for group, part in groups.items() for row in part]
        return as_table(records) if records else None
    if all(not isinstance(part, dict | list) for part in groups.values()):
        return Table(["group", "value"], [[group, part] for group, part in groups.items()])
    return None


_NUMBER_TYPES = frozenset({int, float, type(None)})


def numeric_columns(table: Table) -> list[bool]:
    """Columns whose values are all numbers (or null): right-aligned and shown at a sensible precision.

    By the set of each column's value types (a decoded JSON value is exactly int, float, bool, str, list,
    dict or None; bool is not a number here): a C-speed pass, where a test per cell cost ~300 ms for a
    5,000 x 31 table (bench/grid_bench.py).
    """
    if not table.rows:
        return [False] * len(table.columns)
    numeric = []
    for column in zip(*table.rows, strict=True):
        types = set(map(type, column))
        numeric.append(types <= _NUMBER_TYPES and types != {type(None)})
    return numeric


def filtered(table: Table, text: str) -> Table:
    """The rows with `text` (case-insensitive) in any cell."""
    needle = text.lower()
    return Table(table.columns, [row for row in table.rows if any(needle in cell_text(c).lower() for c in row)])


def sorted_by(table: Table, column: str, *, descending: bool = False) -> Table:
    """The rows ordered by one column: numbers by value, then text, then anything else; nulls last."""
    index = table.columns.index(column)

    def key(row: list) -> tuple:
        value = row[index]
        if isinstance(value, int | float) and not isinstance(value, bool):
            return (0, value, "")
        if isinstance(value, str):
            return (1, 0, value.lower())
        return (2, 0, cell_text(value))

    present = [row for row in table.rows if row[index] is not None]
    missing = [row for row in table.rows if row[index] is None]
    return Table(table.columns, sorted(present, key=key, reverse=descending) + missing)


def number_text(value: Any) -> str:
    """A number for reading: integers whole, floats to 4 decimals (or 3 significant digits when tiny)."""
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return str(value)
        if value != 0 and abs(value) < 0.001:
            return f"{value:.3g}"
        return f"{value:.4f}".rstrip("0").rstrip(".")
    return cell_text(value)


def cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def as_csv(table: Table) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([_csv_text(column) for column in table.columns])
    for row in table.rows:
        writer.writerow([_csv_text(cell) for cell in row])
    return out.getvalue()


def as_parquet(table: Table) -> bytes:
    """The table as a Parquet file; a column of mixed kinds (numbers and text, nested values) becomes text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {}
    for index, column in enumerate(table.columns):
        values = [row[index] for row in table.rows]
        try:
            arrays[column] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arrays[column] = pa.array([None if value is None else cell_text(value) for value in values])
    out = pa.BufferOutputStream()
    pq.write_table(pa.table(arrays), out)
    return out.getvalue().to_pybytes()


def _csv_text(value: Any) -> str:
    text = cell_text(value)
    # Numbers stay numbers (-1 is not a formula); text that a spreadsheet would evaluate is quoted.
    if isinstance(value, str) and text.startswith(_FORMULA_STARTS):
        return "'" + text
    return text


def as_pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)
