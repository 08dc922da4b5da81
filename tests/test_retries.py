"""Retries start through the run pipeline: the user's shares are checked and the submission is audited,
and a retry a share refuses is recorded as such, never lost without a trace."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from scripts_app.errors import ErrorCode
from scripts_app.models import AuditEvent, Run, ScriptRetryPolicy
from scripts_app.services import audit, retries, shares
from scripts_app.services.jobs import reaper, submission
from scripts_app.services.pipeline import RunRequest, start_run
from tests.factories import UserFactory, make_script


@pytest.fixture
def published(monkeypatch):
    sent: list[tuple[str, float | None]] = []
    monkeypatch.setattr(submission, "job_enqueue", lambda *, run, countdown=None: sent.append((str(run.pk), countdown)))
    return sent


@pytest.fixture
def script(db):
    script = make_script(UserFactory(), "flaky", "def flaky():\n    return 1\n")
    ScriptRetryPolicy.objects.create(script=script, max_retries=2, retry_backoff_seconds=5)
    return script


def submit(script) -> Run:
    return start_run(RunRequest(script=script, user=script.owner, parameters={"n": 1}, asynchronous=True))


def lost_worker(script, *, meanwhile=None) -> Run:
    """A job whose worker stopped answering: the reaper fails this attempt and its policy retries it.
    `meanwhile` is called before the reaper passes."""
    run = submit(script)
    stale = timezone.now() - timedelta(seconds=600)
    Run.objects.filter(pk=run.pk).update(
        status=Run.Status.RUNNING, worker="low@dead", attempts=1, started_at=stale, heartbeat_at=stale
    )
    if meanwhile is not None:
        meanwhile()
    report = reaper.reap_runs()
    assert report.failed == [str(run.pk)]
    return Run.objects.get(pk=run.pk)


def retry_of(run: Run) -> Run:
    return Run.objects.get(retry_of=run)


def submit_events(run: Run) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action="run.submit", object_id=str(run.pk)))


def test_a_retry_is_recorded_audited_and_published_like_any_run(script, published):
    attempt = lost_worker(script)
    retry = retry_of(attempt)
    assert (retry.status, retry.retry_number, retry.mode, retry.parameters) == (
        Run.Status.QUEUED,
        1,
        Run.Mode.ASYNC,
        {"n": 1},
    )
    assert (retry.user, retry.script_version, retry.env_lock) == (
        attempt.user,
        attempt.script_version,
        attempt.env_lock,
    )
    assert retry.enqueued_at > retry.created_at  # not republished by the reaper before its backoff is over
    assert (str(retry.pk), 5) in published
    [event] = submit_events(retry)
    assert event.actor_id == script.owner.pk
    assert (event.after["retry_of"], event.after["retry_number"], event.after["status"]) == (
        str(attempt.pk),
        1,
        Run.Status.QUEUED,
    )
    assert audit.verify().ok
    # Asked again (the worker and the reaper both saw the attempt end): still one retry, one event.
    assert retries.after_finish(attempt) is None
    assert Run.objects.filter(retry_of=attempt).count() == 1
    assert len(submit_events(retry)) == 1


def test_a_retry_past_the_users_queued_jobs_is_recorded_refused(script, published, settings):
    settings.OMLWEB_USER_MAX_QUEUED_JOBS = 3

    def fill_the_share() -> None:
        submit(script)
        submit(script)  # with the running attempt: 3, the most the user may have
        settings.OMLWEB_USER_MAX_QUEUED_JOBS = 2  # an admin lowers it while the attempt runs

    second = lost_worker(script, meanwhile=fill_the_share)
    assert Run.objects.filter(user=script.owner, status__in=Run.ACTIVE).count() == 2
    refused = retry_of(second)
    assert refused.status == Run.Status.FAILED
    assert refused.error_code == ErrorCode.TOO_MANY_RUNS
    assert refused.error_message.startswith("Retry 1 was not started: You already have 2 async jobs queued")
    assert (refused.retry_number, refused.finished_at is not None, refused.enqueued_at) == (1, True, None)
    assert str(refused.pk) not in [pk for pk, _ in published]
    # The attempt keeps its own failure; the chain of attempts shows where it stopped, and why.
    second.refresh_from_db()
    assert (second.status, second.error_code) == (Run.Status.FAILED, ErrorCode.WORKER_LOST)
    assert retries.attempts_of(second) == [second, refused]
    [event] = submit_events(refused)
    assert (event.after["status"], event.after["retry_of"]) == (Run.Status.FAILED, str(second.pk))
    assert audit.verify().ok
    # Nothing tries it again behind the user's back.
    assert retries.after_finish(refused) is None
    assert retries.after_finish(second) is None
    assert Run.objects.filter(retry_of=second).count() == 1


def test_a_retry_over_the_users_quota_is_recorded_refused(script, published, settings):
    settings.OMLWEB_USER_QUOTA_MB = 1
    attempt = lost_worker(script)
    first_retry = retry_of(attempt)
    # Meanwhile the user's runs filled their quota.
    Run.objects.filter(pk=first_retry.pk).update(stored_bytes=2 * 1024**2)
    shares.recount_storage()
    Run.objects.filter(pk=first_retry.pk).finish(
        Run.Status.FAILED, error_code=ErrorCode.WORKER_LOST, error_message="lost again"
    )
    first_retry.refresh_from_db()
    refused = retries.after_finish(first_retry)
    assert refused is not None
    assert (refused.status, refused.error_code, refused.retry_number) == (
        Run.Status.FAILED,
        ErrorCode.QUOTA_EXCEEDED,
        2,
    )
    assert refused.error_message.startswith("Retry 2 was not started: You keep 2.0 MB")
    assert Run.objects.get(pk=first_retry.pk).error_message == "lost again"
    assert retries.attempts_of(attempt) == [attempt, first_retry, refused]
    assert len(submit_events(refused)) == 1
    assert audit.verify().ok


def test_a_succeeded_run_is_not_retried_and_nothing_is_read(script, published, django_assert_num_queries):
    run = submit(script)
    run.status = Run.Status.SUCCEEDED
    with django_assert_num_queries(0):
        assert retries.after_finish(run) is None
