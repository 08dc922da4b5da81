"""Input queries: one read-only SELECT over the datasets the caller may read, in a locked-down DuckDB.

Each query gets a fresh in-memory DuckDB connection that holds only views of the datasets the query
names (and the caller may read). Before the query runs, the connection is locked: no file access but
those datasets' Parquet files, no extensions, bounded memory and threads, and a timer interrupts it
at its time limit. A query that is not a single SELECT, or names a dataset the caller cannot read,
is a BadRequest.

How datasets are named in SQL (docs/datasets.md): the caller's own dataset by its name (`IRIS`);
another user's global or granted dataset as `owner.NAME`, or by its bare name when exactly one
dataset of that name is readable and the caller has none of their own. Names ignore case, as SQL does;
names with '-' or '.' are written in double quotes (`"my-data"`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from django.conf import settings
from django.contrib.auth import get_user_model

from scripts_app.errors import BadRequest
from scripts_app.models import Dataset
from scripts_app.services.datasets import datasets_readable_by

MAX_QUERY_CHARS = 100_000
# Rows per Arrow batch of a query's result: a result passes its byte limit by one batch at most. 2048-row
# batches made half the time of fetching a million rows (apply_bench); 16384 halves the fetch.
FETCH_BATCH_ROWS = 16384


@dataclass(frozen=True)
class TableName:
    """A name as the query wrote it: `NAME` or `owner.NAME`."""

    schema: str | None
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


def _base_connection() -> duckdb.DuckDBPyConnection:
    return duckdb.connect(
        ":memory:",
        config={
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            # Else an unknown table name would find a pandas or Arrow object in the calling Python frame.
            "python_enable_replacements": False,
            "threads": settings.OMLWEB_QUERY_THREADS,
            "memory_limit": f"{settings.OMLWEB_QUERY_MEMORY_MB}MB",
        },
    )


class _Spare:
    """One new DuckDB database made ahead of time, in a thread, off a query's path: making one costs
    10-30 ms (more on a busy machine), closing one a few more, about a tenth of a light apply run.

    Each is used by one query only and closed after it (in that thread too), as before: nothing of
    one query's is seen by another. One made with other settings, or in another process (a fork), is
    never handed out.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ready: tuple[tuple, int, duckdb.DuckDBPyConnection] | None = None
        self.forked: list[duckdb.DuckDBPyConnection] = []  # never touched in the child: kept, not closed

    def take(self) -> duckdb.DuckDBPyConnection:
        with self.lock:
            ready, self.ready = self.ready, None
        connection = None
        if ready is not None:
            made_with, pid, spare = ready
            if pid != os.getpid():
                self.forked.append(spare)
            elif made_with != _connection_settings():
                self._off_path(spare.close)
            else:
                connection = spare
        self._off_path(self._make)
        return connection or _base_connection()

    def close(self, connection: duckdb.DuckDBPyConnection) -> None:
        self._off_path(connection.close)

    def _make(self) -> None:
        made = (_connection_settings(), os.getpid(), _base_connection())
        with self.lock:
            replaced, self.ready = self.ready, made
        if replaced is not None:
            replaced[2].close()

    @staticmethod
    def _off_path(action) -> None:
        threading.Thread(target=action, name="duckdb-spare", daemon=True).start()


def _connection_settings() -> tuple:
    return (settings.OMLWEB_QUERY_THREADS, settings.OMLWEB_QUERY_MEMORY_MB)


_spare = _Spare()


def _lock(connection: duckdb.DuckDBPyConnection, allowed_files: list[str]) -> None:
    if allowed_files:
        connection.execute("SET allowed_paths = ?", [allowed_files])
    connection.execute("SET enable_external_access = false")
    connection.execute("SET lock_configuration = true")


