"""Fair shares and storage quotas: one user cannot take every run slot, worker slot or the disk.

Each test tries to take more than a share, then checks that another user (or the same one, once
the share is free again) is served normally.
"""

from __future__ import annotations

import io
import os
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import Group
from django.db import connections
from django.utils import timezone

from scripts_app.models import Dataset, GroupLimits, Run, RunImage
from scripts_app.services.jobs import reaper, submission, worker
from tests.api.test_jobs import InlineWatch
from tests.conftest import client_for
from tests.factories import make_script

DO_EVAL = "/oml/api/py-scripts/v1/do-eval"
SLOW = "import time\n\ndef slow(seconds=1):\n    time.sleep(seconds)\n    return seconds\n"
ADD = "def add(a=1, b=1):\n    return a + b\n"
BIG = "def big(n=10):\n    return 'x' * n\n"
FIGURE = (
    "import matplotlib.pyplot as plt\n\n"
    "def dots():\n    plt.figure().add_subplot(111).scatter([1, 2, 3], [3, 1, 2])\n    return 1\n"
)


def hold(user, script, count: int, *, mode=Run.Mode.SYNC, service="LOW") -> list[Run]:
    """Runs of the user that are running now, as another web process or worker would have them."""
    return [
        Run.objects.create(
            script_version=script.current_version,
            script_name=script.name,
            script_owner=script.owner.username,
            user=user,
            mode=mode,
            service=service,
            status=Run.Status.RUNNING,
            started_at=timezone.now(),
            heartbeat_at=timezone.now(),
        )
        for _ in range(count)
    ]


def do_eval(api, name, body=None):
    return api.post(f"{DO_EVAL}/{name}", body or {}, format="json")


# Synchronous runs


@pytest.mark.django_db(transaction=True)
def test_a_user_over_their_share_of_sync_runs_gets_429_while_another_user_runs(alice, bob, settings):
    """Alice's two slow (20 s) sync runs hold her share (2): her third is a 429 at once, with Retry-After,
    while Bob's run is served; once hers finish, she runs again."""
    settings.OMLWEB_USER_MAX_CONCURRENT_RUNS = 2
    make_script(alice, "slow", SLOW)
    make_script(bob, "add", ADD)
    alice_api, bob_api = client_for(alice), client_for(bob)
    answers: list = []

    def slow_run() -> None:
        try:
            answers.append(do_eval(client_for(alice), "slow", {"parameters": '{"seconds": 20}'}))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=slow_run) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 60
        while Run.objects.filter(user=alice, status=Run.Status.RUNNING).count() < 2:
            assert time.monotonic() < deadline, "alice's two slow runs never started"
            time.sleep(0.05)

        third = do_eval(alice_api, "slow")
        assert third.status_code == 429
        assert third.json()["errorCode"] == 1045
        assert "share of runs at once (2)" in third.json()["errorMessage"]
        assert third["Retry-After"] == "5"
        assert Run.objects.filter(user=alice).count() == 2

        other = do_eval(bob_api, "add", {"parameters": '{"a": 2, "b": 3}'})
        assert other.status_code == 200
        assert other.json() == {"result": 5}
        bobs = Run.objects.get(user=bob)
        assert bobs.status == Run.Status.SUCCEEDED
        # Bob's run was served while Alice's were still running: it did not wait for her share.
        assert Run.objects.filter(user=alice, status=Run.Status.RUNNING).count() == 2
    finally:
        for thread in threads:
            thread.join(timeout=120)
    assert [answer.status_code for answer in answers] == [200, 200]
    assert do_eval(alice_api, "slow", {"parameters": '{"seconds": 0}'}).json() == {"result": 0}


