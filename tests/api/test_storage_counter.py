"""The storage counter the quota reads (StorageUsage, services.shares): one row per user, moved in the
transaction of every change of what they keep, so it must always equal the sum it replaces.

Each test changes what a user keeps in another way (runs that succeed, fail or are refused, jobs,
deletions, pruning, datasets, the admin, runs at once) and compares the counter with the truth.
"""

from __future__ import annotations

import importlib
import io
import threading
from datetime import timedelta

import pytest
from django.apps import apps
from django.core.management import call_command
from django.db import connection, connections
from django.db.models import Sum
from django.utils import timezone

from scripts_app.models import Dataset, Run, StorageUsage
from scripts_app.services import shares
from scripts_app.services.jobs import reaper, submission
from tests.api import test_shares
from tests.api.test_shares import BIG, do_eval, hold, job_of, submit
from tests.conftest import client_for
from tests.factories import make_script

# Fixtures of the quota's own tests.
published = test_shares.published
run_job = test_shares.run_job

DATASETS = "/oml/api/py-scripts/v1/datasets"
FAILS = "def fails():\n    print('x' * 3000)\n    raise ValueError('no')\n"


def truth(user) -> int:
    """What the user keeps, summed as the quota did before it had a counter."""
    runs = Run.objects.filter(user=user).aggregate(total=Sum("stored_bytes"))["total"] or 0
    datasets = Dataset.objects.filter(owner=user).aggregate(total=Sum("size_bytes"))["total"] or 0
    return runs + datasets


def counted(user) -> int:
    return shares.storage_used(user.pk)


def csv(rows: int, name: str = "data.csv") -> io.BytesIO:
    upload = io.BytesIO(b"a,b\n" + b"".join(b"%d,row %d\n" % (i, i) for i in range(rows)))
    upload.name = name
    return upload


def test_every_change_of_what_a_user_keeps_moves_the_counter(
    alice, bob, alice_api, bob_api, admin_user, client, published, run_job, settings
):
    settings.OMLWEB_USER_QUOTA_MB = 1
    make_script(alice, "big", BIG)
    make_script(alice, "fails", FAILS)
    make_script(bob, "big", BIG)

    assert do_eval(alice_api, "big", {"parameters": '{"n": 5000}'}).status_code == 200
    assert counted(alice) == truth(alice) == 5002
    # A failed run keeps what it printed and its traceback.
    assert do_eval(alice_api, "fails").status_code == 400
    assert counted(alice) == truth(alice) > 5002 + 3000
    # Refused by the quota: keeps nothing, counts nothing.
    before = counted(alice)
    assert do_eval(alice_api, "big", {"parameters": '{"n": 2000000}'}).json()["errorCode"] == 1046
    assert counted(alice) == truth(alice) == before
    # A job, run by a worker, then deleted.
    job = job_of(submit(alice_api, "big", parameters='{"n": 7000}'))
    assert run_job(job).status == Run.Status.SUCCEEDED
    assert counted(alice) == truth(alice) == before + 7002
    assert alice_api.delete(f"/oml/api/py-scripts/v1/jobs/{job}").status_code == 200
    assert counted(alice) == truth(alice) == before
    # Datasets: created, replaced by a larger one, deleted.
    assert alice_api.post(DATASETS, {"name": "D", "file": csv(100)}, format="multipart").status_code == 201
    assert counted(alice) == truth(alice) > before
    small = counted(alice)
    replaced = alice_api.post(DATASETS, {"name": "d", "file": csv(5000), "overwrite": "true"}, format="multipart")
    assert replaced.status_code == 200, replaced.content
    assert counted(alice) == truth(alice) > small
    assert alice_api.delete(f"{DATASETS}/D").status_code == 200
    assert counted(alice) == truth(alice) == before
    # Deleted in Django's admin.
    client.force_login(admin_user)
    failed = Run.objects.get(user=alice, script_name="fails")
    assert client.post(f"/admin/scripts_app/run/{failed.pk}/delete/", {"post": "yes"}).status_code == 302
    assert counted(alice) == truth(alice) == 5002
    assert alice_api.post(DATASETS, {"name": "E", "file": csv(100)}, format="multipart").status_code == 201
    dataset = Dataset.objects.get(name="E")
    assert client.post(f"/admin/scripts_app/dataset/{dataset.pk}/delete/", {"post": "yes"}).status_code == 302
    assert counted(alice) == truth(alice) == 5002
    # Pruned by the retention.
    assert do_eval(bob_api, "big").status_code == 200
    settings.OMLWEB_RUN_RETENTION_DAYS = 1
    Run.objects.filter(user=alice).update(finished_at=timezone.now() - timedelta(days=2))
    assert reaper.prune_runs() == 2
    assert counted(alice) == truth(alice) == 0
    # Bob's own runs were his all along.
    assert counted(bob) == truth(bob) == 12


