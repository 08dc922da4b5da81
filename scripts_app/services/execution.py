"""Running a recorded run to its end, in this process (a sync run, or a job's worker): one loop for
every kind of run and one recorder of its pieces, figures, streams and value.

A run is split into pieces (services.apply.build_pieces); a do-eval run is the one-piece case: no
data, the function's keyword arguments, run as runner.run's one-job child (the fastest way to run
one job) and recorded as a do-eval run always was (its value's JSON text as its process checked it,
no piece timeline). An apply run's pieces run in up to its degree of children at once, each child
taking the next piece until none are left (runner.serve_pieces); the first piece that fails fails
the run, with a message naming the piece, and stops the others.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq
from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction
from django.utils import timezone

from omlweb import sqlite_checkpoint
from scripts_app import runner
from scripts_app.errors import FAILURE_CODES, Busy, ErrorCode, OmlError
from scripts_app.models import Run, RunImage
from scripts_app.services import environments, shares
from scripts_app.services.apply import (
    DATA_KINDS,
    Piece,
    assemble,
    build_pieces,
    control_arguments,
    degree_for,
    plan_degree,
)
from scripts_app.services.runs import function_kwargs, limits_from_settings

if TYPE_CHECKING:
    from scripts_app.services.live import LiveRun

logger = logging.getLogger(__name__)

CANCEL_CHECK_SECONDS = 0.5
# An apply run starts as many children as the machine has cores (up to its degree) at once; each
# further child of its degree starts once a running piece has taken this long, or the pieces left
# would keep the running children busy this long (from the fastest piece done): a child's start and
# first piece cost more than a light piece (docs/runner.md, "Light pieces: children past the cores").
EXTRA_CHILD_SECONDS = 0.25
EXTRA_CHILD_POLL_SECONDS = 0.01


def execute_run(
    run: Run,
    *,
    is_cancelled: Callable[[], bool] | None = None,
    limits: runner.Limits | None = None,
    live: LiveRun | None = None,
) -> Run:
    """Run a recorded run to its end, do-eval or apply, and record the outcome.

    A QUEUED run is marked RUNNING first; a sync run recorded RUNNING, or a job its worker claimed, is
    not. `limits` replace the settings' (an async job's service level and timeout; an apply piece's wall
    clock is what is left of the run's); `live` writes what it prints as it prints it (services.live).
    A do-eval run the runner has no room for is recorded FAILED and raises Busy, as does an apply run's;
    a do-eval run this host cannot run raises OmlError (500), and a fault of the service is re-raised,
    each once recorded. Recording the outcome of a run taken from this attempt raises RunTakenAway.
    """
    if run.status == Run.Status.QUEUED:
        run.started_at = timezone.now()
        Run.objects.filter(pk=run.pk).start(now=run.started_at)
        run.status = Run.Status.RUNNING
    whole = run.kind == Run.Kind.DO_EVAL
    deadline = time.monotonic() + _wall_seconds(run)
    try:
        # The run's environment (issue 6); this host builds its copy first if it has none.
        python = environments.python_for_run(run)
    except Exception as error:
        return _preparation_failed(run, error, whole=whole)
    if whole:
        pieces = [Piece(label="run", whole=True)]
        failed = _run_whole(
            run,
            pieces[0],
            limits=limits or limits_from_settings(wall_seconds=run.timeout_seconds),
            python=python,
            is_cancelled=is_cancelled,
            live=live,
        )
    else:
        try:
            # The slot first: the run's children start while its input query runs (_run_pieces).
            with runner.slot():
                pieces, failed = _run_pieces(
                    run,
                    lambda: build_pieces(run),
                    deadline=deadline,
                    is_cancelled=is_cancelled,
                    limits=limits or limits_from_settings(),
                    python=python,
                    live=live,
                )
        except _InputFailed as failure:
            return _preparation_failed(run, failure.error, whole=False)
        except runner.RunnerBusy as error:
            # No slot: the input is still read, so that a bad query is named as before, and the
            # pieces recorded; a run without pieces needs no slot.
            try:
                pieces = build_pieces(run)
            except Exception as input_error:
                return _preparation_failed(run, input_error, whole=False)
            plan_degree(run, len(pieces))
            failed = pieces[0] if pieces else None
            if failed is not None:
                failed.status = "BUSY"
                failed.result = runner.Result(outcome=runner.Outcome.FAILED, error_message=str(error))
    try:
        _record(run, pieces, failed)
    except BaseException as error:
        # Nothing of the outcome was committed: the figures' files written for it go too.
        discard_kept_images(run)
        if isinstance(error, FiguresNotStored):
            run.stored_bytes = 0
            run.finish(Run.Status.FAILED, error_code=error.code, error_message=error.message)
        raise
    if failed is not None and failed.error is not None:
        raise failed.error
    if failed is not None and failed.status == "BUSY":
        raise Busy(Busy.busy_message)
    return run


class _InputFailed(Exception):
    """The run's input could not be split into pieces (its query failed, say): `error` says why."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _preparation_failed(run: Run, error: Exception, *, whole: bool) -> Run:
    """A run that failed before any piece ran: its environment, or its input. An OmlError is the
    run's (recorded FAILED, returned); any other error is a fault of the service (recorded for an
    apply run, then raised)."""
    if isinstance(error, OmlError):
        run.finish(Run.Status.FAILED, error_code=error.code, error_message=error.message)
        return run
    if whole:
        raise error
    logger.error("Run %s: preparing the input failed", run.pk, exc_info=error)
    message = f"The service failed to prepare the input: {error}"
    run.finish(Run.Status.FAILED, error_code=ErrorCode.INTERNAL, error_message=message)
    raise error


