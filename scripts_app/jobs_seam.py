"""The seam between the pages and the asynchronous job services (`scripts_app/services/jobs.py`).

Those services come from another branch. Until they are installed, "run as a job" and Cancel are not
offered and these functions say so; once they are, the pages call them through here and nowhere else.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from django.db import transaction

from scripts_app.errors import BadRequest
from scripts_app.models import Run, ScriptVersion


def _jobs() -> ModuleType | None:
    try:
        return importlib.import_module("scripts_app.services.jobs")
    except ModuleNotFoundError:
        return None


def available() -> bool:
    return _jobs() is not None


def submit(*, version: ScriptVersion | None = None, **options) -> Run:
    """Record a QUEUED job and hand it to a worker; takes the keyword arguments of `job_submit`.

    `job_submit` runs the current version. For an older one the run's version is switched inside the
    same transaction: the job is published only on commit, so no worker sees the run before that.
    """
    jobs = _jobs()
    if jobs is None:
        raise BadRequest("Asynchronous jobs are not available on this server.")
    with transaction.atomic():
        run = jobs.job_submit(**options)
        if version is not None and run.script_version_id != version.pk:
            run.script_version = version
            run.save(update_fields=["script_version"])
    return run


def cancel(*, run: Run) -> Run:
    jobs = _jobs()
    if jobs is None:
        raise BadRequest("Asynchronous jobs are not available on this server.")
    return jobs.job_cancel(run=run)