def test_recount_storage_corrects_drift(alice, bob, alice_api):
    """Counters wrong in every way (too high, too low, missing) are rebuilt from the runs and datasets."""
    make_script(alice, "big", BIG)
    assert do_eval(alice_api, "big", {"parameters": '{"n": 5000}'}).status_code == 200
    StorageUsage.objects.filter(user=alice).update(used_bytes=123)
    StorageUsage.objects.create(user=bob, used_bytes=999)
    out = io.StringIO()
    call_command("recount_storage", stdout=out)
    assert counted(alice) == truth(alice) == 5002
    assert counted(bob) == truth(bob) == 0
    assert "alice: counted 0.0 MB, keeps 0.0 MB" in out.getvalue()
    assert out.getvalue().endswith("Corrected 2 user(s).\n")
    StorageUsage.objects.filter(user=alice).delete()
    assert shares.recount_storage() == {alice.pk: (0, 5002)}
    assert shares.recount_storage() == {}


def test_the_migration_fills_the_counters_from_the_runs_and_datasets(alice, bob, alice_api):
    make_script(alice, "big", BIG)
    assert do_eval(alice_api, "big", {"parameters": '{"n": 5000}'}).status_code == 200
    assert alice_api.post(DATASETS, {"name": "D", "file": csv(100)}, format="multipart").status_code == 201
    expected = truth(alice)
    StorageUsage.objects.all().delete()
    migration = importlib.import_module("scripts_app.migrations.0016_storage_usage_and_active_runs_index")
    migration.fill_storage_usage(apps, None)
    assert counted(alice) == expected > 5002
    assert counted(bob) == 0


def test_the_shares_count_active_runs_from_their_partial_index(alice, bob):
    """The shares' counts read run_active_of_user, which holds no finished run: their cost does not
    grow with the user's history."""
    script = make_script(alice, "big", BIG)
    finished = hold(alice, script, 300)
    Run.objects.filter(pk__in=[run.pk for run in finished]).update(status=Run.Status.SUCCEEDED)
    hold(alice, script, 2)
    hold(alice, script, 1, mode=Run.Mode.ASYNC)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE scripts_app_run")
    counts = [
        shares.active_runs(alice.pk, mode=Run.Mode.SYNC),
        shares.active_runs(alice.pk, mode=Run.Mode.ASYNC),
        shares.active_runs(alice.pk, mode=Run.Mode.ASYNC, service="LOW", status=Run.Status.RUNNING),
    ]
    assert [runs.count() for runs in counts] == [2, 1, 1]
    for runs in counts:
        assert "run_active_of_user" in runs.explain()


@pytest.mark.django_db(transaction=True)
def test_runs_finishing_and_deleted_at_once_keep_the_counter_and_the_quota_exact(alice, settings):
    """Eight sync runs of 200 kB finish at once under a 1 MB quota while finished ones are deleted: the
    counter equals the truth, and never did the user keep more than the quota (the check and the count
    happen under the user's lock). On PostgreSQL these are true row locks across connections."""
    settings.OMLWEB_USER_QUOTA_MB = 1
    settings.OMLWEB_USER_MAX_CONCURRENT_RUNS = 16
    make_script(alice, "big", BIG)
    api = client_for(alice)
    for _ in range(3):
        assert do_eval(api, "big", {"parameters": '{"n": 100000}'}).status_code == 200
    old = list(Run.objects.filter(user=alice).values_list("pk", flat=True))
    codes: list[int] = []
    most = [0]
    # Their tokens issued beforehand, one at a time: this test is about runs and deletions.
    clients = [client_for(alice) for _ in range(8)]

    def run(api) -> None:
        try:
            response = do_eval(api, "big", {"parameters": '{"n": 200000}'})
            codes.append(response.status_code)
            most[0] = max(most[0], truth(alice))
        finally:
            connections.close_all()

    def delete(pk) -> None:
        try:
            submission.job_delete(run=Run.objects.get(pk=pk))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(api,)) for api in clients]
    threads += [threading.Thread(target=delete, args=(pk,)) for pk in old]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(codes) == 8
    assert 200 in codes
    assert counted(alice) == truth(alice) <= 1024**2
    assert most[0] <= 1024**2