def _split_qualified(text: str) -> list[str]:
    """'"a.b".c AS x' -> ['a.b', 'c']: DuckDB's qualified names, double quotes honoured, alias dropped."""
    parts, current, quoted, i = [], [], False, 0
    while i < len(text):
        char = text[i]
        if quoted:
            if char == '"' and text[i + 1 : i + 2] == '"':
                current.append('"')
                i += 1
            elif char == '"':
                quoted = False
            else:
                current.append(char)
        elif char == '"':
            quoted = True
        elif text[i : i + 4].upper() == " AS ":
            break
        elif char == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    return parts


def query_check(query: str) -> list[TableName]:
    """The table names of a single SELECT; anything else is a BadRequest saying why."""
    return list(_checked(query).names)


@dataclass(frozen=True)
class _Checked:
    names: tuple[TableName, ...]
    # For a query that only reads whole columns of one table (`SELECT * FROM T`, `SELECT A, B FROM T`):
    # the columns it names, or None for `*`. Such a query is read straight from the dataset's Parquet
    # file (`Query.rows`); `plain` is False for any other query.
    plain: bool = False
    columns: tuple[str, ...] | None = None


def _checked(query: str) -> _Checked:
    if not isinstance(query, str):
        raise BadRequest("input: the query is empty.")
    # A function of the text alone: a run's query is checked when recorded and again when it runs,
    # and each check opens a DuckDB connection (tens of ms).
    return _query_check(query)


@functools.lru_cache(maxsize=256)
def _query_check(query: str) -> _Checked:
    if not query.strip():
        raise BadRequest("input: the query is empty.")
    if len(query) > MAX_QUERY_CHARS:
        raise BadRequest(f"input: the query is longer than {MAX_QUERY_CHARS} characters.")
    connection = _base_connection()
    try:
        _lock(connection, [])
        try:
            statements = connection.extract_statements(query)
        except duckdb.Error as error:
            raise BadRequest(f"input: the query does not parse: {error}") from None
        if len(statements) != 1:
            raise BadRequest(f"input: send exactly one SELECT statement, not {len(statements)} statements.")
        if statements[0].type != duckdb.StatementType.SELECT:
            kind = statements[0].type.name
            raise BadRequest(f"input: only a SELECT query may read datasets; this is a {kind} statement.")
        try:
            raw_names = connection.get_table_names(query, qualified=True)
        except duckdb.PermissionException:
            raise BadRequest("input: a query may only read datasets, not files or other sources.") from None
        except duckdb.Error as error:
            raise BadRequest(f"input: the query does not parse: {error}") from None
        plain = _plain_columns(connection, query)
    finally:
        connection.close()
    names = []
    for raw in sorted(raw_names):
        parts = _split_qualified(raw)
        if len(parts) > 2:
            raise BadRequest(f"input: {raw} is not a dataset name; write NAME or owner.NAME.")
        names.append(TableName(parts[0], parts[1]) if len(parts) == 2 else TableName(None, parts[0]))
    if plain is None or len(names) != 1:
        return _Checked(tuple(names))
    return _Checked(tuple(names), plain=True, columns=plain[0])


# A plain query's parse tree (DuckDB's json_serialize_sql) holds these and nothing else: any other key,
# or any of these with another value (a WHERE, a LIMIT, DISTINCT, a sample, a CTE...), is not plain.
_PLAIN_NODE: dict[str, Any] = {
    "type": "SELECT_NODE",
    "modifiers": [],
    "cte_map": {"map": []},
    "where_clause": None,
    "group_expressions": [],
    "group_sets": [],
    "aggregate_handling": "STANDARD_HANDLING",
    "having": None,
    "sample": None,
    "qualify": None,
}
_PLAIN_STAR: dict[str, Any] = {
    "class": "STAR",
    "type": "STAR",
    "alias": "",
    "relation_name": "",
    "exclude_list": [],
    "replace_list": [],
    "columns": False,
    "expr": None,
    "qualified_exclude_list": [],
    "rename_list": [],
}
_PLAIN_TABLE: dict[str, Any] = {
    "type": "BASE_TABLE",
    "sample": None,
    "column_name_alias": [],
    "catalog_name": "",
    "at_clause": None,
}
_LOCATION = ("query_location", "query_location_length")


