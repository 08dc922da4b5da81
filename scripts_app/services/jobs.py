"""Async jobs: Oracle's job flow on top of Run rows, executed by Celery workers.

The Run row is the truth. Celery carries only the run's id; a task claims the row with a conditional
UPDATE (QUEUED -> RUNNING), so a second delivery of the same message does nothing. While it runs, the
worker heartbeats the row and polls it for a cancel request. The reaper takes back runs whose worker
vanished and republishes queued runs whose message was lost.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from scripts_app import roles, runner
from scripts_app.errors import (
    BROKER_UNAVAILABLE_MESSAGE,
    BadRequest,
    Busy,
    ErrorCode,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from scripts_app.models import Run, RunImage, ServiceLevel
from scripts_app.services import apply, retries, runs, shares, supervision

logger = logging.getLogger(__name__)

ACTIVE = (Run.Status.QUEUED, Run.Status.RUNNING)
# Celery's hard time limit is only a backstop behind the runner's own wall clock.
CELERY_TIME_LIMIT_MARGIN_SECONDS = 300
# A job deferred because its user runs their share waits this long (up to twice, with jitter) before
# a worker tries it again.
DEFER_SECONDS = 2.0


def queue_name(service: str) -> str:
    return f"{settings.OMLWEB_QUEUE_PREFIX}.{service.lower()}"


def service_levels() -> list[str]:
    return [level.value for level in ServiceLevel]


# Submitting


def job_submit(
    *,
    create: Callable[..., Run] = runs.run_create,
    timeout_seconds: int | None = None,
    comments: str = "",
    **run_fields,
) -> Run:
    """Record an async run, QUEUED, and publish its id once the row is committed.

    `create` records the run from `run_fields`: `runs.run_create` for do-eval, `apply.apply_create`
    (with its kind and input) for the apply endpoints.
    """
    with transaction.atomic():
        run = create(
            mode=Run.Mode.ASYNC,
            timeout_seconds=timeout_seconds or settings.OMLWEB_ASYNC_TIMEOUT_SECONDS,
            comments=comments,
            **run_fields,
        )
        run.enqueued_at = run.created_at
        run.save(update_fields=["enqueued_at"])
    if connection.in_atomic_block:
        # Inside the caller's own transaction: publish once that commits; if the broker is down then, the
        # row stays QUEUED and the reaper publishes it later.
        transaction.on_commit(lambda: _publish_quietly(run), robust=True)
        return run
    # Published after the commit, so a worker always finds the row; and not in the background: a job the
    # broker did not take is refused (503) and its row removed, never accepted and left waiting.
    try:
        job_enqueue(run=run)
    except Exception as error:
        logger.warning("Run %s: the broker refused it (%r); the submission is refused", run.pk, error)
        job_delete(run=run)
        raise Unavailable(BROKER_UNAVAILABLE_MESSAGE, code=ErrorCode.BROKER_UNAVAILABLE) from error
    return run


def job_enqueue(*, run: Run, countdown: float | None = None) -> None:
    """Publish the run's id on its service level's queue (to be delivered `countdown` seconds later)."""
    from scripts_app.tasks import execute_job

    timeout = run.timeout_seconds or settings.OMLWEB_ASYNC_TIMEOUT_SECONDS
    execute_job.apply_async(
        args=[str(run.pk)],
        queue=queue_name(run.service),
        time_limit=timeout + CELERY_TIME_LIMIT_MARGIN_SECONDS,
        countdown=countdown,
    )


# Reading


def jobs_visible_to(user):
    """The async runs a user may see and touch: their own; an admin's are everyone's."""
    jobs = Run.objects.filter(mode=Run.Mode.ASYNC)
    return jobs if roles.is_admin(user) else jobs.filter(user=user)


def job_get(*, user, job_id: str) -> Run:
    """A job the user may see; 404 for one that does not exist or is someone else's."""
    try:
        pk = uuid.UUID(str(job_id))
    except ValueError:
        raise NotFound(f"Job {job_id} does not exist.") from None
    run = jobs_visible_to(user).filter(pk=pk).first()
    if run is None:
        raise NotFound(f"Job {job_id} does not exist.")
    return run


