"""Running scripts: record the request as a Run, hand it to the runner, keep what came back."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable

from django.conf import settings
from django.core.files.base import ContentFile
from django.db import transaction
from django.utils import timezone

from scripts_app import roles, runner
from scripts_app.errors import FAILURE_CODES, BadRequest, Busy, ErrorCode, OmlError, PermissionDenied
from scripts_app.models import Environment, Run, RunImage, Script, ScriptVersion, ServiceLevel
from scripts_app.runner.validation import storable_text
from scripts_app.services import audit, environments, shares

logger = logging.getLogger(__name__)

DEFAULT_ENVIRONMENT = environments.DEFAULT_ENVIRONMENT


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


def check_environment(env_name: str | None) -> Environment | None:
    """The READY environment a run names (None: the default one), or a 400 saying why not."""
    return environments.environment_for_run(env_name)


def run_create(
    *,
    script: Script,
    user,
    parameters: dict,
    graphics: bool = False,
    env_name: str | None = None,
    service: str = ServiceLevel.LOW,
    mode: str = Run.Mode.SYNC,
    client_address: str | None = None,
    timeout_seconds: int | None = None,
    comments: str = "",
    version: ScriptVersion | None = None,
    started: bool = False,
) -> Run:
    """Record a run of the script's current version (or the given one of its versions), QUEUED,
    with its environment and that one's lock. `started`: it runs now, in this process, so it is
    recorded RUNNING from the start (one write fewer on the sync path).

    The user's share is checked here, for the API and the pages alike: a sync run over the user's
    runs at once, or an async job over their queued jobs, is a 429; a user over their storage quota
    is refused (services.shares)."""
    if version is not None and version.script_id != script.pk:
        raise BadRequest(f"Version {version.number} is not a version of script {script.name!r}.")
    if roles.is_read_only(user):
        raise PermissionDenied("Auditors have read-only access: they do not run scripts.")
    # A run that names no environment runs in its script's own (the default one when it has none).
    environment = check_environment(env_name or script.env_name or None)
    limits = shares.limits_for(user.pk)
    shares.quota_check(user=user, limits=limits)
    with transaction.atomic():
        # Counted and recorded under the user's lock: two requests at once cannot both take the last share.
        shares.share_check(user=user, mode=mode, limits=limits)
        run = Run.objects.create(
            script_version=version or script.current_version,
            script_name=script.name,
            script_owner=script.owner.get_username(),
            user=user,
            client_address=client_address,
            parameters=parameters,
            graphics=graphics,
            env_name=environment.name if environment else environments.DEFAULT_ENVIRONMENT,
            environment=environment,
            env_lock=environment.lock if environment else environments.default_lock(),
            service=service,
            mode=mode,
            timeout_seconds=timeout_seconds,
            comments=comments,
            status=Run.Status.RUNNING if started else Run.Status.QUEUED,
            started_at=timezone.now() if started else None,
        )
        # AUDIT (issue 14): the run's submission, one event in the transaction that records the run.
        audit.record("run.submit", obj=run, actor=user, after=audit.run_state(run))
        return run


def function_kwargs(parameters: dict) -> dict:
    """The keyword arguments for the function: OML's oml_* control arguments are not passed on."""
    return {key: value for key, value in parameters.items() if not key.startswith("oml_")}


def run_execute(
    *,
    run: Run,
    is_cancelled: Callable[[], bool] | None = None,
    limits: runner.Limits | None = None,
    claimed: bool = False,
) -> Run:
    """Run a QUEUED run to its end in the runner and record the outcome.

    `limits` replace the settings' (an async job's service level and timeout); `claimed` says the caller
    already marked the run RUNNING (the async worker's claim, or a sync run created started).
    """
    if run.kind != Run.Kind.DO_EVAL:
        from scripts_app.services.apply import apply_execute

        return apply_execute(run=run, is_cancelled=is_cancelled, limits=limits, claimed=claimed)
    version = run.script_version
    if not claimed:
        run.status = Run.Status.RUNNING
        run.started_at = timezone.now()
        run.save(update_fields=["status", "started_at"])
    try:
        python = environments.python_for_run(run)
    except OmlError as error:
        _finish(run, Run.Status.FAILED, error_code=error.code, error_message=error.message)
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
        result = runner.run(job, is_cancelled=is_cancelled)
    except runner.RunnerBusy:
        _finish(run, Run.Status.FAILED, error_code=ErrorCode.BUSY, error_message=Busy.busy_message)
        raise Busy(Busy.busy_message) from None
    except runner.RunnerUnavailable as error:
        # A fault of this host's set-up (say, OMLWEB_RUNNER_ISOLATION names a level it lacks), not of the run.
        logger.error("The runner cannot start runs: %s", error)
        message = f"The service cannot run scripts on this host: {error}"
        _finish(run, Run.Status.FAILED, error_code=ErrorCode.RUNNER_UNAVAILABLE, error_message=message)
        raise OmlError(message, code=ErrorCode.RUNNER_UNAVAILABLE, status=500) from None
    except Exception:
        # A fault of the service: the run must not stay RUNNING until the reaper finds it.
        logger.exception("Run %s: the runner failed", run.pk)
        _finish(run, Run.Status.FAILED, error_code=ErrorCode.INTERNAL, error_message="The service failed to run it.")
        raise
    run_record_result(run=run, result=result)
    return run


