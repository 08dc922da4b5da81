"""OML's table-apply, row-apply, group-apply and index-apply: a function fed with data, in pieces.

The input query's rows are split into pieces (the whole table, chunks of `rows` rows, one group per
distinct `groupBy` value, or the indexes 1..times); each piece is one runner job. With parallelism,
up to the service level's degree of pieces run at once, each in its own runner process. The first
piece that fails fails the run, with a message naming the piece, and stops the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import io
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
from django.conf import settings
from django.db import transaction

from scripts_app import runner
from scripts_app.errors import FAILURE_CODES, BadRequest, Busy, ErrorCode, OmlError
from scripts_app.models import SERVICE_LEVEL_DEGREE, Run, ServiceLevel
from scripts_app.runner.validation import storable_text
from scripts_app.services import environments, queries, shares
from scripts_app.services.runs import function_kwargs, limits_from_settings, save_figures

if TYPE_CHECKING:
    from scripts_app.services.live import LiveRun

logger = logging.getLogger(__name__)

DATA_KINDS = (Run.Kind.TABLE_APPLY, Run.Kind.ROW_APPLY, Run.Kind.GROUP_APPLY)
INPUT_TYPES = ("default", "pandas.DataFrame", "numpy.recarray")
CANCEL_CHECK_SECONDS = 0.5


@dataclasses.dataclass
class Piece:
    """One runner job of an apply run."""

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


def _parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="lz4")
    return buffer.getvalue()


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
    for position, size in enumerate(count_column):
        key = _group_key([values[position] for values in group_values])
        while key in seen:
            key += "_"
        seen.add(key)
        piece_table = table.slice(offset, size)
        pieces.append(Piece(label=f"group {key!r}", key=key, data=piece_table, rows=size))
        offset += size
    return pieces


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
        table = query.fetch(query.relation())
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


def _arrow(table: pa.Table) -> pa.Buffer:
    """A piece's rows as Arrow IPC, written once from its zero-copy slice; sent to the child as is."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _run_pieces(
    run: Run,
    pieces: list[Piece],
    *,
    degree: int,
    deadline: float,
    is_cancelled: Callable[[], bool] | None,
    limits: runner.Limits,
    python: str | None = None,
    live: LiveRun | None = None,
) -> Piece | None:
    """Run every piece in `degree` children, each taking the next piece until none are left
    (runner.serve_pieces); returns the first piece that failed, if any."""
    version = run.script_version
    input_type, na_omit = control_arguments(run.parameters)
    kwargs = function_kwargs(run.parameters)
    frame_orient = "columns" if run.kind == Run.Kind.GROUP_APPLY else "records"
    stop = threading.Event()
    lock = threading.Lock()
    failed: list[Piece] = []
    queue = iter(enumerate(pieces))
    timed_out = threading.Event()
    has_data = any(piece.data is not None for piece in pieces)

    def stopped() -> bool:
        return stop.is_set()

    def fail(piece: Piece) -> None:
        with lock:
            # A piece that fails first is the run's failure; it is recorded before the others
            # are stopped, so a piece killed because of it is never taken for the cause.
            if not failed:
                failed.append(piece)
            stop.set()

    def next_piece() -> tuple[int, Piece] | None:
        with lock:
            if stop.is_set():
                return None
            if deadline - time.monotonic() <= 0:
                timed_out.set()
                stop.set()
                return None
            taken = next(queue, None)
            if taken is not None:
                taken[1].status = "RUNNING"
                taken[1].started_at = time.time()
            return taken

    def finished(piece: Piece, result: runner.Result, status: str | None = None) -> None:
        piece.finished_at = time.time()
        piece.data = None  # the rows are not needed any more
        piece.result = result
        piece.status = status or result.outcome.value
        if piece.status != "SUCCEEDED":
            fail(piece)

    def job(wall_seconds: float, data: runner.DataInput | None = None, args: tuple = ()) -> runner.Job:
        return runner.Job(
            source=version.source,
            function=version.entry_function,
            kwargs=kwargs,
            args=args,
            graphics=run.graphics,
            limits=dataclasses.replace(limits, wall_seconds=wall_seconds),
            data=data,
            frame_orient=frame_orient,
            python=python,
        )

    def work() -> None:
        """One child: takes pieces until none are left."""
        held: dict[int, Piece] = {}

        def take() -> runner.PieceJob | None:
            taken = next_piece()
            if taken is None:
                return None
            seq, piece = taken
            held[seq] = piece
            arrow = _arrow(piece.data) if piece.data is not None else None
            tap = live.tap(piece.label) if live is not None else None
            return runner.PieceJob(seq=seq, args=piece.args, arrow=arrow, tap=tap)

        def give(piece_job: runner.PieceJob, result: runner.Result) -> None:
            finished(held.pop(piece_job.seq), result)

        try:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out.set()
                stop.set()
                return
            options = {"input_type": input_type, "na_omit": na_omit} if has_data else None
            served = runner.serve_pieces(
                job(remaining),
                take,
                give,
                data_options=options,
                is_cancelled=stopped,
                # Each piece has its CPU seconds, as when each piece was a child of its own.
                child_cpu_seconds=limits.cpu_seconds * len(pieces),
            )
            if served:
                return
            one_job_each()
        except (runner.RunnerBusy, runner.RunnerUnavailable) as error:
            piece = _held_or_next(held)
            if piece is not None:
                finished(piece, runner.Result(outcome=runner.Outcome.FAILED, error_message=str(error)), "BUSY")
        except Exception as error:
            piece = _held_or_next(held)
            logger.exception("Run %s: %s failed in the service", run.pk, piece.label if piece else "a piece")
            if piece is not None:
                message = f"The service failed to run it: {error}"
                finished(piece, runner.Result(outcome=runner.Outcome.FAILED, error_message=message))

    def _held_or_next(held: dict[int, Piece]) -> Piece | None:
        if held:
            return next(iter(held.values()))
        with lock:
            taken = next(queue, None)
        return taken[1] if taken is not None else None

    def one_job_each() -> None:
        """No warm template here (the cold mode): each piece is one runner job, as before."""
        while (taken := next_piece()) is not None:
            piece = taken[1]
            data = None
            if piece.data is not None:
                data = runner.DataInput(parquet=_parquet(piece.data), input_type=input_type, na_omit=na_omit)
            tap = live.tap(piece.label) if live is not None else None
            try:
                result = runner.run(
                    job(deadline - time.monotonic(), data, piece.args), is_cancelled=stopped, in_slot=True, tap=tap
                )
            except (runner.RunnerBusy, runner.RunnerUnavailable) as error:
                finished(piece, runner.Result(outcome=runner.Outcome.FAILED, error_message=str(error)), "BUSY")
                continue
            finished(piece, result)

    with ThreadPoolExecutor(max_workers=degree, thread_name_prefix=f"apply-{run.pk}") as pool:
        futures = [pool.submit(work) for _ in range(degree)]
        # The caller's cancel check may query the database: it is asked here, in the caller's thread.
        while wait(futures, timeout=CANCEL_CHECK_SECONDS).not_done:
            if is_cancelled is not None and not stop.is_set() and is_cancelled():
                stop.set()
    for future in futures:
        future.result()
    for piece in pieces:
        if piece.status == "PENDING":
            piece.status = "SKIPPED"
            piece.data = None
    if failed:
        return failed[0]
    if timed_out.is_set():
        late = next(piece for piece in pieces if piece.status == "SKIPPED")
        late.status = "TIMED_OUT"
        late.result = runner.Result(
            outcome=runner.Outcome.TIMED_OUT,
            failure=runner.Failure.TIMEOUT,
            error_message=f"The run exceeded its time limit of {_wall_seconds(run):g} seconds",
        )
        return late
    return None