def test_an_admin_raises_a_groups_share(alice, bob, alice_api, bob_api, admin_user, settings):
    """GroupLimits overrides the default for its members; a member of several groups gets the most
    generous one; others keep the default."""
    settings.OMLWEB_USER_MAX_CONCURRENT_RUNS = 1
    script = make_script(admin_user, "add", ADD, is_global=True)
    heavy = Group.objects.create(name="heavy")
    light = Group.objects.create(name="light")
    GroupLimits.objects.create(group=heavy, max_sync_runs=3)
    GroupLimits.objects.create(group=light, max_sync_runs=1)
    alice.groups.add(heavy, light)
    held = hold(alice, script, 2)
    assert do_eval(alice_api, "add").json() == {"result": 2}
    held += hold(alice, script, 1)
    assert do_eval(alice_api, "add").status_code == 429

    hold(bob, script, 1)
    refused = do_eval(bob_api, "add")
    assert refused.status_code == 429
    assert "(1)" in refused.json()["errorMessage"]
    Run.objects.filter(pk__in=[run.pk for run in held]).update(status=Run.Status.SUCCEEDED)
    assert do_eval(alice_api, "add").json() == {"result": 2}


def test_the_run_form_shows_the_share_message(alice, client, settings):
    """On the pages the same refusal is a message on the form (422), not an error page; no run is made."""
    settings.OMLWEB_USER_MAX_CONCURRENT_RUNS = 1
    script = make_script(alice, "add", ADD)
    hold(alice, script, 1)
    client.force_login(alice)
    data = {"params_mode": "fields", "env_name": "default", "service": "LOW", "execution": "sync"}
    response = client.post(f"/scripts/{script.pk}/run/", data)
    assert response.status_code == 422
    assert "share of runs at once (1)" in response.content.decode()
    assert Run.objects.count() == 1


# Async jobs


@pytest.fixture
def published(monkeypatch):
    """Messages published to the broker, as (run id, countdown)."""
    sent: list[tuple[str, float | None]] = []
    monkeypatch.setattr(submission, "job_enqueue", lambda *, run, countdown=None: sent.append((str(run.pk), countdown)))
    return sent


@pytest.fixture
def run_job(monkeypatch):
    monkeypatch.setattr(worker, "RunWatch", InlineWatch)

    def run(job_id) -> Run:
        worker.job_execute(run_id=str(job_id), worker="inline@test")
        return Run.objects.get(pk=job_id)

    return run


def submit(api, name, **body):
    return api.post(f"{DO_EVAL}/{name}", {"asyncFlag": True, **body}, format="json")


def job_of(response) -> str:
    assert response.status_code == 201, response.content
    return response["Location"].rsplit("/", 1)[1]


def test_a_job_over_the_users_share_goes_back_to_the_queue(
    alice, bob, alice_api, bob_api, admin_user, published, run_job
):
    """Alice already runs a LOW job (her share, 1): a worker that picks her next LOW job does not run it
    but publishes it again a little later; Bob's job and Alice's HIGH job run; hers runs once her
    first one ends."""
    script = make_script(admin_user, "add", ADD, is_global=True)
    [running] = hold(alice, script, 1, mode=Run.Mode.ASYNC, service="LOW")
    waiting = job_of(submit(alice_api, "add", service="LOW"))
    bobs = job_of(submit(bob_api, "add", service="LOW"))
    high = job_of(submit(alice_api, "add", service="HIGH"))
    published.clear()

    deferred = run_job(waiting)
    assert (deferred.status, deferred.attempts, deferred.worker) == (Run.Status.QUEUED, 0, "")
    [(again, countdown)] = published
    assert again == waiting
    assert countdown >= worker.DEFER_SECONDS
    assert deferred.enqueued_at > deferred.created_at

    assert run_job(bobs).status == Run.Status.SUCCEEDED
    assert run_job(high).status == Run.Status.SUCCEEDED

    Run.objects.filter(pk=running.pk).update(status=Run.Status.SUCCEEDED, finished_at=timezone.now())
    done = run_job(waiting)
    assert (done.status, done.attempts, done.result) == (Run.Status.SUCCEEDED, 1, 2)


