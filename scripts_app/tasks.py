"""Celery tasks: thin. They take a run id and call the service; the Run row is the truth."""

from __future__ import annotations

import logging

from billiard.einfo import ExceptionWithTraceback
from billiard.exceptions import WorkerLostError
from celery import shared_task
from celery.worker.request import Request
from django.db import close_old_connections

from scripts_app.environments.tasks import build_environment
from scripts_app.services import jobs

__all__ = ["build_environment", "execute_job"]

logger = logging.getLogger(__name__)


class JobRequest(Request):
    """In the worker's main process: when the pool process running a job dies, hand the run back
    before Celery requeues the message, so the redelivery can claim it at once."""

    def on_failure(self, exc_info, send_failed_event=True, return_ok=False):
        error = exc_info.exception
        # The pool hands the error over wrapped, as Celery's own on_failure unwraps it.
        error = error.exc if isinstance(error, ExceptionWithTraceback) else error
        if isinstance(error, WorkerLostError) and self.args:
            close_old_connections()
            try:
                jobs.job_worker_lost(run_id=self.args[0], worker=self.hostname)
            except Exception:
                # Celery still requeues the message; the reaper takes the run back later.
                logger.exception("Could not hand back run %s after its worker process died", self.args[0])
            finally:
                close_old_connections()
        return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)


@shared_task(
    name="omlweb.execute_job",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    Request=JobRequest,
)
def execute_job(self, run_id: str) -> None:
    jobs.job_execute(run_id=run_id, worker=self.request.hostname or "")