def _wall_seconds(run: Run) -> float:
    return float(run.timeout_seconds or settings.OMLWEB_RUN_WALL_SECONDS)


def apply_execute(
    *,
    run: Run,
    is_cancelled: Callable[[], bool] | None = None,
    limits: runner.Limits | None = None,
    live: LiveRun | None = None,
) -> Run:
    """Run a RUNNING apply run to its end and record the outcome, with each piece's timings
    (execution.execute_run).

    `limits` are each piece's (the wall clock is what is left of the run's). Recording an outcome of an
    async run that was taken from this attempt raises RunTakenAway (Run.finish).
    """
    deadline = time.monotonic() + _wall_seconds(run)
    try:
        # The run's environment (issue 6); this host builds its copy first if it has none.
        python = environments.python_for_run(run)
        pieces = build_pieces(run)
    except OmlError as error:
        run.finish(Run.Status.FAILED, error_code=error.code, error_message=error.message)
        return run
    except Exception as error:
        logger.exception("Run %s: preparing the input failed", run.pk)
        message = f"The service failed to prepare the input: {error}"
        run.finish(Run.Status.FAILED, error_code=ErrorCode.INTERNAL, error_message=message)
        raise
    options = run.apply_options
    degree = degree_for(
        service=run.service,
        parallel_flag=options.get("parallelFlag", False),
        parallel=options.get("parallel"),
        pieces=len(pieces),
    )
    run.apply_options = {**options, "degree": degree}
    if level_degree(run.service) < SERVICE_LEVEL_DEGREE[ServiceLevel(run.service)]:
        # The record says when the operator's setting, not the request, lowered the level's degree.
        run.apply_options["degreeLimitedBy"] = f"OMLWEB_APPLY_MAX_DEGREE={settings.OMLWEB_APPLY_MAX_DEGREE}"
    base = limits or limits_from_settings()
    if live is not None:
        live.follow_pieces(pieces)
    try:
        with runner.slot() if pieces else contextlib.nullcontext():
            failed = _run_pieces(
                run,
                pieces,
                degree=degree,
                deadline=deadline,
                is_cancelled=is_cancelled,
                limits=base,
                python=python,
                live=live,
            )
    except runner.RunnerBusy as error:
        failed = pieces[0]
        failed.status = "BUSY"
        failed.result = runner.Result(outcome=runner.Outcome.FAILED, error_message=str(error))
    _record(run, pieces, failed)
    if failed is not None and failed.status == "BUSY":
        raise Busy(Busy.busy_message)
    return run


