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


def test_the_claims_read_builds_the_run_as_the_orm_does(script, django_assert_num_queries):
    """worker._read_queued (its query compiled once per process): every field as the ORM's read gives it,
    the script version with it, and nothing for a run that is not queued or does not exist."""
    run = queued(script, service="HIGH")
    expected = Run.objects.select_related("script_version").get(pk=run.pk)
    for _ in range(2):
        with django_assert_num_queries(1):
            read = worker._read_queued(str(run.pk))
            assert read.script_version.source == expected.script_version.source
        for field in Run._meta.concrete_fields:
            assert getattr(read, field.attname) == getattr(expected, field.attname), field.name
        assert read._state.db == expected._state.db
        assert not read._state.adding
    Run.objects.filter(pk=run.pk).update(cancel_requested_at=timezone.now())
    assert worker._read_queued(str(run.pk)) is None
    assert worker._read_queued(str(queued(script).pk)) is not None
    assert worker._read_queued("00000000-0000-0000-0000-000000000001") is None


postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the claim's one round trip is PostgreSQL's (DATABASE_URL)"
)


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_the_claim_in_one_round_trip_is_conditional_on_the_attempt_read(script, monkeypatch):
    """PostgreSQL's one-string claim: a run requeued between the read and the claim is not claimed, and a
    user at their share is deferred, as on the general path; the claim is one statement to the server."""
    run = queued(script)
    real = worker._read_queued

    def read_then_moved_on(run_id):
        read = real(run_id)
        Run.objects.filter(pk=read.pk).update(attempts=read.attempts + 1)
        return read

    monkeypatch.setattr(worker, "_read_queued", read_then_moved_on)
    assert worker.job_claim(run_id=str(run.pk), worker="w@test") is None
    assert Run.objects.get(pk=run.pk).status == Run.Status.QUEUED
    monkeypatch.setattr(worker, "_read_queued", real)
    assert worker.job_claim(run_id=str(run.pk), worker="w@test").attempts == 2
    with pytest.raises(worker.JobDeferred):
        worker.job_claim(run_id=str(queued(script).pk), worker="w2@test")


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_a_failed_claim_in_one_round_trip_leaves_no_transaction_and_no_lock(script, monkeypatch):
    """A statement of the string that fails aborts the transaction it opened: rolled back, the user's lock
    released, the connection usable, the run still queued."""
    from scripts_app.models import StorageUsage

    run = queued(script)
    real = worker._claim_params
    monkeypatch.setattr(worker, "_claim_params", lambda *a, **k: [*real(*a, **k)[:-1], "not a number"])
    with pytest.raises(Exception, match="not a number"):
        worker.job_claim(run_id=str(run.pk), worker="w@test")
    assert not connection.in_atomic_block
    assert connection.connection.info.transaction_status == 0  # idle: no transaction left open
    locked = {}

    def lock_elsewhere():
        try:
            with connections["default"].cursor() as cursor:
                cursor.execute("BEGIN")
                cursor.execute(
                    f"SELECT 1 FROM {StorageUsage._meta.db_table} WHERE user_id = %s FOR UPDATE NOWAIT",
                    [script.owner_id],
                )
                locked["row"] = cursor.fetchone()
                cursor.execute("ROLLBACK")
        finally:
            connections.close_all()

    thread = threading.Thread(target=lock_elsewhere)
    thread.start()
    thread.join()
    assert locked["row"] == (1,)
    monkeypatch.setattr(worker, "_claim_params", real)
    assert Run.objects.get(pk=run.pk).status == Run.Status.QUEUED
    assert worker.job_claim(run_id=str(run.pk), worker="w@test") is not None


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_a_user_without_the_locks_row_is_claimed_on_the_general_path(script):
    """Without the user's StorageUsage row the one-string claim locks nothing, so it claims nothing: the
    general path makes the row, locks it and claims."""
    from scripts_app.models import StorageUsage

    run = queued(script)
    StorageUsage.objects.filter(user_id=script.owner_id).delete()
    assert worker._claim_in_one_round_trip(run, worker="w@test", now=timezone.now(), max_running_jobs=1) is None
    assert Run.objects.get(pk=run.pk).status == Run.Status.QUEUED
    assert worker.job_claim(run_id=str(run.pk), worker="w@test") is not None
    assert StorageUsage.objects.filter(user_id=script.owner_id).exists()