def _plain_columns(connection: duckdb.DuckDBPyConnection, query: str) -> tuple[tuple[str, ...] | None] | None:
    """(None,) for `SELECT * FROM T`, ((A, B),) for `SELECT A, B FROM T`, None for any other query.

    Read from DuckDB's own parse tree, matched against a whitelist: what the tree holds that is not
    known here makes the query not plain, and it runs in DuckDB as any other.
    """
    try:
        row = connection.execute("SELECT json_serialize_sql(?)", [query]).fetchone()
        tree = json.loads(row[0] if row else "")
        [statement] = tree["statements"]
        node = dict(statement["node"])
        if tree.get("error") or set(statement) != {"node", "named_param_map"} or statement["named_param_map"]:
            return None
        select_list, table = node.pop("select_list"), node.pop("from_table")
    except (duckdb.Error, KeyError, TypeError, ValueError):
        return None
    if node != _PLAIN_NODE or not isinstance(table, dict):
        return None
    table_rest = {key: value for key, value in table.items() if key not in _LOCATION}
    if {key: table_rest.pop(key, None) for key in _PLAIN_TABLE} != _PLAIN_TABLE:
        return None
    if set(table_rest) != {"alias", "schema_name", "table_name", "qualified_name"}:
        return None
    if not isinstance(select_list, list) or not select_list:
        return None
    items = [{key: value for key, value in item.items() if key not in _LOCATION} for item in select_list]
    if items == [_PLAIN_STAR]:
        return (None,)
    columns = []
    for item in items:
        if set(item) != {"class", "type", "alias", "column_names"} or (item["class"], item["type"], item["alias"]) != (
            "COLUMN_REF",
            "COLUMN_REF",
            "",
        ):
            return None
        names = item["column_names"]
        if not (isinstance(names, list) and len(names) == 1 and isinstance(names[0], str)):
            return None
        columns.append(names[0])
    if len({column.lower() for column in columns}) != len(columns):
        return None
    return (tuple(columns),)


def resolve_names(*, caller, names: list[TableName]) -> dict[TableName, Dataset]:
    """The dataset each name stands for, among those the caller may read."""
    readable = datasets_readable_by(caller).select_related("owner")
    resolved = {}
    for table in names:
        candidates = readable.filter(name__iexact=table.name)
        if table.schema is not None:
            named_owners = get_user_model().objects.filter(username__iexact=table.schema)
            candidates = candidates.filter(owner__in=named_owners)
            found = list(candidates[:2])
        else:
            own = [d for d in candidates if d.owner_id == caller.pk]
            found = own or list(candidates[:2])
        if not found:
            raise BadRequest(
                f"input: no dataset {str(table)!r} that you may read. "
                "Name your own datasets as NAME and other users' shared ones as owner.NAME."
            )
        if len(found) > 1:
            owners = ", ".join(sorted(f"{d.owner.get_username()}.{d.name}" for d in candidates))
            raise BadRequest(f"input: {str(table)!r} is ambiguous; name one of {owners}.")
        resolved[table] = found[0]
    return resolved


def sql_name(dataset: Dataset, *, caller) -> str:
    """How the caller names the dataset in a query: NAME when it is theirs, else owner.NAME (quoted if need be)."""

    def part(text: str) -> str:
        return text if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text) else _quote(text)

    if dataset.owner_id == caller.pk:
        return part(dataset.name)
    return f"{part(dataset.owner.get_username())}.{part(dataset.name)}"


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@contextlib.contextmanager
def _local_files(datasets: list[Dataset]) -> Iterator[dict]:
    """A local path for each dataset's Parquet file: its own on a file system storage, else a copy."""
    paths, scratch = {}, None
    try:
        for dataset in datasets:
            try:
                paths[dataset.pk] = os.path.realpath(dataset.file.path)
                continue
            except NotImplementedError:
                pass
            scratch = scratch or tempfile.mkdtemp(prefix="omlweb-query-")
            local = os.path.join(scratch, f"{dataset.pk}.parquet")
            with dataset.file.open("rb") as source, open(local, "wb") as target:
                shutil.copyfileobj(source, target)
            paths[dataset.pk] = local
        yield paths
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