def _record(run: Run, pieces: list[Piece], failed: Piece | None) -> None:
    size = sum(shares.result_size(piece.result) for piece in pieces if piece.result is not None)
    refusal = shares.quota_refusal(run=run, size=size)
    if refusal is not None:
        # Nothing of the pieces is kept (values, figures, streams): it would all count against the quota.
        run.pieces = [{"label": p.label, "key": p.key, "rows": p.rows, "status": p.status} for p in pieces]
        run.finish(Run.Status.FAILED, error_code=ErrorCode.QUOTA_EXCEEDED, error_message=refusal)
        return
    run.stored_bytes = size
    entries, stdout, stderr, position = [], [], [], 0
    with transaction.atomic():
        for piece in pieces:
            entry: dict[str, Any] = {
                "label": piece.label,
                "key": piece.key,
                "rows": piece.rows,
                "status": piece.status,
                "started_at": _iso(piece.started_at),
                "finished_at": _iso(piece.finished_at),
                "seconds": (
                    round(piece.finished_at - piece.started_at, 6)
                    if piece.finished_at is not None and piece.started_at is not None
                    else None
                ),
                "figures": [],
            }
            result = piece.result
            if result is not None:
                if result.stdout:
                    stdout.append(f"--- {piece.label} ---\n{result.stdout}")
                if result.stderr:
                    stderr.append(f"--- {piece.label} ---\n{result.stderr}")
                if not result.succeeded:
                    entry["error_message"] = result.error_message
                if result.succeeded and run.graphics:
                    entry["value"] = result.value
                    entry["figures"] = save_figures(run, result.figures, after=position)
                    position += len(entry["figures"])
            entries.append(entry)
        run.pieces = entries
        run.stdout = "".join(stdout)
        run.stderr = "".join(stderr)
        if failed is None:
            run.result = assemble(run.kind, pieces)
            run.finish(Run.Status.SUCCEEDED)
            return
        result = failed.result
        assert result is not None, "a failed piece always carries its result (a BUSY one too)"
        if failed.status == "BUSY":
            code, status = ErrorCode.BUSY, Run.Status.FAILED
        else:
            code, status = FAILURE_CODES.get(result.failure, ErrorCode.INTERNAL), Run.Status(result.outcome.value)
        where = failed.label[0].upper() + failed.label[1:]
        message = result.error_message
        if result.failure is runner.Failure.TIMEOUT:
            # The piece's own limit was what was left of the run's: name the run's.
            message = f"The run exceeded its time limit of {_wall_seconds(run):g} seconds"
        run.finish(
            status,
            error_code=code,
            error_message=f"{where} failed: {message}",
            traceback=f"{where} failed:\n{result.traceback}" if result.traceback else "",
        )


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC).isoformat()


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
