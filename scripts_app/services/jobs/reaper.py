"""The reaper and retention: no run stays QUEUED or RUNNING forever, and old runs go."""

from __future__ import annotations

import dataclasses
import functools
import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from scripts_app.errors import ErrorCode
from scripts_app.models import Run, RunImage
from scripts_app.services import retries, shares
from scripts_app.services.jobs import broker, submission

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ReapReport:
    requeued: list[str] = dataclasses.field(default_factory=list)
    failed: list[str] = dataclasses.field(default_factory=list)
    cancelled: list[str] = dataclasses.field(default_factory=list)
    republished: list[str] = dataclasses.field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.requeued or self.failed or self.cancelled or self.republished)


def reap_runs(*, now: datetime | None = None) -> ReapReport:
    """Take back what dead processes left: no run stays QUEUED or RUNNING forever.

    - An async run whose heartbeat is older than OMLWEB_HEARTBEAT_STALE_SECONDS lost its worker: it is
      requeued, or failed once it was tried OMLWEB_RUN_MAX_ATTEMPTS times, or cancelled if that was asked.
    - A queued async run whose message may be lost is published again (see `_republish_lost`).
    - A sync run still open well past the sync wall-clock limit lost its web process: it is failed.
    Every change is a conditional UPDATE, so reapers on several machines at once do no harm.
    """
    now = now or timezone.now()
    report = ReapReport()
    stale_before = now - timedelta(seconds=settings.OMLWEB_HEARTBEAT_STALE_SECONDS)
    stale = Run.objects.filter(mode=Run.Mode.ASYNC, status=Run.Status.RUNNING).filter(
        Q(heartbeat_at__lt=stale_before) | Q(heartbeat_at__isnull=True, started_at__lt=stale_before)
    )
    for run in stale:
        outcome = _take_back(run, now=now, lost=f"its worker {run.worker or '(unknown)'} stopped answering")
        if outcome:
            getattr(report, outcome).append(str(run.pk))
            if outcome == "requeued":
                submission.publish_quietly(run)
    report.republished = _republish_lost(now=now)
    sync_limit = timedelta(seconds=settings.OMLWEB_RUN_WALL_SECONDS + settings.OMLWEB_HEARTBEAT_STALE_SECONDS)
    orphans = Run.objects.filter(mode=Run.Mode.SYNC, status__in=Run.ACTIVE, created_at__lt=now - sync_limit)
    for pk in orphans.values_list("pk", flat=True):
        if Run.objects.filter(pk=pk).finish(
            Run.Status.FAILED,
            now=now,
            error_code=ErrorCode.CRASHED,
            error_message="The web process running this synchronous run stopped before it finished.",
        ):
            report.failed.append(str(pk))
    return report


def _take_back(run: Run, *, now: datetime, lost: str) -> str | None:
    """Take a RUNNING run from the attempt that lost its worker: "requeued", "failed" once it was started
    OMLWEB_RUN_MAX_ATTEMPTS times, or "cancelled" if a cancel was asked; None if another change won."""
    taken = Run.objects.held_by(run)
    if run.cancel_requested_at:
        cancelled = taken.finish(
            Run.Status.CANCELLED,
            now=now,
            error_code=ErrorCode.CANCELLED,
            error_message=f"The job was cancelled; {lost}.",
        )
        return "cancelled" if cancelled else None
    if retries.takes_over(run):
        # Under a retry policy each attempt is a run of its own: this one ends, its retry is a new run.
        failed = taken.finish(
            Run.Status.FAILED,
            now=now,
            error_code=ErrorCode.WORKER_LOST,
            error_message=f"This attempt stopped: {lost} (killed, or out of memory).",
        )
        if failed:
            logger.warning("Run %s: %s; its retry policy decides (attempt %s)", run.pk, lost, run.retry_number + 1)
            retries.after_finish(run)
        return "failed" if failed else None
    if run.attempts >= settings.OMLWEB_RUN_MAX_ATTEMPTS:
        failed = taken.finish(
            Run.Status.FAILED,
            now=now,
            error_code=ErrorCode.CRASHED,
            error_message=(
                f"The job was started {run.attempts} times and each time {lost} "
                "(killed, or out of memory); it is not tried again."
            ),
        )
        if failed:
            logger.warning("Run %s failed: %s, attempt %s", run.pk, lost, run.attempts)
        return "failed" if failed else None
    if taken.requeue(now=now):
        logger.warning("Run %s requeued: %s (attempt %s)", run.pk, lost, run.attempts)
        return "requeued"
    return None


