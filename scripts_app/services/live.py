"""Live runs: what a running run prints, its place in the queue, and how it went so far.

The writing side runs where the run runs (a Celery worker for a job). `LiveRun` is a thread beside
the runner: every OMLWEB_LIVE_FLUSH_SECONDS it takes what the run's jobs printed since the last time
(`runner.Tap`) and, only when there is something, inserts it as RunOutput rows; for an apply run it
also writes the pieces' progress into the run's `pieces`. Each stream's rows add up to at most the
run's stdout bound (OMLWEB_RUN_MAX_STREAM_KB, plus the cut note): a flood of output costs neither
memory nor database beyond it. When the run ends its rows are removed: its stdout and stderr hold the
whole output, stored exactly as before.

The reading side is the run page's poll (views.live): the rows after the last one it has, the
run's state, the time it has waited or run, and its timeline.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import threading
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from scripts_app import runner
from scripts_app.models import Run, RunOutput

logger = logging.getLogger(__name__)


class LiveRun:
    """A thread beside a running run that writes what it prints, as it prints it.

    `tap()` gives the runner a tap for one job (an apply run: one per piece, named by its label);
    `follow_pieces()` hands over an apply run's pieces, whose progress is written with the output.
    """

    def __init__(self, *, run: Run, interval: float | None = None) -> None:
        self.run_id = run.pk
        self.attempt = run.attempts
        self.interval = settings.OMLWEB_LIVE_FLUSH_SECONDS if interval is None else interval
        self._taps: list[runner.Tap] = []
        self._taps_lock = threading.Lock()
        self._pieces: list | None = None
        self._pieces_written = ""
        # Per stream, the piece whose output the last row ended with (apply runs name each piece).
        self._last_label: dict[str, str | None] = {}
        self._wrote = False
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"live-{run.pk}", daemon=True)

    def tap(self, label: str | None = None) -> runner.Tap:
        tap = runner.Tap(label)
        with self._taps_lock:
            self._taps.append(tap)
        return tap

    def follow_pieces(self, pieces: list) -> None:
        self._pieces = pieces

    def start(self, *, flushed_by_caller: bool = False) -> LiveRun:
        """Start writing. `flushed_by_caller`: no thread of its own; the caller calls `flush_quietly()`
        every `interval` from a thread it runs anyway (a job's RunWatch) and stops calling before `stop()`."""
        if self.attempt > 1:
            # What an earlier attempt printed before its worker was lost is not this attempt's.
            try:
                RunOutput.objects.filter(run_id=self.run_id, attempt__lt=self.attempt).delete()
            except Exception:
                # Live output is a view of the run, never a reason for it not to run.
                logger.exception("Run %s: removing an earlier attempt's live output failed", self.run_id)
        if not flushed_by_caller:
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop writing and remove this attempt's rows: the run's own stdout and stderr take over."""
        self._stopped.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=10)
        if not self._wrote:
            return
        try:
            RunOutput.objects.filter(run_id=self.run_id, attempt=self.attempt).delete()
        except Exception:
            # Left behind, they are removed with the run; a finished run's page never reads them.
            logger.exception("Run %s: removing its live output failed", self.run_id)

    def __enter__(self) -> LiveRun:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _loop(self) -> None:
        try:
            while not self._stopped.wait(self.interval):
                self.flush_quietly()
        finally:
            connection.close()

    def flush_quietly(self) -> None:
        try:
            self.flush()
        except Exception:
            # A locked or unreachable database must not stop the run; the next flush tries again.
            logger.exception("Run %s: writing its live output failed", self.run_id)
            close_old_connections()

    def flush(self) -> int:
        """Write what is new; returns how many rows were written."""
        with self._taps_lock:
            taps = list(self._taps)
        rows = []
        for tap in taps:
            for stream, text in tap.take().items():
                if not text:
                    continue
                if tap.label is not None and self._last_label.get(stream) != tap.label:
                    # Pieces run at once: a heading wherever the output passes to another piece.
                    text = f"--- {tap.label} ---\n{text}"
                self._last_label[stream] = tap.label
                rows.append(RunOutput(run_id=self.run_id, attempt=self.attempt, stream=stream, text=text))
        if rows:
            self._wrote = True
            RunOutput.objects.bulk_create(rows)
        self._write_pieces()
        return len(rows)

    def _write_pieces(self) -> None:
        if self._pieces is None:
            return
        entries = [piece_progress(piece) for piece in list(self._pieces)]
        written = json.dumps(entries)
        if written == self._pieces_written:
            return
        # Only while this attempt runs it: the recorded outcome's pieces are never overwritten.
        Run.objects.filter(pk=self.run_id, status=Run.Status.RUNNING, attempts=self.attempt).update(pieces=entries)
        self._pieces_written = written


def piece_progress(piece) -> dict:
    """An apply piece as the run's `pieces` hold it while the run goes on (execution._record writes the last)."""

    def iso(timestamp: float | None) -> str | None:
        return None if timestamp is None else dt.datetime.fromtimestamp(timestamp, tz=dt.UTC).isoformat()

    seconds = None
    if piece.started_at is not None and piece.finished_at is not None:
        seconds = round(piece.finished_at - piece.started_at, 6)
    return {
        "label": piece.label,
        "key": piece.key,
        "rows": piece.rows,
        "status": piece.status,
        "started_at": iso(piece.started_at),
        "finished_at": iso(piece.finished_at),
        "seconds": seconds,
    }


def maybe_live(run: Run) -> LiveRun | None:
    """A LiveRun for `run` unless OMLWEB_LIVE_FLUSH_SECONDS is 0 (live output off)."""
    return LiveRun(run=run) if settings.OMLWEB_LIVE_FLUSH_SECONDS > 0 else None


# Reading


@dataclasses.dataclass
class Output:
    """What the page has not shown yet: each stream's new text, and the last row it includes."""

    stdout: str = ""
    stderr: str = ""
    last: int = 0


def output_after(run: Run, after: int = 0) -> Output:
    """The live output of the run's current attempt written after row `after`, in order."""
    output = Output(last=after)
    rows = RunOutput.objects.filter(run=run, attempt=run.attempts, id__gt=after).order_by("id")
    parts: dict[str, list[str]] = {"stdout": [], "stderr": []}
    for pk, stream, text in rows.values_list("id", "stream", "text"):
        parts.setdefault(stream, []).append(text)
        output.last = pk
    output.stdout = "".join(parts["stdout"])
    output.stderr = "".join(parts["stderr"])
    return output


def queue_position(run: Run) -> int | None:
    """A queued job's place in its service level's queue (1: next), by the time it was submitted."""
    if run.status != Run.Status.QUEUED or run.mode != Run.Mode.ASYNC:
        return None
    ahead = Run.objects.filter(
        status=Run.Status.QUEUED, mode=Run.Mode.ASYNC, service=run.service, created_at__lt=run.created_at
    ).count()
    return ahead + 1


def state_key(run: Run, position: int | None) -> str:
    """What the page's status sentence says, in short: it is sent again only when this changes."""
    return f"{run.status}.{position or 0}.{int(run.cancel_requested_at is not None)}"


def elapsed_seconds(run: Run, now: dt.datetime | None = None) -> dict:
    """How long the run has waited (queued) or run (running), or took (finished), in whole seconds."""
    now = now or timezone.now()
    if run.status == Run.Status.QUEUED:
        return {"waiting": _seconds(now - (run.enqueued_at or run.created_at))}
    if run.status == Run.Status.RUNNING:
        return {"running": _seconds(now - (run.started_at or run.created_at))}
    return {}


def _seconds(delta: dt.timedelta) -> int:
    return max(0, int(delta.total_seconds()))


def clock(seconds: int) -> str:
    """1:05, 12:00:03: minutes and seconds, with hours when there are some."""
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def timeline(run: Run, now: dt.datetime | None = None) -> list[dict]:
    """The run's steps so far, in order: queued, back in the queue (a job started again), started,
    its pieces (apply runs), finished. Each: name, time (or None), a short note, and whether it is
    the step the run is at."""
    now = now or timezone.now()
    steps: list[dict[str, Any]] = [
        {"name": "Queued" if run.mode == Run.Mode.ASYNC else "Submitted", "at": run.created_at, "note": ""}
    ]
    if run.mode == Run.Mode.ASYNC and run.attempts and (run.attempts > 1 or run.status == Run.Status.QUEUED):
        lost = run.attempts if run.status == Run.Status.QUEUED else run.attempts - 1
        steps.append(
            {
                "name": "Back in the queue",
                "at": run.enqueued_at if run.enqueued_at and run.enqueued_at > run.created_at else None,
                "note": f"attempt {lost} lost its worker",
            }
        )
    if run.started_at and run.status != Run.Status.QUEUED:
        waited = _seconds(run.started_at - (run.enqueued_at or run.created_at))
        note = f"after {clock(waited)} in the queue" if run.mode == Run.Mode.ASYNC else ""
        if run.attempts > 1:
            note = f"attempt {run.attempts}" + (f", {note}" if note else "")
        if run.worker:
            note += (", " if note else "") + f"on {run.worker}"
        steps.append({"name": "Started", "at": run.started_at, "note": note})
    pieces = run.pieces or []
    if pieces:
        done = sum(1 for piece in pieces if piece.get("finished_at"))
        running = sum(1 for piece in pieces if piece.get("status") == "RUNNING")
        ends = [piece["finished_at"] for piece in pieces if piece.get("finished_at")]
        note = f"{done} of {len(pieces)} done"
        if running and not run.is_finished:
            note += f", {running} running"
        last = dt.datetime.fromisoformat(max(ends)) if ends else None
        steps.append({"name": "Pieces", "at": last, "note": note, "done": done, "total": len(pieces)})
    if run.is_finished:
        note = run.get_status_display().replace("_", " ").capitalize()
        if run.duration_seconds is not None:
            note += f" after {run.duration_seconds:.2f} s"
        steps.append({"name": "Finished", "at": run.finished_at, "note": note})
    else:
        steps[-1]["current"] = True
    return steps
