"""Each worker and web process says it is alive: a WorkerHeartbeat row, rewritten from a thread.

The supervisor's files (services/supervision.py) describe one host; these rows describe every host, so
the worker health page and the metrics see all processes through the database. A process writes its row
every OMLWEB_WORKER_HEARTBEAT_SECONDS: its queues, its runner (isolation level, warm templates), which
environments its host has built; and it adds the runner templates it restarted to the metrics. A row not
rewritten for OMLWEB_WORKER_GONE_SECONDS is a process that is gone: killed (SIGKILL, the OOM killer), hung
hard, or its host is down. A process that stops cleanly removes its row.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from scripts_app.models import Environment, WorkerHeartbeat

logger = logging.getLogger(__name__)

# Rows of processes gone this long are deleted (by any process's heartbeat).
FORGET_AFTER = timedelta(days=1)

_thread: Beater | None = None


def host() -> str:
    return socket.gethostname()


def start(*, kind: str, name: str = "", queues: list[str] | tuple[str, ...] = ()) -> None:
    """Start this process's heartbeat thread (once per process; a forked child starts its own)."""
    global _thread
    if _thread is not None and _thread.pid == os.getpid() and _thread.is_alive():
        return
    _thread = Beater(kind=kind, name=name or f"{kind}-{os.getpid()}@{host()}", queues=list(queues))
    _thread.start()


def stop() -> None:
    """A clean stop: end the thread and remove this process's row (it is stopped, not gone)."""
    global _thread
    if _thread is None or _thread.pid != os.getpid():
        return
    _thread.halt()
    _thread = None
    try:
        WorkerHeartbeat.objects.filter(host=host(), pid=os.getpid()).delete()
    except Exception:  # noqa: BLE001 - the database may be down at shutdown: the row just ages out
        logger.warning("Could not remove this process's heartbeat row", exc_info=True)


class Beater(threading.Thread):
    def __init__(self, *, kind: str, name: str, queues: list[str]) -> None:
        super().__init__(name="omlweb-heartbeat", daemon=True)
        self.kind, self.node, self.queues = kind, name, queues
        self.pid = os.getpid()
        self.started_at = timezone.now()
        self.stopped = threading.Event()
        self.reported_restarts: dict[str, int] = {}

    def halt(self) -> None:
        self.stopped.set()
        self.join(timeout=5)

    def run(self) -> None:
        try:
            while True:
                try:
                    beat(self)
                except Exception:  # noqa: BLE001 - a database outage must not end the heartbeats
                    logger.warning("Heartbeat failed; trying again", exc_info=True)
                    close_old_connections()
                if self.stopped.wait(settings.OMLWEB_WORKER_HEARTBEAT_SECONDS):
                    return
        finally:
            connection.close()


def beat(beater: Beater) -> None:
    from scripts_app.runner import templates
    from scripts_app.services import metrics

    now = timezone.now()
    registry = templates.registry
    with registry.lock:
        running = list(registry.templates.values())
    WorkerHeartbeat.objects.update_or_create(
        host=host(),
        pid=beater.pid,
        defaults={
            "kind": beater.kind,
            "name": beater.node,
            "queues": beater.queues,
            "started_at": beater.started_at,
            "beat_at": now,
            "isolation": registry.level or "",
            "templates": [_template(t) for t in running],
            "environments": environments_here(),
        },
    )
    # Template restarts since the last beat: this process's memory, added to the shared counters.
    current = dict(templates.restarts)
    delta = {reason: count - beater.reported_restarts.get(reason, 0) for reason, count in current.items()}
    if any(delta.values()):
        metrics.add_template_restarts(host(), delta)
        beater.reported_restarts = current
    WorkerHeartbeat.objects.filter(beat_at__lt=now - FORGET_AFTER).delete()


def _template(template) -> dict:
    return {
        "python": template.python,
        "level": template.level,
        "pid": template.process.pid if template.process else None,
        "alive": template.alive(),
        "runs": template.runs,
        "light": not template.preload,
        "network": template.network,
    }


def environments_here() -> dict[str, str]:
    """Each ready environment: "built" when this host has it, "missing" when a run would build it first."""
    from scripts_app.environments import builder
    from scripts_app.services import environments

    states = {}
    for environment in Environment.objects.select_related("lock").order_by("name"):
        if environment.status != Environment.Status.READY:
            states[environment.name] = environment.status.lower()
            continue
        try:
            found = builder.built(settings.OMLWEB_ENVS_DIR, environments.build_spec(environment))
        except Exception:  # noqa: BLE001 - one odd environment must not stop the heartbeat
            found = None
        states[environment.name] = "built" if found else "missing"
    return states


def processes(*, now=None) -> list[dict]:
    """Every process that sent a heartbeat (within FORGET_AFTER), newest host first, with its state."""
    from scripts_app.models import Run

    now = now or timezone.now()
    gone_after = timedelta(seconds=settings.OMLWEB_WORKER_GONE_SECONDS)
    rows = list(WorkerHeartbeat.objects.order_by("host", "kind", "name", "-started_at", "-beat_at"))
    running: dict[str, list[dict]] = {}
    for pk, worker, kind, script, service, started in (
        Run.objects.filter(status=Run.Status.RUNNING, mode=Run.Mode.ASYNC)
        .values_list("pk", "worker", "kind", "script_name", "service", "started_at")
        .order_by("started_at")
    ):
        running.setdefault(worker, []).append(
            {"id": str(pk), "kind": kind, "script": script, "service": service, "started_at": started}
        )
    found: dict[tuple[str, str], dict] = {}
    for row in rows:
        key = (row.host, row.name)
        if key in found:
            # An earlier process of the same worker (restarted since under the same node name): only
            # the newest one is shown, with how many it replaced.
            found[key]["replaced"] += 1
            continue
        alive = now - row.beat_at <= gone_after
        found[key] = {
            "row": row,
            "alive": alive,
            "silent_seconds": max(int((now - row.beat_at).total_seconds()), 0),
            "running": running.get(row.name, []) if alive else [],
            "replaced": 0,
        }
    return list(found.values())