def worker_lost(*, worker: str, died_at: datetime | None = None) -> list[str]:
    """A worker process died (its supervisor saw it exit): hand back every run it held, at once.

    The supervisor knows the process is gone, so there is no need to wait for the heartbeat to go stale:
    each run is requeued and published again (or failed past OMLWEB_RUN_MAX_ATTEMPTS, or cancelled if
    that was asked). A message the broker still holds for it finds the run claimed or finished, and does
    nothing. Only runs started before `died_at` are its: a process restarted under the same name may
    have claimed one since. Returns the ids of the runs handed back.
    """
    handed_back = []
    held = Run.objects.filter(mode=Run.Mode.ASYNC, status=Run.Status.RUNNING, worker=worker)
    for run in held.filter(Q(started_at__lte=died_at or timezone.now()) | Q(started_at__isnull=True)):
        outcome = _take_back(run, now=timezone.now(), lost=f"its worker process {worker} died")
        if outcome:
            handed_back.append(str(run.pk))
            if outcome == "requeued":
                submission.publish_quietly(run)
    return handed_back


def _republish_lost(*, now: datetime) -> list[str]:
    """Publish again queued runs whose message may be lost, oldest first.

    A message can be lost between the commit and the publish (a crash), or with the worker that had
    reserved it (the embedded broker deletes a message file when a worker fetches it). When a level's
    queue holds fewer messages than it has queued runs, the difference is republished from the runs
    waiting longest; a duplicate is harmless because only one delivery can claim the run.
    """
    republished: list[str] = []
    before = now - timedelta(seconds=settings.OMLWEB_REQUEUE_AFTER_SECONDS)
    for level in broker.service_levels():
        queued = Run.objects.filter(mode=Run.Mode.ASYNC, status=Run.Status.QUEUED, service=level)
        waiting_long = queued.filter(Q(enqueued_at__lt=before) | Q(enqueued_at__isnull=True))
        if not waiting_long.exists():
            continue
        in_queue = broker.queue_length(level)
        missing = queued.count() - in_queue if in_queue is not None else waiting_long.count()
        if missing <= 0:
            continue
        for run in waiting_long.order_by(F("enqueued_at").asc(nulls_first=True))[:missing]:
            if Run.objects.filter(pk=run.pk).published(now=now):
                submission.publish_quietly(run)
                republished.append(str(run.pk))
    return republished


# Retention


def prune_runs(*, now: datetime | None = None, batch: int = 1000) -> int:
    """Delete finished runs (and their image files) older than OMLWEB_RUN_RETENTION_DAYS. Returns how many."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=settings.OMLWEB_RUN_RETENTION_DAYS)
    deleted = 0
    while True:
        # In batches: a long delete would hold SQLite's write lock away from every worker.
        ids = list(
            Run.objects.filter(status__in=Run.FINISHED, finished_at__lt=cutoff).values_list("pk", flat=True)[:batch]
        )
        if not ids:
            return deleted
        with transaction.atomic():
            images = list(RunImage.objects.filter(run_id__in=ids))
            shares.delete_runs(Run.objects.filter(pk__in=ids))
            transaction.on_commit(functools.partial(submission.delete_image_files, images))
        deleted += len(ids)
