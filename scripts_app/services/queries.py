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
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import duckdb
import pyarrow as pa
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
    if not isinstance(query, str):
        raise BadRequest("input: the query is empty.")
    # A function of the text alone: a run's query is checked when recorded and again when it runs,
    # and each check opens a DuckDB connection (tens of ms).
    return list(_query_check(query))


@functools.lru_cache(maxsize=256)
def _query_check(query: str) -> tuple[TableName, ...]:
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
    finally:
        connection.close()
    names = []
    for raw in sorted(raw_names):
        parts = _split_qualified(raw)
        if len(parts) > 2:
            raise BadRequest(f"input: {raw} is not a dataset name; write NAME or owner.NAME.")
        names.append(TableName(parts[0], parts[1]) if len(parts) == 2 else TableName(None, parts[0]))
    return tuple(names)


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
    """A checked input query, bound to the datasets it reads; `relation()` inside `open()`."""

    def __init__(self, *, caller, text: str) -> None:
        self.text = text.strip().rstrip(";")
        self.tables = resolve_names(caller=caller, names=query_check(text))
        self.connection: duckdb.DuckDBPyConnection | None = None

    @contextlib.contextmanager
    def open(self) -> Iterator[Query]:
        datasets = list({d.pk: d for d in self.tables.values()}.values())
        with _local_files(datasets) as paths:
            connection = _spare.take()
            try:
                schemas = {t.schema for t in self.tables if t.schema}
                for schema in schemas:
                    connection.execute(f"CREATE SCHEMA {_quote(schema)}")
                for table, dataset in self.tables.items():
                    target = f"{_quote(table.schema)}.{_quote(table.name)}" if table.schema else _quote(table.name)
                    path = _literal(paths[dataset.pk])
                    connection.execute(f"CREATE VIEW {target} AS SELECT * FROM read_parquet({path})")
                _lock(connection, sorted(set(paths.values())))
                self.connection = connection
                yield self
            finally:
                self.connection = None
                _spare.close(connection)

    def _open(self) -> duckdb.DuckDBPyConnection:
        if self.connection is None:
            raise RuntimeError("the query is used outside its `with` block")
        return self.connection

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
                    raise BadRequest(f"input: the query gives more than {max_rows} rows, the most an apply run takes.")
                if size > max_bytes:
                    raise BadRequest(
                        f"input: the query's rows take more than {settings.OMLWEB_QUERY_MAX_RESULT_MB} MB, "
                        "the most an apply run takes (OMLWEB_QUERY_MAX_RESULT_MB)."
                    )
                batches.append(batch)
            return pa.Table.from_batches(batches, schema=reader.schema)
        except duckdb.InterruptException:
            raise BadRequest(
                f"input: the query ran longer than its limit of {settings.OMLWEB_QUERY_TIMEOUT_SECONDS:g} seconds."
            ) from None
        except duckdb.OutOfMemoryException:
            raise BadRequest(
                f"input: the query needed more than its memory limit of {settings.OMLWEB_QUERY_MEMORY_MB} MB."
            ) from None
        except duckdb.Error as error:
            raise BadRequest(f"input: {_first_line(error)}") from None
        finally:
            timer.cancel()


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def query_table(*, caller, text: str) -> pa.Table:
    """The rows of an input query, as an Arrow table."""
    query = Query(caller=caller, text=text)
    with query.open():
        return query.fetch(query.relation())
