"""Celery tasks: thin. They take a run id and call the service; the Run row is the truth."""

from __future__ import annotations

from celery import shared_task

from scripts_app.environments.tasks import build_environment
from scripts_app.services import jobs

__all__ = ["build_environment", "execute_job"]


@shared_task(name="omlweb.execute_job", bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def execute_job(self, run_id: str) -> None:
    jobs.job_execute(run_id=run_id, worker=self.request.hostname or "")
