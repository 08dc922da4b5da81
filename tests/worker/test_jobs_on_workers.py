"""Oracle's job flow, cancel, timeout, service levels and fault injection, against real worker processes."""

from __future__ import annotations

import re

import pytest

from scripts_app.models import Run
from scripts_app.services import supervision
from scripts_app.services.jobs.reaper import reap_runs, worker_lost
from scripts_app.services.pipeline import RunRequest, start_run
from tests.conftest import client_for
from tests.factories import UserFactory, make_script
from tests.worker.conftest import wait_for, wait_status

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

SLEEPER = "import time\ndef sleeper(seconds=0, fail=False):\n    time.sleep(seconds)\n    if fail:\n        raise ValueError('asked to fail')\n    return {'slept': seconds}\n"  # noqa: E501
FINISHED = Run.FINISHED


@pytest.fixture
def alice(transactional_db):
    return UserFactory(username="alice")


@pytest.fixture
def api(alice):
    return client_for(alice)


@pytest.fixture
def sleeper(alice):
    return make_script(alice, "sleeper", SLEEPER)


def submit(api, body: dict, *, version: str = "v2") -> str:
    response = api.post(f"/oml/api/py-scripts/{version}/do-eval/sleeper", {"asyncFlag": True, **body}, format="json")
    assert response.status_code == 201, response.content
    assert response.content == b""
    match = re.fullmatch(
        rf"http://testserver/oml/api/py-scripts/{version}/jobs/([0-9a-f-]{{36}})", response["Location"]
    )
    assert match, response["Location"]
    return match.group(1)


def job(sleeper, seconds: float = 0, *, service: str = "LOW", **kwargs) -> Run:
    return start_run(
        RunRequest(
            script=sleeper,
            user=sleeper.owner,
            parameters={"seconds": seconds},
            service=service,
            asynchronous=True,
            **kwargs,
        )
    )


# Oracle's flow, every status code


def test_the_whole_job_flow_on_a_worker(shared, api, sleeper):
    """201 + Location; 202 and result 404 while it runs; 302 + Content-Location; result 200; DELETE 200."""
    job_id = submit(api, {"parameters": '{"seconds": 1}', "comments": "flow"})
    status = api.get(f"/oml/api/py-scripts/v2/jobs/{job_id}")
    assert status.status_code == 202
    assert status.json()["status"] == "job is still running"
    assert api.get(f"/oml/api/py-scripts/v2/jobs/{job_id}/result").status_code == 404

    done = wait_for(
        lambda: (r := api.get(f"/oml/api/py-scripts/v2/jobs/{job_id}")).status_code == 302 and r,
        timeout=60,
        what="the job to finish (302)",
        on=shared,
    )
    assert done.content == b""
    assert done["Content-Location"] == f"http://testserver/oml/api/py-scripts/v2/jobs/{job_id}/result"
    assert not done.has_header("Location")
    result = api.get(f"/oml/api/py-scripts/v2/jobs/{job_id}/result")
    assert result.status_code == 200
    assert result.json() == {"result": {"slept": 1}, "comments": "flow"}
    run = Run.objects.get(pk=job_id)
    assert (run.status, run.attempts, run.worker) == (Run.Status.SUCCEEDED, 1, "all@test")
    assert run.heartbeat_at is not None

    deleted = api.delete(f"/oml/api/py-scripts/v1/jobs/{job_id}")
    assert (deleted.status_code, deleted.json()) == (200, {"result": "job deleted successfully"})
    assert api.get(f"/oml/api/py-scripts/v1/jobs/{job_id}").status_code == 404


def test_a_failing_script_finishes_and_its_result_is_400(shared, api, sleeper):
    """A script that raises: 302 like any finished job, then the OML error body with 400."""
    job_id = submit(api, {"parameters": '{"fail": true}'}, version="v1")
    wait_status(job_id, FINISHED, timeout=60, on=shared)
    assert api.get(f"/oml/api/py-scripts/v1/jobs/{job_id}").status_code == 302
    result = api.get(f"/oml/api/py-scripts/v1/jobs/{job_id}/result")
    assert result.status_code == 400
    assert result.json()["errorCode"] == 1030
    assert "asked to fail" in result.json()["errorMessage"]


