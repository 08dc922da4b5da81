"""A do-eval run: hand the run to the runner, keep what came back (services.pipeline starts runs)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction

from scripts_app import runner
from scripts_app.errors import FAILURE_CODES, Busy, ErrorCode, OmlError
from scripts_app.models import Run, RunImage
from scripts_app.services import environments, shares

if TYPE_CHECKING:
    from scripts_app.services.live import LiveRun

logger = logging.getLogger(__name__)


def limits_from_settings(*, wall_seconds: float | None = None) -> runner.Limits:
    return runner.Limits(
        wall_seconds=wall_seconds or settings.OMLWEB_RUN_WALL_SECONDS,
        cpu_seconds=settings.OMLWEB_RUN_CPU_SECONDS,
        memory_bytes=settings.OMLWEB_RUN_MEMORY_MB * 1024**2,
        max_processes=settings.OMLWEB_RUN_MAX_PROCESSES,
        max_file_bytes=settings.OMLWEB_RUN_MAX_FILE_MB * 1024**2,
        max_stream_bytes=settings.OMLWEB_RUN_MAX_STREAM_KB * 1024,
        max_result_bytes=settings.OMLWEB_RUN_MAX_RESULT_MB * 1024**2,
        max_image_bytes=settings.OMLWEB_RUN_MAX_IMAGE_MB * 1024**2,
        max_output_items=settings.OMLWEB_OUTPUT_SZLIMIT,
        network=settings.OMLWEB_RUN_NETWORK,
    )


def function_kwargs(parameters: dict) -> dict:
    """The keyword arguments for the function: OML's oml_* control arguments are not passed on."""
    return {key: value for key, value in parameters.items() if not key.startswith("oml_")}


def run_execute(
    *,
    run: Run,
    is_cancelled: Callable[[], bool] | None = None,
    limits: runner.Limits | None = None,
    live: LiveRun | None = None,
) -> Run:
    """Run a RUNNING do-eval run to its end in the runner and record the outcome (execution.execute_run).

    `limits` replace the settings' (an async job's service level and timeout); `live` writes what the
    run prints as it prints it (services.live).
    """
    version = run.script_version
    try:
        python = environments.python_for_run(run)
    except OmlError as error:
        run.finish(Run.Status.FAILED, error_code=error.code, error_message=error.message)
        return run
    job = runner.Job(
        source=version.source,
        function=version.entry_function,
        kwargs=function_kwargs(run.parameters),
        graphics=run.graphics,
        limits=limits or limits_from_settings(wall_seconds=run.timeout_seconds),
        python=python,
    )
    try:
        result = runner.run(job, is_cancelled=is_cancelled, tap=live.tap() if live is not None else None)
    except runner.RunnerBusy:
        run.finish(Run.Status.FAILED, error_code=ErrorCode.BUSY, error_message=Busy.busy_message)
        raise Busy(Busy.busy_message) from None
    except runner.RunnerUnavailable as error:
        # A fault of this host's set-up (say, OMLWEB_RUNNER_ISOLATION names a level it lacks), not of the run.
        logger.error("The runner cannot start runs: %s", error)
        message = f"The service cannot run scripts on this host: {error}"
        run.finish(Run.Status.FAILED, error_code=ErrorCode.RUNNER_UNAVAILABLE, error_message=message)
        raise OmlError(message, code=ErrorCode.RUNNER_UNAVAILABLE, status=500) from None
    except Exception:
        # A fault of the service: the run must not stay RUNNING until the reaper finds it.
        logger.exception("Run %s: the runner failed", run.pk)
        run.finish(Run.Status.FAILED, error_code=ErrorCode.INTERNAL, error_message="The service failed to run it.")
        raise
    run_record_result(run=run, result=result)
    return run


def run_record_result(*, run: Run, result: runner.Result) -> None:
    size = shares.result_size(result)
    refusal = shares.quota_refusal(run=run, size=size)
    with transaction.atomic():
        if refusal is not None:
            # Nothing of it is kept: its figures, value and streams would all count against the quota.
            run.finish(Run.Status.FAILED, error_code=ErrorCode.QUOTA_EXCEEDED, error_message=refusal)
            return
        run.stored_bytes = size
        save_figures(run, result.figures)
        run.stdout = result.stdout
        run.stderr = result.stderr
        if result.succeeded:
            # The JSON text the run's process checked, kept as it is (and its value, for this process).
            run.set_result_json(result.value_json, result.value)
            run.finish(Run.Status.SUCCEEDED)
        else:
            code = FAILURE_CODES.get(result.failure, ErrorCode.INTERNAL)
            run.finish(
                Run.Status(result.outcome.value),
                error_code=code,
                error_message=result.error_message,
                traceback=result.traceback,
            )


def save_figures(run: Run, figures: list[runner.Figure], *, after: int = 0) -> list[int]:
    """Keep figures as the run's images, numbered on from `after` (OML's ID); returns their positions."""
    positions = []
    for position, figure in enumerate(figures, start=after + 1):
        image = RunImage(run=run, position=position, title=figure.title)
        image.image.save(f"{position}.png", ContentFile(figure.png), save=False)
        image.save()
        positions.append(position)
    return positions