def test_a_groups_share_of_running_jobs_holds_at_the_claim(
    alice, bob, alice_api, bob_api, admin_user, published, run_job
):
    """The claim's one statement counts against the user's own share: Alice's group allows 2 running LOW
    jobs, so her second runs and her third waits; Bob (the default, 1) waits at his first running one;
    running jobs at another level or of another user do not count."""
    script = make_script(admin_user, "add", ADD, is_global=True)
    crew = Group.objects.create(name="crew")
    GroupLimits.objects.create(group=crew, max_running_jobs=2)
    alice.groups.add(crew)
    [first] = hold(alice, script, 1, mode=Run.Mode.ASYNC)
    hold(alice, script, 3, mode=Run.Mode.ASYNC, service="HIGH")
    hold(alice, script, 2, mode=Run.Mode.SYNC)
    hold(bob, script, 1, mode=Run.Mode.ASYNC)
    second = job_of(submit(alice_api, "add"))
    bobs = job_of(submit(bob_api, "add"))

    assert run_job(bobs).status == Run.Status.QUEUED
    hold(alice, script, 1, mode=Run.Mode.ASYNC)  # another worker took her second share meanwhile
    assert run_job(second).status == Run.Status.QUEUED
    Run.objects.filter(pk=first.pk).update(status=Run.Status.SUCCEEDED, finished_at=timezone.now())
    done = run_job(second)
    assert (done.status, done.attempts, done.result) == (Run.Status.SUCCEEDED, 1, 2)


def test_the_reaper_does_not_republish_a_job_that_is_being_deferred(alice, alice_api, published, run_job, settings):
    """A deferred job renewed its enqueued_at: no lost message, so the reaper publishes no copy."""
    settings.OMLWEB_REQUEUE_AFTER_SECONDS = 60
    script = make_script(alice, "add", ADD)
    hold(alice, script, 1, mode=Run.Mode.ASYNC)
    waiting = job_of(submit(alice_api, "add"))
    Run.objects.filter(pk=waiting).update(enqueued_at=timezone.now() - timedelta(minutes=5))
    run_job(waiting)
    published.clear()
    assert reaper.reap_runs().republished == []
    assert published == []


def test_too_many_queued_jobs_is_429_at_submission(alice, bob_api, alice_api, admin_user, published, settings):
    """Past OMLWEB_USER_MAX_QUEUED_JOBS a submission is a 429 and nothing is recorded; others still submit."""
    settings.OMLWEB_USER_MAX_QUEUED_JOBS = 2
    make_script(admin_user, "add", ADD, is_global=True)
    job_of(submit(alice_api, "add"))
    job_of(submit(alice_api, "add", service="HIGH"))
    refused = submit(alice_api, "add")
    assert refused.status_code == 429
    assert refused.json()["errorCode"] == 1045
    assert "2 async jobs queued or running" in refused.json()["errorMessage"]
    assert refused["Retry-After"] == "30"
    assert Run.objects.filter(user=alice).count() == 2
    job_of(submit(bob_api, "add"))
    # A sync run is not a queued job: it is still served.
    assert do_eval(alice_api, "add").json() == {"result": 2}


# Storage quota


def test_a_run_that_would_pass_the_quota_fails_and_keeps_nothing(alice, alice_api, settings):
    """A result that would take the user past OMLWEB_USER_QUOTA_MB: FAILED with 1046, a message naming
    the quota and the usage, and neither result nor streams kept; a smaller one still fits."""
    settings.OMLWEB_USER_QUOTA_MB = 1
    make_script(alice, "big", BIG)
    first = do_eval(alice_api, "big", {"parameters": '{"n": 600000}'})
    assert first.status_code == 200
    kept = Run.objects.get()
    assert kept.stored_bytes == 600002

    over = do_eval(alice_api, "big", {"parameters": '{"n": 600000}'})
    assert over.status_code == 400
    body = over.json()
    assert body["errorCode"] == 1046
    assert "exceed your storage quota of 1.0 MB" in body["errorMessage"]
    assert "already keep 0.6 MB" in body["errorMessage"]
    refused = Run.objects.exclude(pk=kept.pk).get()
    assert (refused.status, refused.error_code, refused.result, refused.stored_bytes) == (
        Run.Status.FAILED,
        1046,
        None,
        0,
    )
    assert do_eval(alice_api, "big", {"parameters": '{"n": 1000}'}).json() == {"result": "x" * 1000}


