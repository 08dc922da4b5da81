"""OML's table-apply, row-apply, group-apply and index-apply: a function fed with data, in pieces.

The input query's rows are split into pieces (the whole table, chunks of `rows` rows, one group per
distinct `groupBy` value, or the indexes 1..times). This module checks an apply request, splits a run
into its pieces, says how many run at once and assembles OML's answer from their values;
services.execution runs the pieces (a do-eval run is its one-piece case) and records them.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from django.conf import settings

from scripts_app import runner
from scripts_app.errors import BadRequest, ErrorCode
from scripts_app.models import SERVICE_LEVEL_DEGREE, Run, ServiceLevel
from scripts_app.runner.validation import storable_text
from scripts_app.services import queries

logger = logging.getLogger(__name__)

DATA_KINDS = (Run.Kind.TABLE_APPLY, Run.Kind.ROW_APPLY, Run.Kind.GROUP_APPLY)
INPUT_TYPES = ("default", "pandas.DataFrame", "numpy.recarray")


@dataclasses.dataclass
class Piece:
    """One runner job of a run: an apply run's piece, or a do-eval run's one (`whole`)."""

    label: str  # names the piece in timings and errors: "chunk 2 (rows 5-8)", "group 'setosa'", "index 3"
    key: str | int | None = None  # group key, or index
    # The piece's rows: a zero-copy slice of the query's result, written as Parquet when it runs.
    data: pa.Table | None = None
    rows: int | None = None
    args: tuple = ()
    # Filled in as it runs.
    status: str = "PENDING"
    started_at: float | None = None
    finished_at: float | None = None
    result: runner.Result | None = None
    # A do-eval run's one piece: the run itself, recorded as a do-eval run always was (no timeline).
    whole: bool = False
    # A fault of the service, not of the run (a do-eval run's): its code, and what is raised once recorded.
    error_code: ErrorCode | None = None
    error: BaseException | None = None


def parse_columns(text: str | None, *, field: str) -> list[str]:
    """'GENDER, YEAR' -> ['GENDER', 'YEAR']."""
    if not text:
        return []
    columns = [part.strip() for part in text.split(",")]
    if any(not column for column in columns):
        raise BadRequest(f"{field}: give column names separated by commas.")
    return columns


def control_arguments(parameters: dict) -> tuple[str, bool]:
    """OML's oml_input_type and oml_na_omit, checked."""
    input_type = parameters.get("oml_input_type", "default")
    if input_type not in INPUT_TYPES:
        raise BadRequest(f"parameters: oml_input_type must be one of {', '.join(INPUT_TYPES)}.")
    na_omit = parameters.get("oml_na_omit", False)
    if isinstance(na_omit, str) and na_omit.lower() in ("true", "false"):
        na_omit = na_omit.lower() == "true"
    if not isinstance(na_omit, bool):
        raise BadRequest("parameters: oml_na_omit must be true or false.")
    return input_type, na_omit


def degree_for(*, service: str, parallel_flag: bool, parallel: int | None, pieces: int) -> int:
    """How many pieces run at once: the requested degree, capped by the service level and the operator.

    The runner's per-process cap (`OMLWEB_RUNNER_MAX_CONCURRENT`) is not one of the caps: an apply
    run holds one runner slot for all its pieces (`runner.slot()`).
    """
    level = SERVICE_LEVEL_DEGREE[ServiceLevel(service)]
    wanted = (parallel or level) if (parallel_flag or parallel) else 1
    return max(1, min(wanted, level_degree(service), pieces))


def level_degree(service: str) -> int:
    """A service level's degree of parallelism (LOW 2, MEDIUM 4, HIGH 8), or less if the operator said so."""
    return min(SERVICE_LEVEL_DEGREE[ServiceLevel(service)], settings.OMLWEB_APPLY_MAX_DEGREE)


def plan_degree(run: Run, pieces: int) -> int:
    """How many of the run's pieces run at once, noted in its `apply_options` (with what lowered it)."""
    options = run.apply_options
    degree = degree_for(
        service=run.service,
        parallel_flag=options.get("parallelFlag", False),
        parallel=options.get("parallel"),
        pieces=pieces,
    )
    run.apply_options = {**options, "degree": degree}
    if level_degree(run.service) < SERVICE_LEVEL_DEGREE[ServiceLevel(run.service)]:
        # The record says when the operator's setting, not the request, lowered the level's degree.
        run.apply_options["degreeLimitedBy"] = f"OMLWEB_APPLY_MAX_DEGREE={settings.OMLWEB_APPLY_MAX_DEGREE}"
    return degree


