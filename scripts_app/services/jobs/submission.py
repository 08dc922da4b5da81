"""Jobs from the caller's side: publishing a submitted job; finding, cancelling and deleting one."""

from __future__ import annotations

import logging
import uuid

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from scripts_app import roles
from scripts_app.errors import (
    BROKER_UNAVAILABLE_MESSAGE,
    BadRequest,
    ErrorCode,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from scripts_app.models import Run, RunImage
from scripts_app.services import audit, shares
from scripts_app.services.jobs.broker import queue_name

logger = logging.getLogger(__name__)

# Celery's hard time limit is only a backstop behind the runner's own wall clock.
CELERY_TIME_LIMIT_MARGIN_SECONDS = 300


# Publishing


def job_publish_submitted(run: Run) -> None:
    """Publish a job just recorded QUEUED (pipeline.start_run), once its row is committed."""
    if connection.in_atomic_block:
        # Inside the caller's own transaction: publish once that commits; if the broker is down then, the
        # row stays QUEUED and the reaper publishes it later.
        transaction.on_commit(lambda: publish_quietly(run), robust=True)
        return
    # Published after the commit, so a worker always finds the row; and not in the background: a job the
    # broker did not take is refused (503) and its row removed, never accepted and left waiting.
    try:
        job_enqueue(run=run)
    except Exception as error:
        logger.warning("Run %s: the broker refused it (%r); the submission is refused", run.pk, error)
        job_delete(run=run)
        raise Unavailable(BROKER_UNAVAILABLE_MESSAGE, code=ErrorCode.BROKER_UNAVAILABLE) from error


def job_enqueue(*, run: Run, countdown: float | None = None) -> None:
    """Publish the run's id on its service level's queue (to be delivered `countdown` seconds later)."""
    from scripts_app.tasks import execute_job

    timeout = run.timeout_seconds or settings.OMLWEB_ASYNC_TIMEOUT_SECONDS
    execute_job.apply_async(
        args=(str(run.pk),),
        queue=queue_name(run.service),
        time_limit=timeout + CELERY_TIME_LIMIT_MARGIN_SECONDS,
        countdown=countdown,  # type: ignore[arg-type]  # None (deliver now) is Celery's own default
    )


def publish_quietly(run: Run) -> None:
    """Publish a QUEUED run's id; when the broker refuses, the row stays QUEUED for the reaper to publish."""
    try:
        job_enqueue(run=run)
    except Exception:
        # The row stays QUEUED; the next reaper pass tries again.
        logger.exception("Run %s: publishing to the broker failed", run.pk)


# Reading


def jobs_visible_to(user):
    """The async runs a user may see: the runs' one rule (roles.runs_visible_to), jobs only. Changing one
    takes more (job_for_change)."""
    return roles.runs_visible_to(user, Run.objects.filter(mode=Run.Mode.ASYNC))


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


def job_attempt(run: Run) -> int:
    """The attempt a job is on: the one running it, the next one while it waits, the last once finished.

    Above 1, a worker died during an earlier attempt and the job started again from the beginning.
    """
    return run.attempts + 1 if run.status == Run.Status.QUEUED else max(run.attempts, 1)


# Cancelling and deleting


@transaction.atomic
def job_cancel(*, run: Run) -> Run:
    """Stop a queued or running job; it ends CANCELLED. A finished job can't be cancelled (400).
    The cancellation is audited in the same transaction."""
    before = Run.objects.select_for_update().filter(pk=run.pk).values_list("status", flat=True).first()
    # Running: the worker holding it sees the flag within OMLWEB_CANCEL_POLL_SECONDS and kills the run.
    if not Run.objects.filter(pk=run.pk).cancel(now=timezone.now()):
        raise BadRequest("Job is not running.", code=ErrorCode.BAD_REQUEST)
    run.refresh_from_db()
    after: dict[str, object] = {"status": run.status}
    if run.status == Run.Status.RUNNING:
        after["cancel_requested"] = True
    audit.record("run.cancel", obj=run, before={"status": before}, after=after)
    return run


def job_delete(*, run: Run) -> None:
    """Delete a job and its images; a worker running it notices the row is gone and kills the run."""
    with transaction.atomic():
        images = list(RunImage.objects.filter(run=run))
        shares.delete_runs(Run.objects.filter(pk=run.pk))
        transaction.on_commit(lambda: delete_image_files(images))


def delete_image_files(images: list[RunImage]) -> None:
    for image in images:
        image.image.delete(save=False)
