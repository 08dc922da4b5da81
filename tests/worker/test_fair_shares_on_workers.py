"""Fair shares on real workers: one user's flood of jobs does not take another user's worker slots."""

from __future__ import annotations

import pytest

from scripts_app.models import Run
from scripts_app.services.pipeline import RunRequest, start_run
from tests.factories import UserFactory, make_script
from tests.worker.conftest import wait_for
from tests.worker.test_jobs_on_workers import SLEEPER

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def test_one_users_flood_leaves_a_slot_for_another_user(cluster):
    """Alice floods LOW (2 worker processes) with jobs; she runs one at a time (her share), so Bob's job
    takes the other slot and finishes while hers still wait; hers all finish too, each started once."""
    alice, bob = UserFactory(username="alice"), UserFactory(username="bob")
    alices, bobs = make_script(alice, "sleeper", SLEEPER), make_script(bob, "sleeper", SLEEPER)
    # Two LOW slots: two worker processes, as `manage.py serve` starts them (one solo worker per slot).
    cluster.start("low-1", ["LOW"])
    cluster.start("low-2", ["LOW"])
    flood = [
        start_run(RunRequest(script=alices, user=alice, parameters={"seconds": 1.5}, asynchronous=True))
        for _ in range(4)
    ]
    most_running = 0

    def alice_running() -> int:
        nonlocal most_running
        count = Run.objects.filter(user=alice, status=Run.Status.RUNNING).count()
        most_running = max(most_running, count)
        return count

    wait_for(alice_running, timeout=60, what="alice's first job to start", on=cluster)
    theirs = start_run(RunRequest(script=bobs, user=bob, parameters={"seconds": 0}, asynchronous=True))

    def bob_finished() -> bool:
        alice_running()
        return Run.objects.filter(pk=theirs.pk, status__in=Run.FINISHED).exists()

    wait_for(bob_finished, timeout=60, what="bob's job to finish", on=cluster)
    theirs.refresh_from_db()
    assert theirs.status == Run.Status.SUCCEEDED
    assert Run.objects.filter(user=alice, status=Run.Status.QUEUED).exists()

    def flood_finished() -> bool:
        alice_running()
        return Run.objects.filter(user=alice, status__in=Run.FINISHED).count() == len(flood)

    wait_for(flood_finished, timeout=120, what="alice's jobs to finish", on=cluster)
    assert most_running == 1
    for run in Run.objects.filter(user=alice):
        assert (run.status, run.attempts) == (Run.Status.SUCCEEDED, 1)