def job_for_change(*, user, job_id: str) -> Run:
    """A job the user may cancel or delete: `job_get`'s, but never for an auditor (403)."""
    run = job_get(user=user, job_id=job_id)
    if roles.is_read_only(user):
        raise PermissionDenied("Auditors have read-only access: they do not cancel or delete jobs.")
    return run


def elapsed(run: Run, now: datetime | None = None) -> timedelta:
    end = run.finished_at or now or timezone.now()
    return max(end - run.created_at, timedelta(0))


def hms(duration: timedelta) -> str:
    seconds = int(duration.total_seconds())
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def job_attempt(run: Run) -> int:
    """The attempt a job is on: the one running it, the next one while it waits, the last once finished.

    Above 1, a worker died during an earlier attempt and the job started again from the beginning.
    """
    return run.attempts + 1 if run.status == Run.Status.QUEUED else max(run.attempts, 1)


def oracle_date(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# Cancelling and deleting


def job_cancel(*, run: Run) -> Run:
    """Stop a queued or running job; it ends CANCELLED. A finished job can't be cancelled (400)."""
    now = timezone.now()
    if Run.objects.filter(pk=run.pk, status=Run.Status.QUEUED).update(
        status=Run.Status.CANCELLED,
        cancel_requested_at=now,
        finished_at=now,
        error_code=ErrorCode.CANCELLED,
        error_message="The job was cancelled before it started.",
    ):
        run.refresh_from_db()
        return run
    # Running: the worker holding it sees the flag within OMLWEB_CANCEL_POLL_SECONDS and kills the run.
    if not Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING).update(cancel_requested_at=now):
        raise BadRequest("Job is not running.", code=ErrorCode.BAD_REQUEST)
    run.refresh_from_db()
    return run


def job_delete(*, run: Run) -> None:
    """Delete a job and its images; a worker running it notices the row is gone and kills the run."""
    with transaction.atomic():
        images = list(RunImage.objects.filter(run=run))
        Run.objects.filter(pk=run.pk).delete()
        transaction.on_commit(lambda: _delete_files(images))


def _delete_files(images: list[RunImage]) -> None:
    for image in images:
        image.image.delete(save=False)


# Executing (in a Celery worker)


def job_execute(*, run_id: str, worker: str) -> Run | None:
    """Claim a queued run, run it (do-eval or apply) while heartbeating, record the outcome.

    Returns None when there was nothing to do (the run is gone, finished, or held by another worker),
    when its user is at their share of running jobs (it goes back to the queue), or when the run was
    taken from this attempt while it ran (deleted, or reaped and requeued).
    """
    try:
        run = job_claim(run_id=run_id, worker=worker)
    except JobDeferred:
        job_defer(run_id=run_id)
        return None
    if run is None:
        return None
    watch = RunWatch(run=run)
    watch.start()
    try:
        runs.run_execute(run=run, is_cancelled=watch.is_cancelled, limits=job_limits(run), claimed=True)
    except runs.RunTakenAway:
        logger.warning("Run %s: taken from this attempt while it ran; its outcome is dropped", run.pk)
        return None
    except Busy:
        # Recorded FAILED with the busy code by run_execute: a worker process runs one job at a time,
        # so its runner slots are only ever taken by this job's own pieces.
        pass
    except Exception as error:
        logger.exception("Run %s: the service failed to run it", run.pk)
        job_fail(run=run, message=f"The service failed to run the job: {error}")
    finally:
        watch.stop()
    # A failed run whose script or schedule has a retry policy is tried again as a new run.
    retries.after_finish(run)
    return run


