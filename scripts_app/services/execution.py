"""Running a recorded run to its end: do-eval or apply, in this process (a sync run, or a job's worker)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from django.utils import timezone

from scripts_app import runner
from scripts_app.models import Run
from scripts_app.services import apply, runs

if TYPE_CHECKING:
    from scripts_app.services.live import LiveRun


def execute_run(
    run: Run,
    *,
    is_cancelled: Callable[[], bool] | None = None,
    limits: runner.Limits | None = None,
    live: LiveRun | None = None,
) -> Run:
    """Run a recorded run to its end, do-eval or apply, and record the outcome.

    A QUEUED run is marked RUNNING first; a sync run recorded RUNNING, or a job its worker claimed, is
    not. `limits` replace the settings' (an async job's service level and timeout); `live` writes what
    it prints as it prints it (services.live). Recording the
    outcome of a run taken from this attempt raises RunTakenAway."""
    if run.status == Run.Status.QUEUED:
        run.started_at = timezone.now()
        Run.objects.filter(pk=run.pk).start(now=run.started_at)
        run.status = Run.Status.RUNNING
    if run.kind == Run.Kind.DO_EVAL:
        return runs.run_execute(run=run, is_cancelled=is_cancelled, limits=limits, live=live)
    return apply.apply_execute(run=run, is_cancelled=is_cancelled, limits=limits, live=live)
