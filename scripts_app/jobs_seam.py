"""The seam between the pages and the asynchronous job services (`scripts_app/services/jobs.py`).

Those services come from another branch. Until they are installed, "run as a job" and Cancel are not
offered and these functions say so; once they are, the pages call them through here and nowhere else.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from scripts_app.errors import BadRequest
from scripts_app.models import Run


def _jobs() -> ModuleType | None:
    try:
        return importlib.import_module("scripts_app.services.jobs")
    except ModuleNotFoundError:
        return None


def available() -> bool:
    return _jobs() is not None


def submit(**options) -> Run:
    """Record a QUEUED run and hand it to a worker; takes the keyword arguments of `run_create`."""
    jobs = _jobs()
    if jobs is None:
        raise BadRequest("Asynchronous jobs are not available on this server.")
    return jobs.job_submit(**options)


def cancel(*, run: Run, by) -> None:
    jobs = _jobs()
    if jobs is None:
        raise BadRequest("Asynchronous jobs are not available on this server.")
    jobs.job_cancel(run=run)