def run_record_result(*, run: Run, result: runner.Result) -> None:
    size = shares.result_size(result)
    refusal = shares.quota_refusal(run=run, size=size)
    with transaction.atomic():
        if refusal is not None:
            # Nothing of it is kept: its figures, value and streams would all count against the quota.
            _finish(run, Run.Status.FAILED, error_code=ErrorCode.QUOTA_EXCEEDED, error_message=refusal)
            return
        run.stored_bytes = size
        for position, figure in enumerate(result.figures, start=1):
            image = RunImage(run=run, position=position, title=figure.title)
            image.image.save(f"{position}.png", ContentFile(figure.png), save=False)
            image.save()
        run.stdout = result.stdout
        run.stderr = result.stderr
        if result.succeeded:
            run.result = result.value
            _finish(run, Run.Status.SUCCEEDED)
        else:
            code = FAILURE_CODES.get(result.failure, ErrorCode.INTERNAL)
            _finish(
                run,
                Run.Status(result.outcome.value),
                error_code=code,
                error_message=result.error_message,
                traceback=result.traceback,
            )


class RunTakenAway(Exception):
    """An async run's outcome arrived after the run was deleted or handed to another attempt."""


def _finish(run: Run, status: str, *, error_code: int | None = None, error_message: str = "", traceback: str = ""):
    run.status = status
    run.finished_at = timezone.now()
    run.error_code = error_code
    # What a run printed or raised is the user's text: it may hold NUL or lone surrogates, which
    # PostgreSQL (and any driver) refuses. The runner cleans its own; this covers every other path.
    run.error_message = storable_text(error_message)
    run.traceback = storable_text(traceback)
    run.stdout = storable_text(run.stdout)
    run.stderr = storable_text(run.stderr)
    with transaction.atomic():
        if run.attempts and not _still_held(run):
            # Raised inside the caller's transaction, so the figures it saved are rolled back too.
            raise RunTakenAway(f"Run {run.pk} was deleted or taken from attempt {run.attempts} while it ran")
        # force_update: never re-insert a run deleted meanwhile.
        run.save(force_update=True)


def _still_held(run: Run) -> bool:
    """Whether the worker attempt that claimed this async run still holds it (locks the row until commit)."""
    held = Run.objects.select_for_update().filter(
        pk=run.pk, status=Run.Status.RUNNING, worker=run.worker, attempts=run.attempts
    )
    return held.exists()


def run_sync(**kwargs) -> Run:
    """Record a run and run it now, in this process."""
    return run_execute(run=run_create(**kwargs, started=True), claimed=True)


def oml_result(run: Run) -> dict:
    """The body OML answers for a finished run: {"result": ...}, or raises the run's error."""
    if run.status != Run.Status.SUCCEEDED:
        raise run_error(run)
    if not run.graphics:
        return {"result": run.result}
    if run.kind != Run.Kind.DO_EVAL:
        from scripts_app.services.apply import graphics_result

        return {"result": graphics_result(run)}
    data = json.dumps(run.result)
    images = list(run.images.all())
    if not images:
        return {"result": [{"IMAGE": None, "DATA": data, "TITLE": None, "ID": 1}]}
    return {
        "result": [
            {"IMAGE": _base64_file(image), "DATA": data, "TITLE": image.title, "ID": image.position} for image in images
        ]
    }


def _base64_file(image: RunImage) -> str:
    with image.image.open("rb") as file:
        return base64.b64encode(file.read()).decode("ascii")


def run_error(run: Run) -> OmlError:
    # A script's traceback is what its author needs; Oracle puts it in errorMessage too.
    message = run.traceback or run.error_message or f"The run ended {run.status}."
    if run.traceback and run.error_message and run.error_message not in run.traceback:
        message = f"{run.error_message}\n{run.traceback}"
    return OmlError(message, code=ErrorCode(run.error_code or ErrorCode.INTERNAL), status=400)
