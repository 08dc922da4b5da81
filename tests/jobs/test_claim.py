"""A worker's claim of a job (services/jobs/worker.job_claim): exactly once, and only under the user's
share of running jobs at the job's level. The claiming UPDATE is written by hand (worker._claim_sql):
these tests hold it to what the ORM's statement did, on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections
from django.utils import timezone

from scripts_app.models import Run
from scripts_app.services.jobs import worker
from scripts_app.services.pipeline import RunRequest, start_run
from tests.factories import UserFactory, make_script


@pytest.fixture
def published(monkeypatch):
    monkeypatch.setattr("scripts_app.services.jobs.submission.job_enqueue", lambda **kwargs: None)


@pytest.fixture
def script(db, published, settings):
    settings.OMLWEB_USER_MAX_RUNNING_JOBS = 1
    settings.OMLWEB_USER_MAX_QUEUED_JOBS = 100
    return make_script(UserFactory(), "f", "def f():\n    return 1\n")


def queued(script, *, user=None, service: str = "LOW", asynchronous: bool = True) -> Run:
    user = user or script.owner
    return start_run(RunRequest(script=script, user=user, parameters={}, asynchronous=asynchronous, service=service))


def test_a_claim_marks_the_run_running_for_this_worker_as_returned(script):
    run = queued(script)
    claimed = worker.job_claim(run_id=str(run.pk), worker="w1@test")
    row = Run.objects.get(pk=run.pk)
    assert (row.status, row.worker, row.attempts) == (Run.Status.RUNNING, "w1@test", 1)
    assert row.started_at == row.heartbeat_at == claimed.started_at
    assert (claimed.status, claimed.worker, claimed.attempts) == (row.status, row.worker, row.attempts)
    assert claimed.share_limits.max_running_jobs == 1


def test_a_second_delivery_claims_nothing(script):
    run = queued(script)
    assert worker.job_claim(run_id=str(run.pk), worker="w1@test") is not None
    assert worker.job_claim(run_id=str(run.pk), worker="w2@test") is None
    assert Run.objects.get(pk=run.pk).worker == "w1@test"


def test_a_cancelled_deleted_or_finished_job_is_not_claimed(script):
    cancelled, deleted, finished = queued(script), queued(script), queued(script)
    Run.objects.filter(pk=cancelled.pk).update(cancel_requested_at=timezone.now())
    Run.objects.filter(pk=deleted.pk).delete()
    Run.objects.filter(pk=finished.pk).update(status=Run.Status.SUCCEEDED)
    for run in (cancelled, deleted, finished):
        assert worker.job_claim(run_id=str(run.pk), worker="w@test") is None
    assert Run.objects.get(pk=cancelled.pk).status == Run.Status.QUEUED


def test_an_attempt_taken_back_between_the_read_and_the_claim_is_not_claimed(script, monkeypatch):
    """The claim is conditional on the attempt read: a run requeued meanwhile (attempts moved on) waits
    for its own message."""
    run = queued(script)
    real = worker._claim_under_share

    def moved_on(run, **kwargs):
        Run.objects.filter(pk=run.pk).update(attempts=run.attempts + 1)
        return real(run, **kwargs)

    monkeypatch.setattr(worker, "_claim_under_share", moved_on)
    assert worker.job_claim(run_id=str(run.pk), worker="w@test") is None
    assert Run.objects.get(pk=run.pk).status == Run.Status.QUEUED


def test_a_user_at_their_share_is_deferred_and_others_are_not(script):
    first, second = queued(script), queued(script)
    assert worker.job_claim(run_id=str(first.pk), worker="w1@test") is not None
    with pytest.raises(worker.JobDeferred):
        worker.job_claim(run_id=str(second.pk), worker="w2@test")
    assert Run.objects.get(pk=second.pk).status == Run.Status.QUEUED
    # Another user's job, and the same user's job at another level, are not held by that share.
    other = queued(script, user=UserFactory())
    assert worker.job_claim(run_id=str(other.pk), worker="w2@test") is not None
    high = queued(script, service="HIGH")
    assert worker.job_claim(run_id=str(high.pk), worker="w3@test") is not None
    # Once the running one ends, the deferred one is claimed.
    Run.objects.filter(pk=first.pk).update(status=Run.Status.SUCCEEDED)
    assert worker.job_claim(run_id=str(second.pk), worker="w2@test") is not None


def test_sync_runs_and_queued_jobs_do_not_count_against_the_share_of_running_jobs(script):
    Run.objects.filter(pk=queued(script, asynchronous=False).pk).update(status=Run.Status.RUNNING)
    queued(script)
    run = queued(script)
    assert worker.job_claim(run_id=str(run.pk), worker="w@test") is not None


def _claim_at_once(run: Run, name: str, barrier: threading.Barrier, outcomes: dict) -> None:
    barrier.wait()
    try:
        outcomes[name] = worker.job_claim(run_id=str(run.pk), worker=name)
    except worker.JobDeferred:
        outcomes[name] = "deferred"
    finally:
        connections.close_all()


@pytest.mark.django_db(transaction=True)
def test_two_workers_claiming_at_once_take_one_share_between_them(script):
    """Under the user's lock, the count and the claim are one statement: of two jobs claimed at the same
    moment by two workers, with a share of one, exactly one runs and the other is deferred."""
    for _ in range(5):
        runs = [queued(script), queued(script)]
        outcomes: dict[str, object] = {}
        barrier = threading.Barrier(2)
        threads = [
            threading.Thread(target=_claim_at_once, args=(run, f"w{n}@test", barrier, outcomes))
            for n, run in enumerate(runs)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcome == "deferred" for outcome in outcomes.values()) == [False, True], outcomes
        assert Run.objects.filter(pk__in=[r.pk for r in runs], status=Run.Status.RUNNING).count() == 1
        Run.objects.filter(pk__in=[r.pk for r in runs]).update(status=Run.Status.SUCCEEDED)
    assert connection.vendor in ("sqlite", "postgresql")


def test_the_claim_reads_the_users_most_generous_group_limits(script, settings):
    """shares.limits_for, read by every claim: the settings, or the most generous override of the user's
    groups (a group without limits, or a limit left empty, overrides nothing)."""
    from django.contrib.auth.models import Group

    from scripts_app.models import GroupLimits
    from scripts_app.services import shares

    settings.OMLWEB_USER_QUOTA_MB = 7
    user, other = script.owner, UserFactory()
    assert shares.limits_for(user.pk) == shares.UserLimits(
        max_sync_runs=settings.OMLWEB_USER_MAX_CONCURRENT_RUNS,
        max_running_jobs=1,
        max_queued_jobs=100,
        quota_bytes=7 * 1024**2,
    )
    small, large, bare = (Group.objects.create(name=name) for name in ("small", "large", "bare"))
    GroupLimits.objects.create(group=small, max_running_jobs=2, quota_mb=50)
    GroupLimits.objects.create(group=large, max_running_jobs=3, max_queued_jobs=None)
    user.groups.add(small, large, bare)
    other.groups.add(bare)
    limits = shares.limits_for(user.pk)
    assert (limits.max_running_jobs, limits.max_queued_jobs, limits.quota_bytes) == (3, 100, 50 * 1024**2)
    assert shares.limits_for(other.pk) == shares.limits_for(UserFactory().pk)
    first, second, third = queued(script), queued(script), queued(script)
    assert worker.job_claim(run_id=str(first.pk), worker="w1@test").share_limits == limits
    assert worker.job_claim(run_id=str(second.pk), worker="w2@test") is not None
    assert worker.job_claim(run_id=str(third.pk), worker="w3@test") is not None
    with pytest.raises(worker.JobDeferred):
        worker.job_claim(run_id=str(queued(script).pk), worker="w4@test")