def degree_report() -> dict:
    """Each level's promised and effective degree, for the status endpoint."""
    report: dict[str, dict[str, int | str]] = {}
    for level, promised in SERVICE_LEVEL_DEGREE.items():
        effective = level_degree(level)
        report[str(level)] = {"degree": promised, "effectiveDegree": effective}
        if effective < promised:
            report[str(level)]["limitedBy"] = f"OMLWEB_APPLY_MAX_DEGREE={settings.OMLWEB_APPLY_MAX_DEGREE}"
    return report


def check_request(
    *,
    kind: str,
    user,
    parameters: dict,
    input_query: str = "",
    rows: int | None = None,
    group_by: str | None = None,
    order_by: str | None = None,
    times: int | None = None,
    parallel_flag: bool = False,
    parallel: int | None = None,
) -> dict:
    """Check an apply request before anything is recorded (a bad query is a BadRequest here already);
    returns the run's `apply_options`."""
    if kind in DATA_KINDS:
        queries.Query(caller=user, text=input_query)  # parse and name checks, before anything is recorded
    control_arguments(parameters)
    if kind == Run.Kind.INDEX_APPLY:
        _check_piece_count(times or 0, "indexes")
    options = {
        "rows": rows,
        "groupBy": parse_columns(group_by, field="groupBy"),
        "orderBy": parse_columns(order_by, field="orderBy"),
        "times": times,
        "parallelFlag": parallel_flag,
        "parallel": parallel,
    }
    return {key: value for key, value in options.items() if value not in (None, [])}


def _check_piece_count(count: int, what: str) -> None:
    limit = settings.OMLWEB_APPLY_MAX_PIECES
    if count > limit:
        raise BadRequest(f"The input makes {count} {what}, more than the limit of {limit} pieces of one run.")


def _group_key(values: list) -> str:
    def text(value) -> str:
        if value is None:
            return "NA"
        if isinstance(value, (datetime.date, datetime.datetime)):
            return value.isoformat()
        return str(value)

    # A key is stored in the run's JSON: no NUL or lone surrogate from the data may reach it.
    return storable_text("_".join(text(value) for value in values))


def _column(name: str, columns: list[str], field: str) -> str:
    matches = [column for column in columns if column.lower() == name.lower()] if name not in columns else [name]
    if len(matches) != 1:
        raise BadRequest(f"{field}: the input has no column {name!r}; its columns are {', '.join(columns)}.")
    return matches[0]