def test_figures_over_the_quota_are_not_kept(alice, alice_api, settings):
    """A run whose figures would pass the quota keeps no image, in the database or in media storage."""
    settings.OMLWEB_USER_QUOTA_MB = 1
    make_script(alice, "big", BIG)
    make_script(alice, "dots", FIGURE)
    assert do_eval(alice_api, "big", {"parameters": '{"n": 1045000}'}).status_code == 200
    response = do_eval(alice_api, "dots", {"graphicsFlag": True})
    assert response.json()["errorCode"] == 1046
    assert not RunImage.objects.exists()
    media = settings.MEDIA_ROOT / "runs"
    assert not media.exists() or not any(media.rglob("*.png"))


def test_a_user_over_the_quota_is_refused_up_front_until_runs_are_deleted(
    alice, bob, alice_api, bob_api, admin_user, settings
):
    """Over the quota (an admin lowered it): runs and jobs are refused before anything is recorded;
    other users run; once the retention prune deletes the old runs, the user runs again."""
    settings.OMLWEB_USER_QUOTA_MB = 2
    make_script(admin_user, "big", BIG, is_global=True)
    assert do_eval(alice_api, "big", {"parameters": '{"n": 1100000}'}).status_code == 200
    settings.OMLWEB_USER_QUOTA_MB = 1

    refused = do_eval(alice_api, "big")
    assert refused.status_code == 400
    assert refused.json()["errorCode"] == 1046
    message = refused.json()["errorMessage"]
    assert message.startswith(
        "You keep 1.0 MB (results and figures of your runs, and your datasets), your quota is 1.0 MB"
    )
    assert submit(alice_api, "big").json()["errorCode"] == 1046
    assert Run.objects.filter(user=alice).count() == 1
    assert do_eval(bob_api, "big").json() == {"result": "x" * 10}

    settings.OMLWEB_RUN_RETENTION_DAYS = 1
    Run.objects.filter(user=alice).update(finished_at=timezone.now() - timedelta(days=2))
    assert reaper.prune_runs() == 1
    assert do_eval(alice_api, "big").json() == {"result": "x" * 10}


def test_deleting_a_job_frees_its_quota(alice, alice_api, published, run_job, settings):
    """DELETE of a finished job takes its bytes off the user's usage."""
    settings.OMLWEB_USER_QUOTA_MB = 1
    make_script(alice, "big", BIG)
    job = job_of(submit(alice_api, "big", parameters='{"n": 1045000}'))
    assert run_job(job).status == Run.Status.SUCCEEDED
    assert do_eval(alice_api, "big", {"parameters": '{"n": 10000}'}).json()["errorCode"] == 1046
    assert alice_api.delete(f"/oml/api/py-scripts/v1/jobs/{job}").status_code == 200
    assert do_eval(alice_api, "big", {"parameters": '{"n": 10000}'}).status_code == 200


def test_the_runs_page_shows_the_users_storage_and_shares(alice, alice_api, client, settings):
    """My runs says how much of the quota the user's runs keep, and the user's shares."""
    settings.OMLWEB_USER_QUOTA_MB = 2
    make_script(alice, "big", BIG)
    assert do_eval(alice_api, "big", {"parameters": '{"n": 1048574}'}).status_code == 200
    client.force_login(alice)
    page = client.get("/runs/").content.decode()
    assert "You keep 1.0 MB of results, figures and datasets, of your quota of 2.0 MB (50%)" in page
    assert "You may have 2 runs at once, and 1 job running per service level" in page


