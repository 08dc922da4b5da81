"""What the broker, the queues and the workers are doing: the operator's view."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import connection
from django.utils import timezone

from omlweb.celery import app
from scripts_app import runner
from scripts_app.api.wire import hms, oracle_date
from scripts_app.models import Run, ServiceLevel
from scripts_app.services import apply, supervision

logger = logging.getLogger(__name__)


def queue_name(service: str) -> str:
    return f"{settings.OMLWEB_QUEUE_PREFIX}.{service.lower()}"


def service_levels() -> list[str]:
    return [level.value for level in ServiceLevel]


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
    with app.connection_for_write(connect_timeout=BROKER_CHECK_TIMEOUT_SECONDS) as conn:
        # One try, no pause: kombu's default retries would hold the status endpoint for seconds.
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=BROKER_CHECK_TIMEOUT_SECONDS)  # type: ignore[arg-type]  # kombu takes a float; the stub says int
        with conn.channel() as channel:
            # Every kombu channel has queue_declare; the StdChannel stub lacks it.
            declared = channel.queue_declare(queue=queue, durable=True, auto_delete=False)  # type: ignore[attr-defined]
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
        "broker": broker_scheme(app.conf.broker_url),
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


def broker_scheme(url: str) -> str:
    return url.split("://", 1)[0] if "://" in url else url