def job_limits(run: Run) -> runner.Limits:
    """The run's service level's limits; an async run's own timeout bounds both wall clock and CPU."""
    limits = runs.limits_from_settings(wall_seconds=run.timeout_seconds)
    level = settings.OMLWEB_SERVICE_LEVELS[run.service]
    return dataclasses.replace(
        limits,
        cpu_seconds=max(limits.cpu_seconds, int(run.timeout_seconds or 0)),
        memory_bytes=level["memory_mb"] * 1024**2,
    )


class JobDeferred(Exception):
    """The job's user already runs their share of jobs: it must wait in the queue."""


def job_claim(*, run_id: str, worker: str) -> Run | None:
    """Mark a queued run RUNNING for this worker; None when it is not queued any more. Raises
    JobDeferred, claiming nothing, when its user already has their share of jobs running."""
    queued = Run.objects.filter(pk=run_id, status=Run.Status.QUEUED, cancel_requested_at__isnull=True)
    with transaction.atomic():
        owner = queued.values_list("user_id", "service").first()
        # Counted and claimed under the user's lock, so two workers cannot both take the last share.
        if owner is not None and not shares.job_may_start(user_id=owner[0], service=owner[1]):
            raise JobDeferred(run_id)
        now = timezone.now()
        claimed = queued.update(
            status=Run.Status.RUNNING,
            started_at=now,
            heartbeat_at=now,
            worker=worker,
            attempts=F("attempts") + 1,
        )
    if not claimed:
        logger.info("Run %s: not queued any more (finished, held by another worker, or deleted); skipped", run_id)
        return None
    return Run.objects.select_related("script_version").filter(pk=run_id).first()


def job_defer(*, run_id: str) -> None:
    """Put a job whose user is at their share back on the queue, to be tried again a little later.

    Its slot goes to the next message meanwhile, so other users' jobs behind it run. `enqueued_at` is
    renewed with each deferral: a job that keeps being deferred is not waiting on a lost message, and
    the reaper must not publish it again (each copy would be deferred and published again in turn).
    """
    run = Run.objects.filter(pk=run_id, status=Run.Status.QUEUED).first()
    if run is None or not Run.objects.filter(pk=run.pk, status=Run.Status.QUEUED).update(enqueued_at=timezone.now()):
        return
    logger.info("Run %s: its user already runs their share of jobs; back in the queue", run_id)
    job_enqueue(run=run, countdown=DEFER_SECONDS + random.uniform(0, DEFER_SECONDS))


def _held(run: Run):
    """The row as long as this attempt of this worker still holds it."""
    return Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING, worker=run.worker, attempts=run.attempts)


def job_fail(*, run: Run, message: str, code: int = ErrorCode.INTERNAL) -> None:
    _held(run).update(
        status=Run.Status.FAILED, finished_at=timezone.now(), error_code=code, error_message=message, traceback=""
    )


class RunWatch:
    """A thread beside the runner: heartbeats the run and turns a cancel request into `is_cancelled()`.

    It reads the row at most every OMLWEB_CANCEL_POLL_SECONDS, whatever the runner polls. The run counts
    as cancelled when a cancel was requested, or the row was deleted or taken away from this attempt.
    """

    def __init__(self, *, run: Run) -> None:
        self.run = run
        self._cancelled = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"watch-{run.pk}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)

    def is_cancelled(self) -> bool:
        return self._cancelled.is_set()

    def _loop(self) -> None:
        beat_every = settings.OMLWEB_HEARTBEAT_SECONDS
        poll_every = min(settings.OMLWEB_CANCEL_POLL_SECONDS, beat_every)
        next_beat = 0.0
        try:
            while not self._stopped.wait(poll_every):
                try:
                    if time.monotonic() >= next_beat:
                        next_beat = time.monotonic() + beat_every
                        if not _held(self.run).update(heartbeat_at=timezone.now()):
                            self._cancelled.set()
                    if _held(self.run).filter(cancel_requested_at__isnull=False).exists():
                        self._cancelled.set()
                except Exception:
                    # A locked or unreachable database must not kill the run; the next poll tries again.
                    logger.exception("Run %s: heartbeat failed", self.run.pk)
                    close_old_connections()
        finally:
            connection.close()