def _job(run: Run, *, limits: runner.Limits, python: str | None, **fields: Any) -> runner.Job:
    version = run.script_version
    return runner.Job(
        source=version.source,
        function=version.entry_function,
        kwargs=function_kwargs(run.parameters),
        graphics=run.graphics,
        limits=limits,
        python=python,
        **fields,
    )


def _run_whole(
    run: Run,
    piece: Piece,
    *,
    limits: runner.Limits,
    python: str | None,
    is_cancelled: Callable[[], bool] | None,
    live: LiveRun | None,
) -> Piece | None:
    """A do-eval run's one piece, as runner.run's one-job child in this thread; returns it if it failed."""
    piece.status = "RUNNING"
    piece.started_at = time.time()
    try:
        result = runner.run(
            _job(run, limits=limits, python=python),
            is_cancelled=is_cancelled,
            tap=live.tap() if live is not None else None,
        )
    except runner.RunnerBusy:
        return _service_fault(piece, ErrorCode.BUSY, Busy.busy_message, Busy(Busy.busy_message))
    except runner.RunnerUnavailable as error:
        # A fault of this host's set-up (say, OMLWEB_RUNNER_ISOLATION names a level it lacks), not of the run.
        logger.error("The runner cannot start runs: %s", error)
        message = f"The service cannot run scripts on this host: {error}"
        raised = OmlError(message, code=ErrorCode.RUNNER_UNAVAILABLE, status=500)
        return _service_fault(piece, ErrorCode.RUNNER_UNAVAILABLE, message, raised)
    except Exception as error:
        # A fault of the service: the run must not stay RUNNING until the reaper finds it.
        logger.exception("Run %s: the runner failed", run.pk)
        return _service_fault(piece, ErrorCode.INTERNAL, "The service failed to run it.", error)
    piece.finished_at = time.time()
    piece.result = result
    piece.status = result.outcome.value
    return None if result.succeeded else piece


def _service_fault(piece: Piece, code: ErrorCode, message: str, error: BaseException) -> Piece:
    piece.finished_at = time.time()
    piece.status = "FAILED"
    piece.result = runner.Result(outcome=runner.Outcome.FAILED, error_message=message)
    piece.error_code, piece.error = code, error
    return piece


def _parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="lz4")
    return buffer.getvalue()


