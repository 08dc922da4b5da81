"""The floor under bench/jobs.py's scaling figures: a bare Celery task, no database, no run pipeline.

Its worker runs production's worker command line (serve.worker_command: solo, acks late, prefetch 1,
the same broker), with this app in place of omlweb's. `floor.nap` sleeps; `floor.runner_nap` runs the
same 100 ms script through the runner (a child forked from the warm template, isolated as configured),
so the two floors split what Celery and the broker cost from what the runner's child costs. Each task
appends "pid start end" (time.time()) to BENCH_FLOOR_LOG; the bench reads the file.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from celery import Celery

ROOT = Path(__file__).resolve().parent.parent

app = Celery("floor", broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/14"))
# omlweb's settings for the same things (omlweb/settings.py, CELERY_*).
app.conf.update(
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    broker_heartbeat=0,
    task_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
)


def _log(started: float) -> None:
    line = f"{os.getpid()} {started:.6f} {time.time():.6f}\n".encode()
    fd = os.open(os.environ["BENCH_FLOOR_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@app.task(name="floor.nap")
def nap(seconds: float) -> None:
    started = time.time()
    time.sleep(seconds)
    _log(started)


_job = None


@app.task(name="floor.runner_nap")
def runner_nap(seconds: float) -> None:
    global _job
    started = time.time()
    if _job is None:
        sys.path.insert(0, str(ROOT))
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "omlweb.settings")
        import django

        django.setup()
        from scripts_app import runner
        from scripts_app.services import runs

        source = "import time\ndef nap(seconds=0.1):\n    time.sleep(seconds)\n    return seconds\n"
        limits = runs.limits_from_settings()
        _job = runner.Job(source=source, function="nap", kwargs={"seconds": seconds}, limits=limits)
    from scripts_app import runner

    result = runner.run(_job)
    if not result.succeeded:
        raise RuntimeError(result.error_message)
    _log(started)