def test_an_apply_run_over_the_quota_keeps_no_piece(alice, alice_api, settings):
    """index-apply whose pieces' values together pass the quota: FAILED with 1046, no values kept."""
    settings.OMLWEB_USER_QUOTA_MB = 1
    make_script(alice, "piece", "def piece(i):\n    return 'x' * 400000\n")
    response = alice_api.post("/oml/api/py-scripts/v1/index-apply/piece", {"times": 3}, format="json")
    assert response.status_code == 400
    assert response.json()["errorCode"] == 1046
    run = Run.objects.get()
    assert (run.status, run.result, run.stored_bytes) == (Run.Status.FAILED, None, 0)
    assert [piece["status"] for piece in run.pieces] == ["SUCCEEDED"] * 3
    assert all("value" not in piece for piece in run.pieces)
    response = alice_api.post("/oml/api/py-scripts/v1/index-apply/piece", {"times": 2}, format="json")
    assert response.status_code == 200


def test_an_admin_sets_a_groups_limits_on_the_groups_admin_page(admin_user, client):
    """Django's admin shows the limits inline on a group's page and saves them."""
    client.force_login(admin_user)
    form = client.get("/admin/auth/group/add/").content.decode()
    assert "omlweb_limits-0-max_sync_runs" in form
    response = client.post(
        "/admin/auth/group/add/",
        {
            "name": "heavy",
            "omlweb_limits-TOTAL_FORMS": "1",
            "omlweb_limits-INITIAL_FORMS": "0",
            "omlweb_limits-MIN_NUM_FORMS": "0",
            "omlweb_limits-MAX_NUM_FORMS": "1",
            "omlweb_limits-0-max_sync_runs": "4",
            "omlweb_limits-0-quota_mb": "5000",
        },
    )
    assert response.status_code == 302
    limits = GroupLimits.objects.get(group__name="heavy")
    assert (limits.max_sync_runs, limits.quota_mb, limits.max_running_jobs) == (4, 5000, None)


def test_datasets_count_against_the_quota(alice, alice_api, settings):
    """An upload that would pass the quota is refused (1046) and stores nothing; datasets' bytes also
    count for runs; deleting the dataset frees them."""
    settings.OMLWEB_USER_QUOTA_MB = 1
    datasets = "/oml/api/py-scripts/v1/datasets"
    small = io.BytesIO(b"a,b\n" + b"".join(b"%d,x\n" % i for i in range(100)))
    small.name = "small.csv"
    assert alice_api.post(datasets, {"name": "SMALL", "file": small}, format="multipart").status_code == 201
    kept = Dataset.objects.get().size_bytes
    big = io.BytesIO(b"a,b\n" + b"".join(b"%d,%s\n" % (i, os.urandom(8).hex().encode()) for i in range(200000)))
    big.name = "big.csv"
    response = alice_api.post(datasets, {"name": "BIG", "file": big}, format="multipart")
    assert response.status_code == 400
    assert response.json()["errorCode"] == 1046
    assert "would exceed your storage quota of 1.0 MB" in response.json()["errorMessage"]
    assert list(Dataset.objects.values_list("name", flat=True)) == ["SMALL"]
    assert [p.name for p in (settings.MEDIA_ROOT / "datasets").rglob("*.parquet")] == [
        Path(Dataset.objects.get().file.name).name
    ]

    make_script(alice, "big", BIG)
    almost = 1024**2 - 10  # fits alone, not beside the dataset
    assert kept > 10
    over = do_eval(alice_api, "big", {"parameters": f'{{"n": {almost}}}'})
    assert over.json()["errorCode"] == 1046
    assert alice_api.delete(f"{datasets}/SMALL").status_code == 200
    assert do_eval(alice_api, "big", {"parameters": f'{{"n": {almost}}}'}).status_code == 200