# The reaper


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
                _publish_quietly(run)
    report.republished = _republish_lost(now=now)
    sync_limit = timedelta(seconds=settings.OMLWEB_RUN_WALL_SECONDS + settings.OMLWEB_HEARTBEAT_STALE_SECONDS)
    orphans = Run.objects.filter(mode=Run.Mode.SYNC, status__in=ACTIVE, created_at__lt=now - sync_limit)
    for pk in orphans.values_list("pk", flat=True):
        if Run.objects.filter(pk=pk, status__in=ACTIVE).update(
            status=Run.Status.FAILED,
            finished_at=now,
            error_code=ErrorCode.CRASHED,
            error_message="The web process running this synchronous run stopped before it finished.",
        ):
            report.failed.append(str(pk))
    return report


def _take_back(run: Run, *, now: datetime, lost: str) -> str | None:
    """Take a RUNNING run from the attempt that lost its worker: "requeued", "failed" once it was started
    OMLWEB_RUN_MAX_ATTEMPTS times, or "cancelled" if a cancel was asked; None if another change won."""
    taken = Run.objects.filter(pk=run.pk, status=Run.Status.RUNNING, attempts=run.attempts, worker=run.worker)
    if run.cancel_requested_at:
        cancelled = taken.update(
            status=Run.Status.CANCELLED,
            finished_at=now,
            error_code=ErrorCode.CANCELLED,
            error_message=f"The job was cancelled; {lost}.",
        )
        return "cancelled" if cancelled else None
    if retries.takes_over(run):
        # Under a retry policy each attempt is a run of its own: this one ends, its retry is a new run.
        failed = taken.update(
            status=Run.Status.FAILED,
            finished_at=now,
            error_code=ErrorCode.WORKER_LOST,
            error_message=f"This attempt stopped: {lost} (killed, or out of memory).",
        )
        if failed:
            logger.warning("Run %s: %s; its retry policy decides (attempt %s)", run.pk, lost, run.retry_number + 1)
            retries.after_finish(run)
        return "failed" if failed else None
    if run.attempts >= settings.OMLWEB_RUN_MAX_ATTEMPTS:
        failed = taken.update(
            status=Run.Status.FAILED,
            finished_at=now,
            error_code=ErrorCode.CRASHED,
            error_message=(
                f"The job was started {run.attempts} times and each time {lost} "
                "(killed, or out of memory); it is not tried again."
            ),
        )
        if failed:
            logger.warning("Run %s failed: %s, attempt %s", run.pk, lost, run.attempts)
        return "failed" if failed else None
    if taken.update(status=Run.Status.QUEUED, worker="", heartbeat_at=None, enqueued_at=now):
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
                _publish_quietly(run)
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
    for level in service_levels():
        queued = Run.objects.filter(mode=Run.Mode.ASYNC, status=Run.Status.QUEUED, service=level)
        waiting_long = queued.filter(Q(enqueued_at__lt=before) | Q(enqueued_at__isnull=True))
        if not waiting_long.exists():
            continue
        in_queue = queue_length(level)
        missing = queued.count() - in_queue if in_queue is not None else waiting_long.count()
        if missing <= 0:
            continue
        for run in waiting_long.order_by(F("enqueued_at").asc(nulls_first=True))[:missing]:
            if Run.objects.filter(pk=run.pk, status=Run.Status.QUEUED).update(enqueued_at=now):
                _publish_quietly(run)
                republished.append(str(run.pk))
    return republished


def _publish_quietly(run: Run) -> None:
    try:
        job_enqueue(run=run)
    except Exception:
        # The row stays QUEUED; the next reaper pass tries again.
        logger.exception("Run %s: publishing to the broker failed", run.pk)


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
            Run.objects.filter(pk__in=ids).delete()
            transaction.on_commit(lambda images=images: _delete_files(images))
        deleted += len(ids)


# The operator's view


