"""Retries: a failed async run is tried again as a new run linked to the one it retries.

A run's policy is its schedule's when the schedule has one (max_retries > 0), else its script's
(ScriptRetryPolicy). Infrastructure failures (a lost worker, the service failing to run it) are always
retried under a policy; failures of the user's code (an exception, a time or memory limit) only when the
policy says `retry_user_errors`. Attempt n + 1 waits `backoff * factor ** (n - 1)` seconds.

A run with no policy keeps the reaper's own behaviour: a run whose worker died is requeued in place up
to OMLWEB_RUN_MAX_ATTEMPTS times (jobs.submission.job_attempt). Under a policy the reaper hands it here instead
(`takes_over`), so every attempt is a row of its own, with its own worker, times and error.
"""

from __future__ import annotations

import logging

from scripts_app.errors import BadRequest, ErrorCode
from scripts_app.models import Run, Schedule, ScriptRetryPolicy
from scripts_app.services import pipeline
from scripts_app.services.jobs import submission

logger = logging.getLogger(__name__)

INFRASTRUCTURE_CODES = frozenset(
    {
        ErrorCode.WORKER_LOST,
        ErrorCode.INTERNAL,
        ErrorCode.BUSY,
        ErrorCode.RUNNER_UNAVAILABLE,
        ErrorCode.DATABASE_UNAVAILABLE,
        ErrorCode.BROKER_UNAVAILABLE,
        ErrorCode.ENVIRONMENT_NOT_READY,
    }
)
# Never retried: trying again cannot help, or the user asked for the end.
NEVER_RETRIED = frozenset({ErrorCode.CANCELLED, ErrorCode.QUOTA_EXCEEDED})
MAX_RETRIES = 10
MAX_BACKOFF_SECONDS = 24 * 3600


def check_policy(*, max_retries, backoff_seconds, backoff_factor) -> None:
    """400 (code 1061) for retry settings no policy may have."""
    if not 0 <= int(max_retries) <= MAX_RETRIES:
        raise BadRequest(f"maxRetries must be 0 to {MAX_RETRIES}.", code=ErrorCode.INVALID_SCHEDULE)
    if not 0 <= int(backoff_seconds) <= MAX_BACKOFF_SECONDS:
        raise BadRequest(f"retryBackoffSeconds must be 0 to {MAX_BACKOFF_SECONDS}.", code=ErrorCode.INVALID_SCHEDULE)
    if not 1.0 <= float(backoff_factor) <= 10.0:
        raise BadRequest("retryBackoffFactor must be 1 to 10.", code=ErrorCode.INVALID_SCHEDULE)


def policy_for(run: Run):
    """The schedule's or the script's policy of an async run, or None when it is not retried."""
    if run.mode != Run.Mode.ASYNC:
        return None
    if run.schedule_id:
        schedule = Schedule.objects.filter(pk=run.schedule_id).first()
        if schedule is not None and schedule.max_retries:
            return schedule
    script_id = run.script_version.script_id if run.script_version_id else None
    policy = ScriptRetryPolicy.objects.filter(script_id=script_id).first() if script_id else None
    return policy if policy is not None and policy.max_retries else None


def is_infrastructure(run: Run) -> bool:
    return run.error_code in INFRASTRUCTURE_CODES


def takes_over(run: Run) -> bool:
    """Whether a run whose worker was lost is retried as a new run (it has a policy) rather than requeued."""
    return policy_for(run) is not None


def backoff(policy, retry_number: int) -> float:
    """Seconds before retry `retry_number + 1` (the first retry waits the policy's backoff)."""
    return min(policy.retry_backoff_seconds * policy.retry_backoff_factor**retry_number, MAX_BACKOFF_SECONDS)


def attempts_of(run: Run) -> list[Run]:
    """Every attempt of the run's chain, first to last (attempt n is list index n - 1)."""
    first = run
    seen = {run.pk}
    while first.retry_of_id and first.retry_of_id not in seen:
        parent = Run.objects.filter(pk=first.retry_of_id).first()
        if parent is None:
            break
        seen.add(parent.pk)
        first = parent
    chain = [first]
    while True:
        following = Run.objects.filter(retry_of=chain[-1]).first()
        if following is None or following.pk in {r.pk for r in chain}:
            return chain
        chain.append(following)


def after_finish(run: Run) -> Run | None:
    """Called once an async run has ended: its retry when its policy asks for one, else None.

    Safe to call twice: an attempt is retried at most once (a unique constraint on `retry_of`).
    """
    if run.status in (Run.Status.SUCCEEDED, Run.Status.CANCELLED):
        # Recorded so by this process (a finished run never changes status): nothing to retry, nothing to read.
        return None
    current = Run.objects.select_related("script_version", "user").filter(pk=run.pk).first()
    if current is None or current.status not in (Run.Status.FAILED, Run.Status.TIMED_OUT):
        return None
    if current.error_code in NEVER_RETRIED:
        return None
    policy = policy_for(current)
    if policy is None or current.retry_number >= policy.max_retries:
        return None
    if not (is_infrastructure(current) or policy.retry_user_errors):
        return None
    delay = backoff(policy, current.retry_number)
    # Recorded by the run pipeline, as every run is: the user's share and quota, the audited submission.
    retry = pipeline.record_retry(current, delay=delay)
    if retry is None:
        return None
    if retry.status != Run.Status.QUEUED:
        logger.warning(
            "Run %s failed (code %s); retry %s of %s was refused: %s",
            current.pk,
            current.error_code,
            retry.retry_number,
            policy.max_retries,
            retry.error_message,
        )
        return retry
    logger.warning(
        "Run %s failed (code %s); retry %s of %s is run %s in %.0f s",
        current.pk,
        current.error_code,
        retry.retry_number,
        policy.max_retries,
        retry.pk,
        delay,
    )
    try:
        submission.job_enqueue(run=retry, countdown=delay or None)
    except Exception:
        # The row stays QUEUED; the reaper publishes it once its backoff is over.
        logger.exception("Run %s: publishing the retry failed", retry.pk)
    return retry