def _sql_name(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


def _group_pieces(query: queries.Query, options: dict) -> list[Piece]:
    if query.plain and not options.get("orderBy"):
        pieces = _plain_group_pieces(query, options)
        if pieces is not None:
            return pieces
    relation = query.relation()
    columns = list(relation.columns)
    group_by = [_column(name, columns, "groupBy") for name in options.get("groupBy", [])]
    if not group_by:
        raise BadRequest("groupBy: required for group-apply.")
    order = []
    for item in options.get("orderBy", []):
        name, _, direction = item.rpartition(" ") if item.upper().endswith((" ASC", " DESC")) else (item, "", "")
        order.append(f"{_sql_name(_column(name.strip(), columns, 'orderBy'))} {direction.upper()}".strip())
    keys = ", ".join(f"{_sql_name(column)} ASC NULLS LAST" for column in group_by)
    counts = query.fetch(
        relation.aggregate(f"{', '.join(map(_sql_name, group_by))}, count(*) AS omlweb_rows").order(keys)
    )
    _check_piece_count(counts.num_rows, "groups")
    table = query.fetch(relation.order(", ".join([keys, *order])))
    pieces, offset, seen = [], 0, set()
    count_column = counts.column("omlweb_rows").to_pylist()
    group_values = [counts.column(i).to_pylist() for i in range(len(group_by))]
    if sum(count_column) != table.num_rows:
        raise _changed_rows()
    for position, size in enumerate(count_column):
        key = _group_key([values[position] for values in group_values])
        while key in seen:
            key += "_"
        seen.add(key)
        piece_table = table.slice(offset, size)
        # The rows are sorted by group: the slice's first and last rows are its group's, or the query
        # read differently the second time and slicing by the counts would mix groups.
        for column, values in zip(group_by, group_values, strict=True):
            found = piece_table.column(column)
            if not (_same(found[0].as_py(), values[position]) and _same(found[-1].as_py(), values[position])):
                raise _changed_rows()
        pieces.append(Piece(label=f"group {key!r}", key=key, data=piece_table, rows=size))
        offset += size
    return pieces


def _plain_group_pieces(query: queries.Query, options: dict) -> list[Piece] | None:
    """A plain query's groups split in this process with Arrow: its rows read once (`Query.rows`),
    sorted by the keys (a stable sort: a group's rows in the dataset's order) and cut where a key
    changes. About two thirds of the CPU of DuckDB's two readings (the counts, then the rows in order).
    None, having split nothing, when a key's type is not one whose order and equality are DuckDB's
    exactly (floats: NaN and -0.0; decimals): DuckDB splits those, as before."""
    table = query.rows()
    columns = table.column_names
    group_by = [_column(name, columns, "groupBy") for name in options.get("groupBy", [])]
    if not group_by:
        raise BadRequest("groupBy: required for group-apply.")
    if not all(_exact_key(table.schema.field(column).type) for column in group_by):
        return None
    if table.num_rows == 0:
        return []
    order = pc.sort_indices(table, sort_keys=[(column, "ascending", "at_end") for column in group_by])
    rows = table.take(order)
    changed = np.zeros(rows.num_rows - 1, dtype=bool)
    for column in group_by:
        values = rows.column(column).combine_chunks()
        after, before = values.slice(1), values.slice(0, len(values) - 1)
        # A NULL is its own group (last): NULL next to a value differs, NULL next to NULL does not.
        differs = pc.fill_null(pc.not_equal(after, before), True)
        differs = pc.and_not(differs, pc.and_(pc.is_null(after), pc.is_null(before)))
        changed |= differs.to_numpy(zero_copy_only=False)
    starts = np.concatenate([[0], np.flatnonzero(changed) + 1])
    _check_piece_count(len(starts), "groups")
    sizes = np.diff(np.append(starts, rows.num_rows)).tolist()
    firsts = rows.select(group_by).take(pa.array(starts))
    group_values = [firsts.column(i).to_pylist() for i in range(len(group_by))]
    pieces, seen = [], set()
    for position, (start, size) in enumerate(zip(starts.tolist(), sizes, strict=True)):
        key = _group_key([values[position] for values in group_values])
        while key in seen:
            key += "_"
        seen.add(key)
        pieces.append(Piece(label=f"group {key!r}", key=key, data=rows.slice(start, size), rows=size))
    return pieces


def _exact_key(kind: pa.DataType) -> bool:
    return (
        pa.types.is_integer(kind)
        or pa.types.is_string(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_date32(kind)
        or (pa.types.is_timestamp(kind) and kind.tz is None)
    )


def _same(found, expected) -> bool:
    return found == expected or (found != found and expected != expected)  # NaN is its own group


def _changed_rows() -> BadRequest:
    return BadRequest(
        "input: the query gave other rows when read again to split them into groups; a query whose "
        "rows change from one reading to the next (random(), or LIMIT without ORDER BY) cannot be "
        "grouped."
    )


def build_pieces(run: Run) -> list[Piece]:
    """Split the run's input into pieces: runs the input query (BadRequest when it fails)."""
    options = run.apply_options
    if run.kind == Run.Kind.INDEX_APPLY:
        times = options["times"]
        _check_piece_count(times, "indexes")
        return [Piece(label=f"index {i}", key=i, args=(i,)) for i in range(1, times + 1)]
    query = queries.Query(caller=run.user, text=run.input_query)
    with query.open():
        if run.kind == Run.Kind.GROUP_APPLY:
            return _group_pieces(query, options)
        table = query.rows()
    if run.kind == Run.Kind.TABLE_APPLY:
        return [Piece(label="table", data=table, rows=table.num_rows)]
    size = options["rows"]
    count = -(-table.num_rows // size)
    _check_piece_count(count, "chunks")
    pieces = []
    for number, offset in enumerate(range(0, table.num_rows, size), start=1):
        chunk = table.slice(offset, size)
        label = f"chunk {number} (rows {offset + 1}-{offset + chunk.num_rows})"
        pieces.append(Piece(label=label, key=number, data=chunk, rows=chunk.num_rows))
    return pieces


def assemble(kind: str, pieces: list[Piece]) -> object:
    """OML's answer from the pieces' values: records concatenated, keyed per group, or in index order."""
    values = [piece.result.value if piece.result else None for piece in pieces]
    if kind == Run.Kind.TABLE_APPLY:
        return values[0]
    if kind == Run.Kind.GROUP_APPLY:
        return {piece.key: value for piece, value in zip(pieces, values, strict=True)}
    if kind == Run.Kind.INDEX_APPLY:
        return values
    combined: list = []
    for value in values:
        # A DataFrame comes back as records: the chunks' records make one list, as Oracle's.
        if isinstance(value, list):
            combined.extend(value)
        else:
            combined.append(value)
    return combined