# How long the operator's view and the reaper wait for a broker that does not answer.
BROKER_CHECK_TIMEOUT_SECONDS = 0.5


def queue_length(service: str) -> int | None:
    """Messages waiting in a service level's queue, or None when the broker can't be asked."""
    return broker_queue_length(queue_name(service))


def broker_queue_length(queue: str) -> int | None:
    """Messages waiting in any queue, or None when the broker can't be asked."""
    try:
        return _declared_length(queue)
    except Exception as error:
        logger.warning("Could not read the length of queue %s: %r", queue, error)
        return None


def _declared_length(queue: str) -> int:
    from omlweb.celery import app

    with app.connection_for_write(connect_timeout=BROKER_CHECK_TIMEOUT_SECONDS) as conn:
        # One try, no pause: kombu's default retries would hold the status endpoint for seconds.
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=BROKER_CHECK_TIMEOUT_SECONDS)
        with conn.channel() as channel:
            declared = channel.queue_declare(queue=queue, durable=True, auto_delete=False)
            return int(declared.message_count)


def broker_problem() -> str | None:
    """None when the broker answers within BROKER_CHECK_TIMEOUT_SECONDS, else what went wrong."""
    try:
        _declared_length(queue_name(service_levels()[0]))
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


def workers_alive(*, timeout: float = 0.5) -> list[dict]:
    """The Celery workers that answer, with the queues they consume (a worker busy with a job is silent)."""
    from omlweb.celery import app

    try:
        replies = app.control.inspect(timeout=timeout).active_queues() or {}
    except Exception:
        logger.exception("Could not ask the workers")
        return []
    return [
        {"name": name, "queues": sorted(queue["name"] for queue in queues)} for name, queues in sorted(replies.items())
    ]


def service_status() -> dict:
    """The broker's health, the supervised processes of this host, workers alive, per level: queue length,
    queued and running jobs; and the oldest queued job. Answers within about a second, broker down or not."""
    from omlweb.celery import app

    now = timezone.now()
    problem = broker_problem()
    workers = workers_alive() if problem is None else []
    levels = {}
    for level in service_levels():
        jobs = Run.objects.filter(mode=Run.Mode.ASYNC, service=level)
        levels[level] = {
            "queue": queue_name(level),
            "messages": queue_length(level) if problem is None else None,
            "queued": jobs.filter(status=Run.Status.QUEUED).count(),
            "running": jobs.filter(status=Run.Status.RUNNING).count(),
            "workers": [w["name"] for w in workers if queue_name(level) in w["queues"]],
            "concurrencyPerHost": settings.OMLWEB_SERVICE_LEVELS[level]["concurrency"],
            "memoryMbPerRun": settings.OMLWEB_SERVICE_LEVELS[level]["memory_mb"],
        }
    oldest = Run.objects.filter(mode=Run.Mode.ASYNC, status=Run.Status.QUEUED).order_by("created_at").first()
    return {
        "time": oracle_date(now),
        "broker": _scheme(app.conf.broker_url),
        # False: async submissions are refused (503, code 1043) until it answers again.
        "brokerAvailable": problem is None,
        "brokerError": problem,
        "database": connection.vendor,
        "workers": workers,
        # What `manage.py serve` on this host supervises: each child's state, restarts and last exit.
        "supervisors": supervision.supervisors(),
        "serviceLevels": levels,
        "oldestQueuedJob": None
        if oldest is None
        else {
            "jobId": str(oldest.pk),
            "service": oldest.service,
            "createdDate": oracle_date(oldest.created_at),
            "waiting": hms(now - oldest.created_at),
            "attempts": oldest.attempts,
        },
        # Pieces at once of an apply run, per level: what the level promises and what is in force.
        "degreeOfParallelism": apply.degree_report(),
        # This process's runner: the isolation level in force and what it protects against.
        "isolation": runner.isolation_report(),
    }


def _scheme(url: str) -> str:
    return url.split("://", 1)[0] if "://" in url else url