class _Parts:
    """A file that keeps what is written to it: Arrow's IPC writer hands it each column's buffer
    itself (a pyarrow Buffer over the table's memory), so a piece's rows reach the job pipe without
    the copy a BufferOutputStream makes (40 MB for a million rows of five columns)."""

    def __init__(self) -> None:
        self.parts: list = []
        self.closed = False

    def write(self, data) -> int:
        self.parts.append(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _arrow(table: pa.Table) -> list:
    """A piece's rows as Arrow IPC, in parts over its zero-copy slice; sent to the child as they are."""
    sink = _Parts()
    with pa.ipc.new_stream(pa.PythonFile(sink, mode="w"), table.schema) as writer:
        writer.write_table(table)
    return sink.parts


def _run_pieces(
    run: Run,
    build: Callable[[], list[Piece]],
    *,
    deadline: float,
    is_cancelled: Callable[[], bool] | None,
    limits: runner.Limits,
    python: str | None = None,
    live: LiveRun | None = None,
) -> tuple[list[Piece], Piece | None]:
    """Split the run's input into pieces (`build`, in this thread) while its first children start,
    then run every piece in up to the run's degree of children, each taking the next piece until
    none are left (runner.serve_pieces). Returns the pieces and the first that failed, if any;
    raises _InputFailed, once every child started is told there is nothing to run, when `build` fails.
    """
    input_type, na_omit = control_arguments(run.parameters)
    frame_orient = "columns" if run.kind == Run.Kind.GROUP_APPLY else "records"
    stop = threading.Event()
    lock = threading.Lock()
    failed: list[Piece] = []
    # Set once `build` is done (or failed): until then the children started wait for their first piece.
    ready = threading.Event()
    pieces: list[Piece] = []
    queue: Iterator[tuple[int, Piece]] = iter(())
    # The most children the run may have before its pieces are counted (a table-apply has one piece,
    # an index-apply its `times`); its degree once they are.
    requested = run.apply_options
    most = settings.OMLWEB_APPLY_MAX_PIECES
    if run.kind == Run.Kind.TABLE_APPLY:
        most = 1
    elif run.kind == Run.Kind.INDEX_APPLY:
        most = requested.get("times") or most
    degree = degree_for(
        service=run.service,
        parallel_flag=requested.get("parallelFlag", False),
        parallel=requested.get("parallel"),
        pieces=most,
    )
    timed_out = threading.Event()
    cancelled = threading.Event()  # the caller's is_cancelled said so
    has_data = run.kind in DATA_KINDS
    # For the children past the cores (`needed`): pieces taken, when each running one was taken,
    # the fastest piece done.
    taken_count = [0]
    running: dict[int, float] = {}
    progress: dict[str, float | None] = {"fastest": None}

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
        ready.wait()
        with lock:
            if stop.is_set():
                return None
            if deadline - time.monotonic() <= 0:
                timed_out.set()
                stop.set()
                return None
            taken = next(queue, None)
            if taken is not None:
                taken_count[0] += 1
                running[id(taken[1])] = time.monotonic()
                taken[1].status = "RUNNING"
                taken[1].started_at = time.time()
            return taken

    def finished(piece: Piece, result: runner.Result, status: str | None = None) -> None:
        piece.finished_at = time.time()
        with lock:
            since = running.pop(id(piece), None)
            if since is not None:
                took = time.monotonic() - since
                progress["fastest"] = min(took, progress["fastest"] or took)
        piece.data = None  # the rows are not needed any more
        piece.result = result
        piece.status = status or result.outcome.value
        if piece.status != "SUCCEEDED":
            fail(piece)

    def job(wall_seconds: float, data: runner.DataInput | None = None, args: tuple = ()) -> runner.Job:
        return _job(
            run,
            limits=dataclasses.replace(limits, wall_seconds=wall_seconds),
            python=python,
            args=args,
            data=data,
            frame_orient=frame_orient,
        )

    def needed(eager: int) -> bool:
        """Whether a child past the first `eager` is worth starting: pieces are left, and either a
        running piece has taken EXTRA_CHILD_SECONDS already (long pieces, or pieces that wait), or
        the pieces left would keep the running children busy that long. False, having started
        nothing, when no piece is left to take or the run stopped."""
        while not stop.wait(EXTRA_CHILD_POLL_SECONDS):
            with lock:
                left = len(pieces) - taken_count[0]
                oldest = min(running.values(), default=None)
                fastest = progress["fastest"]
            if left <= 0:
                return False
            if oldest is not None and time.monotonic() - oldest >= EXTRA_CHILD_SECONDS:
                return True
            # The fastest piece done: a child's first piece also pays for the child's start.
            if fastest is not None and left * fastest / eager >= EXTRA_CHILD_SECONDS:
                return True
        return False

    def work(number: int) -> None:
        """One child: takes pieces until none are left. Children past the machine's cores start
        only when the pieces are long enough to be worth one more process (`needed`)."""
        held: dict[int, Piece] = {}
        if number >= min(degree, _cores()):
            ready.wait()
            # `degree` is the run's now: the children at once were started before it was known.
            if number >= degree or not needed(min(degree, _cores())):
                return

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
                child_cpu_seconds=lambda: limits.cpu_seconds * len(pieces),
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
        ready.wait()
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

    input_error: Exception | None = None
    with ThreadPoolExecutor(max_workers=degree, thread_name_prefix=f"apply-{run.pk}") as pool:
        futures = [pool.submit(work, number) for number in range(degree)]
        try:
            pieces = build()
            queue = iter(enumerate(pieces))
            degree = plan_degree(run, len(pieces))
            if live is not None:
                live.follow_pieces(pieces)
            if is_cancelled is not None and is_cancelled():
                # Cancelled while the query ran: no piece starts.
                cancelled.set()
                stop.set()
        except Exception as error:
            input_error = error
            stop.set()
        finally:
            ready.set()
        # The caller's cancel check may query the database: it is asked here, in the caller's thread.
        while wait(futures, timeout=CANCEL_CHECK_SECONDS).not_done:
            if is_cancelled is not None and not stop.is_set() and is_cancelled():
                cancelled.set()
                stop.set()
    for future in futures:
        future.result()
    if input_error is not None:
        raise _InputFailed(input_error)
    for piece in pieces:
        if piece.status == "PENDING":
            piece.status = "SKIPPED"
            piece.data = None
    if failed:
        return pieces, failed[0]
    if cancelled.is_set() and any(piece.status == "SKIPPED" for piece in pieces):
        # Cancelled between two pieces (no child was running one to be killed): the first piece
        # left is the cancelled one; a run with pieces never run must not read as SUCCEEDED.
        late = next(piece for piece in pieces if piece.status == "SKIPPED")
        late.status = "CANCELLED"
        late.result = runner.Result(
            outcome=runner.Outcome.CANCELLED, failure=runner.Failure.CANCELLED, error_message="The run was cancelled"
        )
        return pieces, late
    if timed_out.is_set():
        late = next(piece for piece in pieces if piece.status == "SKIPPED")
        late.status = "TIMED_OUT"
        late.result = runner.Result(
            outcome=runner.Outcome.TIMED_OUT,
            failure=runner.Failure.TIMEOUT,
            error_message=f"The run exceeded its time limit of {_wall_seconds(run):g} seconds",
        )
        return pieces, late
    return pieces, None


def _cores() -> int:
    """The cores this process may run on: more children than that only share them."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _wall_seconds(run: Run) -> float:
    return float(run.timeout_seconds or settings.OMLWEB_RUN_WALL_SECONDS)


def _record(run: Run, pieces: list[Piece], failed: Piece | None) -> None:
    """Keep what the run's pieces brought back: the one place a run's value, figures (numbered from 1,
    OML's ID), streams, stored bytes and outcome are recorded. A do-eval run's one piece keeps its
    value's JSON text as its process checked it and its streams as printed, with no piece timeline."""
    if failed is not None and failed.error_code is not None:
        # A fault of the service, not of the run: nothing came back to keep.
        assert failed.result is not None
        run.finish(Run.Status.FAILED, error_code=failed.error_code, error_message=failed.result.error_message)
        return
    whole = len(pieces) == 1 and pieces[0].whole
    size = sum(shares.result_size(piece.result) for piece in pieces if piece.result is not None)
    entries, stdout, stderr, position = [], [], [], 0
    # The quota is checked, and what the run keeps counted (Run.finish), under the user's lock.
    with transaction.atomic():
        refusal = shares.quota_refusal(run=run, size=size)
        if refusal is not None:
            # Nothing of the pieces is kept (values, figures, streams): it would all count against the quota.
            if not whole:
                run.pieces = [{"label": p.label, "key": p.key, "rows": p.rows, "status": p.status} for p in pieces]
            run.finish(Run.Status.FAILED, error_code=ErrorCode.QUOTA_EXCEEDED, error_message=refusal)
            return
        run.stored_bytes = size
        # After the commit, not in the request: the checkpoint of what it wrote (omlweb/sqlite_checkpoint.py).
        transaction.on_commit(lambda: sqlite_checkpoint.stored(size))
        for piece in pieces:
            result = piece.result
            if whole:
                assert result is not None, "a do-eval run's piece always carries its result"
                # All its figures, even a failed run's: what it drew before it failed.
                save_figures(run, result.figures)
                stdout.append(result.stdout)
                stderr.append(result.stderr)
                continue
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
        if not whole:
            run.pieces = entries
        run.stdout = "".join(stdout)
        run.stderr = "".join(stderr)
        if failed is None:
            if whole:
                result = pieces[0].result
                assert result is not None
                # The JSON text the run's process checked, kept as it is (and its value, if something in
                # this process decoded it already: a do-eval DataFrame is answered as text, never decoded).
                run.set_result_json(result.value_json, result.decoded_value)
            else:
                run.result = assemble(run.kind, pieces)
            run.finish(Run.Status.SUCCEEDED)
            return
        result = failed.result
        assert result is not None, "a failed piece always carries its result (a BUSY one too)"
        if failed.status == "BUSY":
            code, status = ErrorCode.BUSY, Run.Status.FAILED
        else:
            code, status = FAILURE_CODES.get(result.failure, ErrorCode.INTERNAL), Run.Status(result.outcome.value)
        if whole:
            run.finish(status, error_code=code, error_message=result.error_message, traceback=result.traceback)
            return
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


class KeptImage(NamedTuple):
    """A figure stored for a run's outcome: its row's position and title, its file's name and bytes."""

    position: int
    title: str | None
    name: str
    png: bytes


class FiguresNotStored(OmlError):
    """A figure's file could not be written: the run is failed, nothing of its outcome kept."""

    status = 500
    code = ErrorCode.INTERNAL


def save_figures(run: Run, figures: list[runner.Figure], *, after: int = 0) -> list[int]:
    """Keep figures as the run's images, numbered on from `after` (OML's ID); returns their positions.

    Call inside the transaction that records the outcome: each file is written before that commits,
    the rows in one INSERT. What was stored is kept on the run (`Run.kept_images`): the answer encodes
    those bytes, and `discard_kept_images` removes the files when the transaction does not commit."""
    if run.kept_images is None:
        run.kept_images = []
    images = []
    for position, figure in enumerate(figures, start=after + 1):
        image = RunImage(run=run, position=position, title=figure.title)
        try:
            # The storage's own save: a name no other attempt of the run has written (it never overwrites).
            image.image.save(f"{position}.png", ContentFile(figure.png), save=False)
        except Exception as error:
            logger.exception("Run %s: figure %s could not be stored", run.pk, position)
            raise FiguresNotStored(
                f"The service could not store figure {position} of the run; nothing of the run was kept."
            ) from error
        assert image.image.name, "a saved file has its name"
        run.kept_images.append(KeptImage(position, figure.title, image.image.name, figure.png))
        images.append(image)
    if images:
        RunImage.objects.bulk_create(images)
    return [image.position for image in images]


def discard_kept_images(run: Run) -> None:
    """Remove the files `save_figures` wrote for an outcome whose transaction did not commit."""
    kept, run.kept_images = run.kept_images or [], None
    if not kept:
        return
    storage = RunImage._meta.get_field("image").storage
    for image in kept:
        try:
            storage.delete(image.name)
        except Exception:
            logger.exception("Run %s: the file of figure %s could not be removed", run.pk, image.position)
