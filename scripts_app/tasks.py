"""Celery tasks: thin. They take a run id and call the service; the Run row is the truth.

Each worker process is one Celery `--pool solo` worker (see `serve.worker_command`): tasks run in the
worker's own process, so these signal handlers run there too and tell its supervisor what it does.
"""

from __future__ import annotations

import logging
import time

from celery import shared_task, signals
from django.db import InterfaceError, OperationalError, close_old_connections

from scripts_app.environments.tasks import build_environment
from scripts_app.services import heartbeats, notifications, supervision
from scripts_app.services.jobs.worker import job_execute

__all__ = ["build_environment", "deliver_notification", "execute_job", "probe"]

logger = logging.getLogger(__name__)


# While the database is down a job can be neither claimed nor recorded: the worker waits for it (it could
# run nothing else anyway) rather than drop the message and leave the run to the reaper's slower path.
DATABASE_RETRY_DELAYS = (1, 2, 4, 8, 15, 30)


@shared_task(name="omlweb.execute_job", bind=True, acks_late=True, ignore_result=True)
def execute_job(self, run_id: str) -> None:
    for delay in DATABASE_RETRY_DELAYS:
        try:
            job_execute(run_id=run_id, worker=self.request.hostname or "")
            return
        except (OperationalError, InterfaceError) as error:
            logger.warning("Run %s: the database is unavailable (%s); trying again in %s s", run_id, error, delay)
            close_old_connections()
            time.sleep(delay)
    job_execute(run_id=run_id, worker=self.request.hostname or "")


@shared_task(name="omlweb.deliver_notification", acks_late=True, ignore_result=True)
def deliver_notification(delivery_id: str) -> None:
    """Send one notification (e-mail or webhook) and record the answer; see services.notifications."""
    notifications.deliver(delivery_id=delivery_id)


@shared_task(name="omlweb.probe", bind=True, ignore_result=True)
def probe(self, token: str) -> None:
    """Sent by the supervisor to one worker's own queue: running it proves the worker takes messages."""
    supervision.mark_probed(self.request.hostname or "", token)


class _QuietProbes(logging.Filter):
    """Celery logs every task received and done: not the supervisor's probes, every few seconds each."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "omlweb.probe[" not in record.getMessage()


for _name in ("celery.worker.strategy", "celery.app.trace"):
    logging.getLogger(_name).addFilter(_QuietProbes())


@signals.worker_ready.connect
def _ready(sender=None, **kwargs) -> None:
    supervision.mark_ready(sender.hostname)
    # Seen by the worker health page and the metrics, from every host (services/heartbeats.py).
    queues = sorted(name for name in sender.app.amqp.queues.consume_from if not name.endswith(".probe"))
    heartbeats.start(kind="worker", name=sender.hostname, queues=queues)


@signals.worker_shutdown.connect
def _shutdown(sender=None, **kwargs) -> None:
    heartbeats.stop()


@signals.task_prerun.connect
def _busy(task=None, **kwargs) -> None:
    request = task.request
    hard_limit = (request.timelimit or (None, None))[0]
    supervision.mark_busy(request.hostname or "", limit_seconds=hard_limit)


@signals.task_postrun.connect
def _idle(task=None, **kwargs) -> None:
    if not getattr(task.request, "is_eager", False):
        # The next job reuses this process's database connection while Django's rule allows, as a web
        # request would (settings.CELERY_DB_REUSE_MAX): closed once older than CONN_MAX_AGE or after an
        # error. Not for a task run eagerly, in its caller's process (and transaction).
        close_old_connections()
    supervision.mark_idle(task.request.hostname or "")