def test_cancel_stops_a_running_job(shared, api, sleeper):
    """v2 cancel of a running job: 200, the worker kills it, it ends CANCELLED and its result is 1037."""
    job_id = submit(api, {"parameters": '{"seconds": 60}'})
    wait_status(job_id, Run.Status.RUNNING, timeout=60, on=shared)
    assert api.post(f"/oml/api/py-scripts/v2/jobs/{job_id}/cancel").status_code == 200
    run = wait_status(job_id, FINISHED, timeout=30, on=shared)
    assert run.status == Run.Status.CANCELLED
    assert run.duration_seconds < 30
    assert api.get(f"/oml/api/py-scripts/v2/jobs/{job_id}").status_code == 302
    assert api.get(f"/oml/api/py-scripts/v2/jobs/{job_id}/result").json()["errorCode"] == 1037
    again = api.post(f"/oml/api/py-scripts/v2/jobs/{job_id}/cancel")
    assert again.status_code == 400


def test_deleting_a_running_job_stops_it(shared, api, sleeper):
    """DELETE of a running job: gone at once, and the worker kills the run and drops its outcome."""
    job_id = submit(api, {"parameters": '{"seconds": 60}'})
    wait_status(job_id, Run.Status.RUNNING, timeout=60, on=shared)
    assert api.delete(f"/oml/api/py-scripts/v2/jobs/{job_id}").status_code == 200
    wait_for(
        lambda: any(f"Run {job_id}: taken from this attempt" in w.log_text() for w in shared.workers),
        timeout=30,
        what="the worker to stop the deleted run",
        on=shared,
    )
    assert not Run.objects.filter(pk=job_id).exists()


def test_a_job_past_its_timeout_ends_timed_out(shared, sleeper, api):
    """The run's timeout bounds it on the worker: killed, TIMED_OUT, result error 1031."""
    run = job(sleeper, 60, timeout_seconds=1)
    run = wait_status(run.pk, FINISHED, timeout=30, on=shared)
    assert run.status == Run.Status.TIMED_OUT
    assert api.get(f"/oml/api/py-scripts/v1/jobs/{run.pk}/result").json()["errorCode"] == 1031


def test_admin_status_shows_the_workers_and_queues(shared, admin_user, sleeper):
    """GET /oml/api/admin/status names the live worker, its queues, and the queue lengths."""
    body = client_for(admin_user).get("/oml/api/admin/status").json()
    queues = sorted([*shared.workers[0].queues, supervision.probe_queue("all@test")])
    assert {"name": "all@test", "queues": queues} in body["workers"]
    assert (body["broker"], body["brokerAvailable"], body["brokerError"]) == (
        shared.broker.url.split(":")[0],
        True,
        None,
    )
    for level in ("LOW", "MEDIUM", "HIGH"):
        row = body["serviceLevels"][level]
        assert row["workers"] == ["all@test"]
        assert row["messages"] == 0
    assert body["oldestQueuedJob"] is None


def test_an_async_apply_job_runs_its_pieces_on_a_worker(shared, api, alice):
    """index-apply as a job, pieces in parallel on the worker: the same result as the sync call."""
    make_script(alice, "square", "def square(i):\n    return i * i\n")
    body = {"asyncFlag": True, "times": 4, "parallelFlag": True, "service": "HIGH"}
    response = api.post("/oml/api/py-scripts/v2/index-apply/square", body, format="json")
    assert response.status_code == 201
    job_id = response["Location"].rsplit("/", 1)[1]
    run = wait_status(job_id, FINISHED, timeout=60, on=shared)
    assert run.status == Run.Status.SUCCEEDED, run.error_message
    assert api.get(f"/oml/api/py-scripts/v2/jobs/{job_id}/result").json() == {"result": [1, 4, 9, 16]}


# Service levels: their own queues and workers, on one broker and database


def test_high_runs_while_low_is_flooded_on_separate_workers(cluster, sleeper):
    """Two worker processes on different queues, same broker and database: a HIGH job runs at once on its
    own worker while LOW jobs wait their turn on theirs."""
    cluster.start("low", ["LOW"])
    cluster.start("high", ["HIGH"])
    lows = [job(sleeper, 2, service="LOW") for _ in range(3)]
    wait_status(lows[0].pk, Run.Status.RUNNING, timeout=60, on=cluster)
    high = wait_status(job(sleeper, 0, service="HIGH").pk, FINISHED, timeout=30, on=cluster)
    assert (high.status, high.worker) == (Run.Status.SUCCEEDED, "high@test")
    assert Run.objects.get(pk=lows[2].pk).status == Run.Status.QUEUED
    for low in lows:
        done = wait_status(low.pk, FINISHED, timeout=60, on=cluster)
        assert (done.status, done.worker) == (Run.Status.SUCCEEDED, "low@test")


