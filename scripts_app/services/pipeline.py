"""The one way a run starts: a `RunRequest`, recorded as a Run, then run now or published as a job.

The API's serializers and the pages' run form both build a `RunRequest` and call `start_run`; nothing
else creates runs. A run then lives through the transitions of `RunQuerySet` (models.py): claimed,
taken back, finished, cancelled, each one conditional UPDATE.
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from scripts_app import roles
from scripts_app.errors import BadRequest, PermissionDenied, QuotaExceeded, TooManyRuns
from scripts_app.models import Run, Schedule, Script, ScriptVersion, ServiceLevel
from scripts_app.services import apply, audit, environments, live, plain_sql, shares
from scripts_app.services.execution import execute_run
from scripts_app.services.jobs.submission import job_publish_submitted


@dataclasses.dataclass(frozen=True)
class ApplyInput:
    """What an apply run is fed and how it is cut into pieces (OML's table/row/group/index-apply)."""

    input_query: str = ""
    rows: int | None = None
    group_by: str | None = None
    order_by: str | None = None
    times: int | None = None
    parallel_flag: bool = False
    parallel: int | None = None


@dataclasses.dataclass(frozen=True)
class RunRequest:
    """Everything a caller asks of one run: what to run, with what, where, and whether to wait for it."""

    script: Script
    user: Any
    parameters: dict = dataclasses.field(default_factory=dict)
    # do-eval, or one of the apply kinds fed with `apply_input`.
    kind: str = Run.Kind.DO_EVAL
    apply_input: ApplyInput = ApplyInput()
    # None: the script's current version.
    version: ScriptVersion | None = None
    graphics: bool = False
    # None: the script's own environment, else the default one.
    env_name: str | None = None
    service: str = ServiceLevel.LOW
    # True: an async job, published to the service level's queue; False: run now, in this process.
    asynchronous: bool = False
    # A job's time limit (None: OMLWEB_ASYNC_TIMEOUT_SECONDS); a sync run has the settings' wall clock.
    timeout_seconds: int | None = None
    comments: str = ""
    client_address: str | None = None
    # A sync run the page watches live (services.live) under the id the page chose; None: not watched.
    live_id: uuid.UUID | None = None
    # A job a schedule started (services.schedules), and the occurrence it runs for: two schedulers
    # recording the same occurrence collide on a unique constraint, so it runs once.
    schedule: Schedule | None = None
    scheduled_for: datetime.datetime | None = None


def start_run(request: RunRequest) -> Run:
    """Start what the request asks: run it now and return it finished, or submit it as a job and
    return it QUEUED (published once committed). Refusals are OmlErrors, raised before anything is kept;
    a sync run that could not be run is recorded FAILED and its error raised (Busy, RunnerUnavailable)."""
    if request.asynchronous:
        # Recorded in _record_checked's own transaction (not nested in one here: a savepoint's two
        # statements more per submission), then published once committed.
        run = record_run(request)
        job_publish_submitted(run)
        return run
    run = record_run(request, started=True)
    if request.live_id is None:
        return execute_run(run)
    with live.LiveRun(run=run) as writer:
        return execute_run(run, live=writer)


def record_run(request: RunRequest, *, started: bool = False) -> Run:
    """Check the request and record it as a Run: QUEUED, or RUNNING from the start when `started`
    (a sync run, about to run in this process: one write fewer).

    The user's share is checked here: a sync run over the user's runs at once, or an async job over
    their queued jobs, is a 429; a user over their storage quota is refused (services.shares)."""
    script, user = request.script, request.user
    if request.version is not None and request.version.script_id != script.pk:
        raise BadRequest(f"Version {request.version.number} is not a version of script {script.name!r}.")
    version = request.version or script.current_version
    if version is None:
        raise BadRequest(f"Script {script.name!r} has no version to run.")
    # The user's limits, and their groups for the role check just below, in one statement.
    limits = shares.limits_of(user)
    if roles.is_read_only(user):
        raise PermissionDenied("Auditors have read-only access: they do not run scripts.")
    apply_fields = _apply_fields(request) if request.kind != Run.Kind.DO_EVAL else {}
    # A run that names no environment runs in its script's own (the default one when it has none).
    environment = environments.environment_for_run(request.env_name or script.env_name or None)
    mode = Run.Mode.ASYNC if request.asynchronous else Run.Mode.SYNC
    now = timezone.now()
    fields = {
        "script_version": version,
        "script_name": script.name,
        "script_owner": script.owner.get_username(),
        "client_address": request.client_address,
        "parameters": request.parameters,
        "graphics": request.graphics,
        "env_name": environment.name if environment else environments.DEFAULT_ENVIRONMENT,
        "environment": environment,
        "env_lock_id": environment.lock_id if environment else environments.default_lock_id(),
        "service": request.service,
        "kind": request.kind,
        "timeout_seconds": (request.timeout_seconds or settings.OMLWEB_ASYNC_TIMEOUT_SECONDS)
        if request.asynchronous
        else request.timeout_seconds,
        "comments": request.comments,
        "schedule": request.schedule,
        "scheduled_for": request.scheduled_for,
        "created_at": now,
        "enqueued_at": now if request.asynchronous else None,
        "status": Run.Status.RUNNING if started else Run.Status.QUEUED,
        "started_at": now if started else None,
        **apply_fields,
    }
    return _record_checked(user=user, mode=mode, fields=fields, live_id=request.live_id, limits=limits)


def _record_checked(
    *,
    user,
    mode: str,
    fields: dict,
    live_id: uuid.UUID | None = None,
    audited: dict | None = None,
    limits: shares.UserLimits | None = None,
):
    """Record a run after the user's share checks, and audit its submission in the same transaction:
    what every run goes through, a new one (`record_run`) or a retry (`record_retry`).

    Over the user's runs at once (a sync run) or their queued jobs (a job): TooManyRuns (429); over their
    storage quota: QuotaExceeded. `audited`: more of the run's state for the audit event; `limits`: the
    user's, when the caller has read them already."""
    if limits is None:
        limits = shares.limits_for(user.pk)
    with transaction.atomic():
        # Checked and recorded under the user's lock: two requests at once cannot both take the last share.
        shares.share_check(user=user, mode=mode, limits=limits)
        # The id a watching page chose, unless it is taken (then the page simply sees no live output).
        taken = live_id is not None and Run.objects.filter(pk=live_id).exists()
        run = Run(id=live_id if live_id is not None and not taken else uuid.uuid4(), user=user, mode=mode, **fields)
        # Run.objects.create, as one plain INSERT (services.plain_sql): every run is recorded here.
        plain_sql.insert(run)
        # The submission is audited in the transaction that records the run (services.audit).
        audit.record("run.submit", obj=run, actor=user, after={**audit.run_state(run), **(audited or {})})
    # This request's limits, for the quota check when the run's outcome is recorded (shares.quota_refusal).
    run.share_limits = limits
    return run


# What a retry copies from the attempt it retries; everything else starts afresh.
RETRY_COPIED = (
    "script_version",
    "script_name",
    "script_owner",
    "client_address",
    "parameters",
    "graphics",
    "env_name",
    "environment",
    "env_lock",
    "service",
    "timeout_seconds",
    "comments",
    "kind",
    "input_query",
    "apply_options",
    "schedule",
    "scheduled_for",
)


def record_retry(attempt: Run, *, delay: float) -> Run | None:
    """Record the retry of a failed job's attempt (services.retries), as any new run is recorded: the
    user's queued-jobs share and storage quota are checked, and its submission is audited.

    Returns the retry QUEUED, to be published `delay` seconds from now. A retry the user's share or quota
    refuses (or an auditor's) is recorded too, FAILED at once with the refusal as its error, so the chain
    of attempts shows why it stops; the attempt keeps its own failure. None when the attempt already has
    its retry (one per attempt: a unique constraint)."""
    now = timezone.now()
    number = attempt.retry_number + 1
    fields = {name: getattr(attempt, name) for name in RETRY_COPIED}
    fields.update(retry_of=attempt, retry_number=number, created_at=now, status=Run.Status.QUEUED)
    audited = {"retry_of": str(attempt.pk), "retry_number": number}
    try:
        try:
            if roles.is_read_only(attempt.user):
                raise PermissionDenied("Auditors have read-only access: they do not run scripts.")
            # In the future: the reaper must not publish it again before its backoff is over.
            queued = {**fields, "enqueued_at": now + datetime.timedelta(seconds=delay)}
            return _record_checked(user=attempt.user, mode=Run.Mode.ASYNC, fields=queued, audited=audited)
        except (TooManyRuns, QuotaExceeded, PermissionDenied) as refusal:
            with transaction.atomic():
                run = Run.objects.create(user=attempt.user, mode=Run.Mode.ASYNC, **fields)
                message = f"Retry {number} was not started: {refusal.message}"
                Run.objects.filter(pk=run.pk).finish(
                    Run.Status.FAILED, now=now, error_code=refusal.code, error_message=message
                )
                run.refresh_from_db()
                audit.record("run.submit", obj=run, actor=attempt.user, after={**audit.run_state(run), **audited})
            return run
    except IntegrityError:
        return None  # already retried (the reaper and the worker both saw the attempt end)


def _apply_fields(request: RunRequest) -> dict:
    """An apply request's own fields of the Run, checked: a bad query or option is a BadRequest here."""
    given = request.apply_input
    options = apply.check_request(
        kind=request.kind,
        user=request.user,
        parameters=request.parameters,
        input_query=given.input_query,
        rows=given.rows,
        group_by=given.group_by,
        order_by=given.order_by,
        times=given.times,
        parallel_flag=given.parallel_flag,
        parallel=given.parallel,
    )
    return {
        "input_query": given.input_query if request.kind in apply.DATA_KINDS else "",
        "apply_options": options,
    }