class Query:
    """A checked input query, bound to the datasets it reads; `relation()` and `rows()` inside `open()`."""

    def __init__(self, *, caller, text: str) -> None:
        self.text = text.strip().rstrip(";")
        checked = _checked(text)
        self.tables = resolve_names(caller=caller, names=list(checked.names))
        self.plain, self.columns = checked.plain, checked.columns
        self.connection: duckdb.DuckDBPyConnection | None = None
        self.paths: dict | None = None

    @contextlib.contextmanager
    def open(self) -> Iterator[Query]:
        datasets = list({d.pk: d for d in self.tables.values()}.values())
        with _local_files(datasets) as paths:
            self.paths = paths
            try:
                if not self.plain:
                    self._open()
                # A plain query's rows come from its file (`rows()`): its DuckDB database is made only
                # if something else is asked of it (group-apply's relation).
                yield self
            finally:
                self.paths = None
                connection, self.connection = self.connection, None
                if connection is not None:
                    _spare.close(connection)

    def _open(self) -> duckdb.DuckDBPyConnection:
        if self.paths is None:
            raise RuntimeError("the query is used outside its `with` block")
        if self.connection is None:
            connection = _spare.take()
            try:
                schemas = {t.schema for t in self.tables if t.schema}
                for schema in schemas:
                    connection.execute(f"CREATE SCHEMA {_quote(schema)}")
                for table, dataset in self.tables.items():
                    target = f"{_quote(table.schema)}.{_quote(table.name)}" if table.schema else _quote(table.name)
                    path = _literal(self.paths[dataset.pk])
                    connection.execute(f"CREATE VIEW {target} AS SELECT * FROM read_parquet({path})")
                _lock(connection, sorted(set(self.paths.values())))
            except BaseException:
                _spare.close(connection)
                raise
            self.connection = connection
        return self.connection

    def rows(self) -> pa.Table:
        """All the query's rows, within its limits. A plain query (whole columns of one dataset) is read
        straight from the dataset's Parquet file when its columns' types come out of DuckDB unchanged:
        the same table, without DuckDB's read (its CPU, about twice pyarrow's for the same file)."""
        if self.plain:
            table = self._read_plain()
            if table is not None:
                return table
        return self.fetch(self.relation())

    def _read_plain(self) -> pa.Table | None:
        """The plain query's rows read with pyarrow, or None when DuckDB must read them (a column
        named that the file does not have exactly once: DuckDB's error names it; a type DuckDB
        returns otherwise). Only the one dataset the query names, which the caller may read."""
        if self.paths is None:
            raise RuntimeError("the query is used outside its `with` block")
        [dataset] = self.tables.values()
        file = pq.ParquetFile(self.paths[dataset.pk])
        schema = file.schema_arrow
        names = schema.names
        if len({name.lower() for name in names}) != len(names):
            return None
        wanted = names
        if self.columns is not None:
            wanted = []
            for column in self.columns:
                found = [name for name in names if name.lower() == column.lower()]
                if len(found) != 1:
                    return None
                wanted.append(found[0])
        fields = [pa.field(name, schema.field(name).type) for name in wanted]
        if not all(_as_duckdb_gives(field.type) for field in fields):
            return None
        clean = pa.schema(fields)  # nullable and without metadata, as DuckDB's answer
        max_rows = settings.OMLWEB_QUERY_MAX_ROWS
        if file.metadata.num_rows > max_rows:
            raise BadRequest(_too_many_rows(max_rows))
        max_bytes = settings.OMLWEB_QUERY_MAX_RESULT_MB * 1024**2
        deadline = time.monotonic() + settings.OMLWEB_QUERY_TIMEOUT_SECONDS
        batches, size = [], 0
        reader = file.iter_batches(
            batch_size=FETCH_BATCH_ROWS, columns=wanted, use_threads=settings.OMLWEB_QUERY_THREADS > 1
        )
        for batch in reader:
            if batch.schema.names != wanted:
                return None  # a name pyarrow read as a nested column's path
            size += batch.nbytes
            if size > max_bytes:
                raise BadRequest(_too_many_bytes())
            if time.monotonic() > deadline:
                raise BadRequest(_too_long())
            batches.append(pa.RecordBatch.from_arrays(batch.columns, schema=clean))
        return pa.Table.from_batches(batches, schema=clean)

    def relation(self) -> duckdb.DuckDBPyRelation:
        try:
            return self._open().sql(self.text)
        except duckdb.Error as error:
            raise BadRequest(f"input: {_first_line(error)}") from None

    def fetch(self, relation: duckdb.DuckDBPyRelation) -> pa.Table:
        """Run the relation within the time, row and byte limits.

        The rows arrive in batches and are counted as they come: DuckDB's memory_limit does not cover
        the Arrow result built in this process, so a query that makes huge rows must be stopped here,
        before it is all in memory, not after.
        """
        max_rows = settings.OMLWEB_QUERY_MAX_ROWS
        max_bytes = settings.OMLWEB_QUERY_MAX_RESULT_MB * 1024**2
        timer = threading.Timer(settings.OMLWEB_QUERY_TIMEOUT_SECONDS, self._open().interrupt)
        timer.start()
        try:
            reader = relation.limit(max_rows + 1).to_arrow_reader(FETCH_BATCH_ROWS)
            batches, rows, size = [], 0, 0
            for batch in reader:
                rows += batch.num_rows
                size += batch.nbytes
                if rows > max_rows:
                    raise BadRequest(_too_many_rows(max_rows))
                if size > max_bytes:
                    raise BadRequest(_too_many_bytes())
                batches.append(batch)
            return pa.Table.from_batches(batches, schema=reader.schema)
        except duckdb.InterruptException:
            raise BadRequest(_too_long()) from None
        except duckdb.OutOfMemoryException:
            raise BadRequest(
                f"input: the query needed more than its memory limit of {settings.OMLWEB_QUERY_MEMORY_MB} MB."
            ) from None
        except duckdb.Error as error:
            raise BadRequest(f"input: {_first_line(error)}") from None
        finally:
            timer.cancel()