# Fault injection


def test_kill_9_of_the_worker_mid_run_is_recovered(cluster, sleeper):
    """kill -9 of the whole worker while it runs a job: the run is never left RUNNING. The reaper takes
    it back and a new worker runs it to the end, as attempt 2."""
    first = cluster.start("first", ["LOW"])
    run = job(sleeper, 2)
    wait_status(run.pk, Run.Status.RUNNING, timeout=60, on=cluster)
    first.kill9()
    assert Run.objects.get(pk=run.pk).status == Run.Status.RUNNING
    wait_for(
        lambda: reap_runs().requeued == [str(run.pk)],
        timeout=30,
        what="the reaper to requeue the run of the killed worker",
        on=cluster,
    )
    cluster.start("second", ["LOW"])
    done = wait_status(run.pk, FINISHED, timeout=60, on=cluster)
    assert (done.status, done.attempts, done.worker) == (Run.Status.SUCCEEDED, 2, "second@test")
    assert done.result == {"slept": 2}


def test_a_dead_workers_run_is_handed_back_at_once(cluster, sleeper):
    """kill -9 of the worker process running a job (as the OOM killer would): its supervisor calls
    `worker_lost`, which requeues and publishes the run on the spot, with no reaper and no wait for the
    heartbeat to go stale; the next worker runs it as attempt 2."""
    worker = cluster.start("dying", ["LOW"])
    run = job(sleeper, 2)
    wait_status(run.pk, Run.Status.RUNNING, timeout=60, on=cluster)
    worker.kill9()
    assert worker_lost(worker="dying@test") == [str(run.pk)]
    assert Run.objects.get(pk=run.pk).status == Run.Status.QUEUED
    cluster.start("next", ["LOW"])
    done = wait_status(run.pk, FINISHED, timeout=60, on=cluster)
    assert (done.status, done.attempts, done.worker) == (Run.Status.SUCCEEDED, 2, "next@test")
    assert done.result == {"slept": 2}


def test_a_job_that_keeps_losing_its_worker_fails_clearly(cluster, sleeper, settings):
    """Past OMLWEB_RUN_MAX_ATTEMPTS the reaper fails the run with a message saying why."""
    settings.OMLWEB_RUN_MAX_ATTEMPTS = 1
    worker = cluster.start("doomed", ["LOW"])
    run = job(sleeper, 30)
    wait_status(run.pk, Run.Status.RUNNING, timeout=60, on=cluster)
    worker.kill9()
    wait_for(lambda: reap_runs().failed == [str(run.pk)], timeout=30, what="the reaper to fail the run")
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    assert "started 1 times" in run.error_message
    assert "doomed@test" in run.error_message


def test_a_restart_of_the_workers_with_jobs_queued_loses_none(cluster, sleeper):
    """Jobs queued and one running when the worker stops (SIGTERM); after a restart all finish, each once."""
    worker = cluster.start("before", ["LOW"])
    runs = [job(sleeper, 0.5) for _ in range(4)]
    wait_status(runs[0].pk, Run.Status.RUNNING, timeout=60, on=cluster)
    worker.stop()
    cluster.start("after", ["LOW"])
    for run in runs:
        done = wait_status(run.pk, FINISHED, timeout=60, on=cluster)
        assert (done.status, done.attempts) == (Run.Status.SUCCEEDED, 1)
    assert {Run.objects.get(pk=runs[0].pk).worker} == {"before@test"}


def test_a_restart_after_kill_9_with_jobs_queued_loses_none(cluster, sleeper):
    """kill -9 of the worker with one job running and more queued (and a reserved message lost with it on
    the embedded broker): after the reaper and a new worker, every job finishes."""
    worker = cluster.start("crashing", ["LOW"])
    runs = [job(sleeper, 1) for _ in range(3)]
    wait_status(runs[0].pk, Run.Status.RUNNING, timeout=60, on=cluster)
    worker.kill9()
    cluster.start("recovered", ["LOW"])

    def all_finished() -> bool:
        reap_runs()
        return Run.objects.filter(pk__in=[r.pk for r in runs], status__in=FINISHED).count() == len(runs)

    wait_for(all_finished, timeout=90, what="every job to finish after the crash", on=cluster)
    for run in runs:
        run.refresh_from_db()
        assert run.status == Run.Status.SUCCEEDED
