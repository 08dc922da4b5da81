"""bench/jobs_trace.py's worker app: omlweb's Celery app with each step of a job timestamped.

The worker runs production's command line (serve.worker_command) with `-A jobs_trace_app` in place of
`-A omlweb`; this module loads omlweb's app and wraps, in this process only, the functions a job goes
through. Each step appends "run_id step time.time()" to BENCH_TRACE_LOG.
"""

from __future__ import annotations

import functools
import os
import time

import django
from celery import signals

from omlweb.celery import app

django.setup()

from scripts_app import runner, tasks  # noqa: E402
from scripts_app.models import Run  # noqa: E402
from scripts_app.services import execution  # noqa: E402
from scripts_app.services.jobs import worker  # noqa: E402

__all__ = ["app"]

_LOG = os.environ["BENCH_TRACE_LOG"]
_current: list[str] = [""]


def log(run_id: str, step: str) -> None:
    line = f"{run_id} {step} {time.time():.6f}\n".encode()
    fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def wrap(owner, name: str, before: str, after: str) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def traced(*args, **kwargs):
        log(_current[0], before)
        try:
            return original(*args, **kwargs)
        finally:
            log(_current[0], after)

    setattr(owner, name, traced)


@signals.task_received.connect
def _received(request=None, **kwargs) -> None:
    if request is not None and request.name == "omlweb.execute_job":
        log(request.args[0], "worker_received")


@signals.task_prerun.connect(weak=False)
def _prerun(task=None, args=None, **kwargs) -> None:
    if task.name == "omlweb.execute_job":
        _current[0] = args[0]
        log(args[0], "task_start")


@signals.task_postrun.connect(weak=False)
def _postrun(task=None, args=None, **kwargs) -> None:
    if task.name == "omlweb.execute_job":
        log(args[0], "task_end")


wrap(worker, "job_claim", "claim_start", "claim_end")
wrap(runner, "run", "runner_start", "runner_end")
wrap(execution, "_record", "record_start", "record_end")
wrap(worker.live, "maybe_live", "live_start", "live_end")
wrap(worker.RunWatch, "start", "watch_start", "watch_started")
wrap(worker.RunWatch, "stop", "watch_stop", "watch_stopped")
wrap(worker.retries, "after_finish", "retries_start", "retries_end")
wrap(Run, "finish", "finish_start", "finish_end")
# The task was imported by name before these wraps: its module's reference is the one it calls.
wrap(tasks, "job_execute", "execute_start", "execute_end")
