"""How a run's returned value is shown and downloaded: a table when it is tabular, else JSON."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[list[Any]]


def as_table(value: Any) -> Table | None:
    """Records (a list of dicts, as a DataFrame comes back) or a dict of equal-length columns; else None."""
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


def _csv_text(value: Any) -> str:
    text = cell_text(value)
    # Numbers stay numbers (-1 is not a formula); text that a spreadsheet would evaluate is quoted.
    if isinstance(value, str) and text.startswith(_FORMULA_STARTS):
        return "'" + text
    return text


def as_pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)