def _too_many_rows(max_rows: int) -> str:
    return f"input: the query gives more than {max_rows} rows, the most an apply run takes."


def _too_many_bytes() -> str:
    return (
        f"input: the query's rows take more than {settings.OMLWEB_QUERY_MAX_RESULT_MB} MB, "
        "the most an apply run takes (OMLWEB_QUERY_MAX_RESULT_MB)."
    )


def _too_long() -> str:
    return f"input: the query ran longer than its limit of {settings.OMLWEB_QUERY_TIMEOUT_SECONDS:g} seconds."


def _as_duckdb_gives(kind: pa.DataType) -> bool:
    """Whether DuckDB's Arrow answer for a Parquet column that pyarrow reads as `kind` is `kind` too
    (tests/apply/test_plain_queries.py compares each). Not so, among others: a UUID (DuckDB: text),
    an interval, a timestamp with a time zone or in milliseconds, lists and structs (other field names)."""
    if pa.types.is_timestamp(kind):
        return kind.tz is None and kind.unit in ("us", "ns")
    if pa.types.is_time64(kind):
        return kind.unit == "us"
    return (
        pa.types.is_integer(kind)
        or pa.types.is_float32(kind)
        or pa.types.is_float64(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_date32(kind)
        or pa.types.is_decimal128(kind)
    )


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def query_table(*, caller, text: str) -> pa.Table:
    """The rows of an input query, as an Arrow table."""
    query = Query(caller=caller, text=text)
    with query.open():
        return query.rows()
