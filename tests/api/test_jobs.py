"""Oracle's async job flow through the API: submit, status, result, delete, and v2's list and cancel.

Jobs run in this process here (see `run_job`); tests/worker runs the same flow against real workers.
"""

from __future__ import annotations

import base64
import json
import re
from datetime import timedelta

import pytest
from django.utils import timezone

from scripts_app.errors import BROKER_UNAVAILABLE_MESSAGE
from scripts_app.models import Run
from scripts_app.services.jobs import broker, reaper, submission, worker
from scripts_app.services.pipeline import RunRequest, start_run
from tests.factories import make_script

BASE = "http://testserver/oml/api/py-scripts"


class InlineWatch:
    """RunWatch in the calling thread: a thread of its own can't see the test's uncommitted rows."""

    def __init__(self, *, run: Run, live=None) -> None:
        self.run = run

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def is_cancelled(self) -> bool:
        return not Run.objects.held_by(self.run).filter(cancel_requested_at__isnull=True).exists()


@pytest.fixture
def run_job(monkeypatch):
    """Execute a submitted job now, in this process, as a worker would."""
    monkeypatch.setattr(worker, "RunWatch", InlineWatch)

    def run(job_id) -> Run:
        worker.job_execute(run_id=str(job_id), worker="inline@test")
        return Run.objects.get(pk=job_id)

    return run


@pytest.fixture
def published(monkeypatch):
    """Messages published to the broker, as (run id, queue)."""
    sent: list[tuple[str, str]] = []
    monkeypatch.setattr(
        submission, "job_enqueue", lambda *, run: sent.append((str(run.pk), broker.queue_name(run.service)))
    )
    return sent


def submit(api, name, body=None, *, version="v1"):
    return api.post(f"/oml/api/py-scripts/{version}/do-eval/{name}", {"asyncFlag": True, **(body or {})}, format="json")


def job_id_of(response) -> str:
    match = re.fullmatch(rf"{BASE}/v[12]/jobs/([0-9a-f-]{{36}})", response["Location"])
    assert match, response["Location"]
    return match.group(1)


@pytest.fixture
def add_script(alice):
    return make_script(alice, "add", "def add(a=1, b=1):\n    return {'sum': a + b}\n")


def test_submit_answers_201_with_location_and_queues_the_run(alice, alice_api, add_script, published):
    """asyncFlag: 201, empty body, the job's absolute URL in Location; a QUEUED ASYNC run published on commit."""
    response = submit(alice_api, "add", {"parameters": '{"a": 2}', "service": "HIGH"})
    assert response.status_code == 201
    assert response.content == b""
    job_id = job_id_of(response)
    run = Run.objects.get(pk=job_id)
    assert run.status == Run.Status.QUEUED
    assert run.mode == Run.Mode.ASYNC
    assert run.service == "HIGH"
    assert run.timeout_seconds == 1800
    assert run.parameters == {"a": 2}
    assert run.user == alice


def test_the_message_is_published_after_commit_on_the_service_levels_queue(
    alice_api, add_script, published, django_capture_on_commit_callbacks
):
    """Nothing is published before the row is committed; then one message on the level's queue."""
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        job_id = job_id_of(submit(alice_api, "add", {"service": "MEDIUM"}))
    assert published == []
    for callback in callbacks:
        callback()
    assert published == [(job_id, "omlweb.medium")]


@pytest.mark.django_db(transaction=True)
def test_a_broker_that_is_down_refuses_the_job_with_a_503(alice_api, add_script, monkeypatch):
    """Publishing fails: the submission is refused with a JSON 503 (1043) and no run is left waiting; a
    synchronous run still works."""

    def broker_down(*, run):
        raise ConnectionRefusedError("broker down")

    monkeypatch.setattr(submission, "job_enqueue", broker_down)
    response = submit(alice_api, "add")
    assert response.status_code == 503
    assert response.json() == {"errorMessage": BROKER_UNAVAILABLE_MESSAGE, "errorCode": 1043}
    assert response["Retry-After"] == "10"
    assert not Run.objects.exists()
    response = alice_api.post("/oml/api/py-scripts/v1/do-eval/add", {"parameters": '{"a": 2}'}, format="json")
    assert (response.status_code, response.json()) == (200, {"result": {"sum": 3}})


def test_status_is_202_while_queued_then_302_with_content_location(alice_api, add_script, published, run_job):
    """Queued: 202 with createdDate, 'job is still running' and elapsedTime; finished: 302, Content-Location."""
    job_id = job_id_of(submit(alice_api, "add"))
    status = alice_api.get(f"/oml/api/py-scripts/v1/jobs/{job_id}")
    assert status.status_code == 202
    body = status.json()
    assert set(body) == {"createdDate", "status", "elapsedTime", "attempt"}
    assert body["attempt"] == 1
    assert body["status"] == "job is still running"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", body["createdDate"])
    assert re.fullmatch(r"\d\d:\d\d:\d\d", body["elapsedTime"])

    assert run_job(job_id).status == Run.Status.SUCCEEDED
    done = alice_api.get(f"/oml/api/py-scripts/v1/jobs/{job_id}")
    assert done.status_code == 302
    assert done.content == b""
    assert done["Content-Location"] == f"{BASE}/v1/jobs/{job_id}/result"
    assert not done.has_header("Location")


def test_result_is_404_until_finished_then_the_sync_body(alice_api, add_script, published, run_job):
    """GET result: 404 while queued; then 200 with the body a sync call gives."""
    job_id = job_id_of(submit(alice_api, "add", {"parameters": {"a": 2, "b": 3}}))
    pending = alice_api.get(f"/oml/api/py-scripts/v1/jobs/{job_id}/result")
    assert pending.status_code == 404
    assert pending.json()["errorCode"] == 1020
    run_job(job_id)
    result = alice_api.get(f"/oml/api/py-scripts/v1/jobs/{job_id}/result")
    assert result.status_code == 200
    assert result.json() == {"result": {"sum": 5}}


def test_graphics_result_has_the_sync_shape(alice, alice_api, published, run_job):
    """A graphicsFlag job's result is the list of {IMAGE, DATA, TITLE, ID}, as a sync call."""
    source = (
        "import matplotlib.pyplot as plt\n"
        "def dots():\n    plt.plot([1, 2], [3, 4])\n    plt.title('t')\n    return [1]\n"
    )
    make_script(alice, "dots", source)
    job_id = job_id_of(submit(alice_api, "dots", {"graphicsFlag": True}))
    run_job(job_id)
    [element] = alice_api.get(f"/oml/api/py-scripts/v1/jobs/{job_id}/result").json()["result"]
    assert element["ID"] == 1
    assert element["TITLE"] == "t"
    assert json.loads(element["DATA"]) == [1]
    assert base64.b64decode(element["IMAGE"]).startswith(b"\x89PNG")


def test_failed_script_finishes_302_and_its_result_is_the_oml_error(alice, alice_api, published, run_job):
    """A raising script: status 302 like any finished job; result 400 with the traceback."""
    make_script(alice, "boom", "def boom():\n    raise ValueError('bad value')\n")
    job_id = job_id_of(submit(alice_api, "boom"))
    assert run_job(job_id).status == Run.Status.FAILED
    assert alice_api.get(f"/oml/api/py-scripts/v1/jobs/{job_id}").status_code == 302
    result = alice_api.get(f"/oml/api/py-scripts/v1/jobs/{job_id}/result")
    assert result.status_code == 400
    assert result.json()["errorCode"] == 1030
    assert "ValueError: bad value" in result.json()["errorMessage"]


def test_a_job_past_its_timeout_is_killed_and_timed_out(alice, alice_api, run_job, published):
    """The job's own timeout bounds it: the run is killed, TIMED_OUT, and the result is error 1031."""
    script = make_script(alice, "slow", "import time\ndef slow():\n    time.sleep(60)\n")
    # 1 second is below what the API accepts (1800); the service takes any bound.
    run = start_run(RunRequest(script=script, user=alice, parameters={}, timeout_seconds=1, asynchronous=True))
    run = run_job(run.pk)
    assert run.status == Run.Status.TIMED_OUT
    assert run.duration_seconds < 30
    result = alice_api.get(f"/oml/api/py-scripts/v1/jobs/{run.pk}/result")
    assert result.status_code == 400
    assert result.json()["errorCode"] == 1031


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"timeout": 1799}, "timeout"),
        ({"timeout": 43201}, "timeout"),
        ({"timeout": "1800"}, "timeout"),
        ({"service": "URGENT"}, "service"),
    ],
)
def test_bad_submit_fields_are_400(alice_api, add_script, published, body, message):
    """timeout must be 1800 to 43200 and service one of the three levels; nothing is recorded."""
    response = submit(alice_api, "add", body)
    assert response.status_code == 400
    assert message in response.json()["errorMessage"]
    assert not Run.objects.exists()


def test_timeout_is_kept_on_the_run(alice_api, add_script, published):
    """An accepted timeout is the run's bound."""
    job_id = job_id_of(submit(alice_api, "add", {"timeout": 43200}))
    assert Run.objects.get(pk=job_id).timeout_seconds == 43200


def test_delete_removes_the_job(alice_api, add_script, published, run_job):
    """DELETE: 200 'job deleted successfully', the run is gone, and its URLs answer 404."""
    job_id = job_id_of(submit(alice_api, "add"))
    run_job(job_id)
    response = alice_api.delete(f"/oml/api/py-scripts/v1/jobs/{job_id}")
    assert response.status_code == 200
    assert response.json() == {"result": "job deleted successfully"}
    assert not Run.objects.filter(pk=job_id).exists()
    assert alice_api.get(f"/oml/api/py-scripts/v1/jobs/{job_id}").status_code == 404
    assert alice_api.get(f"/oml/api/py-scripts/v1/jobs/{job_id}/result").status_code == 404


def test_deleting_a_queued_job_means_no_worker_runs_it(alice_api, add_script, published, run_job):
    """A deleted queued job's message, when it comes, finds nothing to run."""
    job_id = job_id_of(submit(alice_api, "add"))
    assert alice_api.delete(f"/oml/api/py-scripts/v1/jobs/{job_id}").status_code == 200
    assert worker.job_execute(run_id=job_id, worker="inline@test") is None
    assert not Run.objects.exists()


def test_users_see_and_touch_only_their_own_jobs(alice_api, bob_api, add_script, published):
    """Another user's job is 404 on every job endpoint, and stays untouched."""
    job_id = job_id_of(submit(alice_api, "add"))
    for response in (
        bob_api.get(f"/oml/api/py-scripts/v1/jobs/{job_id}"),
        bob_api.get(f"/oml/api/py-scripts/v1/jobs/{job_id}/result"),
        bob_api.delete(f"/oml/api/py-scripts/v1/jobs/{job_id}"),
        bob_api.post(f"/oml/api/py-scripts/v2/jobs/{job_id}/cancel"),
    ):
        assert response.status_code == 404
        assert response.json()["errorCode"] == 1020
    assert Run.objects.get(pk=job_id).status == Run.Status.QUEUED
    assert bob_api.get("/oml/api/py-scripts/v2/jobs").json()["result"] == []


def test_admins_see_and_delete_every_job(alice_api, admin_api, add_script, published):
    """An admin sees another user's job and may delete it."""
    job_id = job_id_of(submit(alice_api, "add"))
    assert admin_api.get(f"/oml/api/py-scripts/v1/jobs/{job_id}").status_code == 202
    assert [row["job_id"] for row in admin_api.get("/oml/api/py-scripts/v2/jobs").json()["result"]] == [job_id]
    assert admin_api.delete(f"/oml/api/py-scripts/v1/jobs/{job_id}").status_code == 200


@pytest.mark.parametrize("job_id", ["0b7c1f7e-0000-4000-8000-000000000000", "not-a-uuid"])
def test_unknown_job_is_404(alice_api, job_id):
    """An id that is no job, or no id at all, is 404."""
    assert alice_api.get(f"/oml/api/py-scripts/v1/jobs/{job_id}").status_code == 404
    assert alice_api.post(f"/oml/api/py-scripts/v2/jobs/{job_id}/cancel").status_code == 404


def test_v2_list_is_newest_first_and_paginated(alice_api, add_script, published, run_job):
    """GET v2/jobs: the caller's jobs newest first, Oracle's keys, limit/offset and hasMore."""
    ids = [job_id_of(submit(alice_api, "add", version="v2")) for _ in range(3)]
    run_job(ids[0])
    page = alice_api.get("/oml/api/py-scripts/v2/jobs?limit=2").json()
    assert [row["job_id"] for row in page["result"]] == [ids[2], ids[1]]
    assert page["hasMore"] is True
    assert page["result"][0]["status"] == "job is still running"
    assert {"job_id", "createdDate", "status", "elapsedTime"} <= set(page["result"][0])
    rest = alice_api.get("/oml/api/py-scripts/v2/jobs?limit=2&offset=2").json()
    assert [row["job_id"] for row in rest["result"]] == [ids[0]]
    assert rest["result"][0]["status"] == "FINISH"
    assert rest["result"][0]["state"] == "SUCCEEDED"
    assert rest["hasMore"] is False


def test_sync_runs_are_not_jobs(alice_api, add_script):
    """Only async runs are listed as jobs."""
    alice_api.post("/oml/api/py-scripts/v1/do-eval/add", {}, format="json")
    assert alice_api.get("/oml/api/py-scripts/v2/jobs").json()["result"] == []


@pytest.mark.parametrize("query", ["limit=0", "limit=501", "limit=x", "offset=-1"])
def test_v2_list_rejects_bad_paging(alice_api, query):
    """limit is 1 to 500 and offset at least 0."""
    assert alice_api.get(f"/oml/api/py-scripts/v2/jobs?{query}").status_code == 400


def test_v2_only_endpoints_are_404_on_v1(alice_api, add_script, published):
    """The job list and cancel exist in v2 only, as Oracle."""
    job_id = job_id_of(submit(alice_api, "add"))
    assert alice_api.get("/oml/api/py-scripts/v1/jobs").status_code == 404
    assert alice_api.post(f"/oml/api/py-scripts/v1/jobs/{job_id}/cancel").status_code == 404


def test_cancel_a_queued_job(alice_api, add_script, published, run_job):
    """v2 cancel of a queued job: 200; it is finished (302), its result is error 1037, and it never runs."""
    job_id = job_id_of(submit(alice_api, "add", version="v2"))
    response = alice_api.post(f"/oml/api/py-scripts/v2/jobs/{job_id}/cancel")
    assert response.status_code == 200
    assert alice_api.get(f"/oml/api/py-scripts/v2/jobs/{job_id}").status_code == 302
    result = alice_api.get(f"/oml/api/py-scripts/v2/jobs/{job_id}/result")
    assert result.status_code == 400
    assert result.json()["errorCode"] == 1037
    assert run_job(job_id).status == Run.Status.CANCELLED


def test_cancel_a_running_job_raises_the_flag_the_worker_polls(alice_api, add_script, published):
    """Cancelling a running job records the request; the worker holding it stops it."""
    job_id = job_id_of(submit(alice_api, "add", version="v2"))
    Run.objects.filter(pk=job_id).update(status=Run.Status.RUNNING, worker="w@host", attempts=1)
    assert alice_api.post(f"/oml/api/py-scripts/v2/jobs/{job_id}/cancel").status_code == 200
    run = Run.objects.get(pk=job_id)
    assert run.status == Run.Status.RUNNING
    assert run.cancel_requested_at is not None
    assert InlineWatch(run=run).is_cancelled()


def test_cancel_a_finished_job_is_400(alice_api, add_script, published, run_job):
    """Only a queued or running job can be cancelled."""
    job_id = job_id_of(submit(alice_api, "add", version="v2"))
    run_job(job_id)
    response = alice_api.post(f"/oml/api/py-scripts/v2/jobs/{job_id}/cancel")
    assert response.status_code == 400
    assert response.json()["errorMessage"] == "Job is not running."
    assert Run.objects.get(pk=job_id).status == Run.Status.SUCCEEDED


def test_v2_result_returns_the_comments(alice_api, add_script, published, run_job):
    """v2: the submit's comments come back with the result."""
    job_id = job_id_of(submit(alice_api, "add", {"comments": "nightly scoring"}, version="v2"))
    run_job(job_id)
    body = alice_api.get(f"/oml/api/py-scripts/v2/jobs/{job_id}/result").json()
    assert body == {"result": {"sum": 2}, "comments": "nightly scoring"}
    assert alice_api.get("/oml/api/py-scripts/v2/jobs").json()["result"][0]["comments"] == "nightly scoring"


def test_a_second_delivery_never_runs_a_job_twice(alice_api, add_script, published, run_job, monkeypatch):
    """A redelivered message of a finished job does nothing: the runner is not called."""
    job_id = job_id_of(submit(alice_api, "add"))
    run = run_job(job_id)
    monkeypatch.setattr(worker.runner, "run", lambda *a, **k: pytest.fail("ran a finished job again"))
    assert worker.job_execute(run_id=job_id, worker="other@test") is None
    again = Run.objects.get(pk=job_id)
    assert (again.status, again.attempts, again.finished_at) == (run.status, 1, run.finished_at)


def test_admin_status_is_for_admins(alice_api, admin_api, monkeypatch):
    """GET /oml/api/admin/status: 403 for a user; for an admin the workers, queues and oldest job."""
    monkeypatch.setattr(broker, "workers_alive", lambda: [{"name": "low@h", "queues": ["omlweb.low"]}])
    monkeypatch.setattr(broker, "queue_length", lambda service: 0)
    assert alice_api.get("/oml/api/admin/status").status_code == 403
    body = admin_api.get("/oml/api/admin/status").json()
    assert body["workers"] == [{"name": "low@h", "queues": ["omlweb.low"]}]
    assert set(body["serviceLevels"]) == {"LOW", "MEDIUM", "HIGH"}
    assert body["serviceLevels"]["LOW"]["workers"] == ["low@h"]
    assert body["oldestQueuedJob"] is None
    # The isolation level in force on this host, and what it protects against.
    assert body["isolation"]["level"] in ("bwrap", "unshare", "process")
    assert body["isolation"]["protects_against"]


def test_apply_endpoints_take_async_jobs_too(alice, alice_api, published, run_job):
    """index-apply with asyncFlag: 201 + Location; the job runs every piece and its result is the sync body."""
    make_script(alice, "square", "def square(i, plus=0):\n    return i * i + plus\n")
    body = {"asyncFlag": True, "times": 3, "parameters": '{"plus": 1}', "service": "MEDIUM"}
    response = alice_api.post("/oml/api/py-scripts/v2/index-apply/square", body, format="json")
    assert (response.status_code, response.content) == (201, b"")
    job_id = job_id_of(response)
    run = Run.objects.get(pk=job_id)
    assert (run.kind, run.mode, run.service, run.status) == (Run.Kind.INDEX_APPLY, "ASYNC", "MEDIUM", "QUEUED")
    assert run_job(job_id).status == Run.Status.SUCCEEDED
    assert alice_api.get(f"/oml/api/py-scripts/v2/jobs/{job_id}").status_code == 302
    assert alice_api.get(f"/oml/api/py-scripts/v2/jobs/{job_id}/result").json() == {"result": [2, 5, 10]}
    sync = alice_api.post("/oml/api/py-scripts/v2/index-apply/square", {**body, "asyncFlag": False}, format="json")
    assert sync.json() == {"result": [2, 5, 10]}


def test_a_bad_apply_request_is_400_before_anything_is_queued(alice, alice_api, published):
    """An async apply request is checked like a sync one: a bad input query is a 400 and no job."""
    make_script(alice, "f", "def f(df):\n    return 1\n")
    body = {"asyncFlag": True, "input": "drop table IRIS"}
    response = alice_api.post("/oml/api/py-scripts/v1/table-apply/f", body, format="json")
    assert response.status_code == 400
    assert not Run.objects.exists()
    assert published == []


def test_a_job_started_again_after_its_worker_died_shows_attempt_2(alice, alice_api, client, add_script, published):
    """At least once, stated: a job whose worker died is handed back and waits for attempt 2; the job's
    status, the v2 list and the run page all say so."""
    job_id = job_id_of(submit(alice_api, "add", version="v2"))
    claimed = timezone.now()
    Run.objects.filter(pk=job_id).update(status=Run.Status.RUNNING, worker="w@host", attempts=1, started_at=claimed)
    assert alice_api.get(f"/oml/api/py-scripts/v2/jobs/{job_id}").json()["attempt"] == 1
    # A process restarted under the same name since it died: its runs are its own, not handed back.
    assert reaper.worker_lost(worker="w@host", died_at=claimed - timedelta(seconds=1)) == []
    assert reaper.worker_lost(worker="w@host", died_at=claimed) == [job_id]
    run = Run.objects.get(pk=job_id)
    assert (run.status, run.attempts, run.worker) == (Run.Status.QUEUED, 1, "")
    assert published[-1] == (job_id, "omlweb.low")
    assert alice_api.get(f"/oml/api/py-scripts/v2/jobs/{job_id}").json()["attempt"] == 2
    [row] = alice_api.get("/oml/api/py-scripts/v2/jobs").json()["result"]
    assert row["attempt"] == 2
    client.force_login(alice)
    page = client.get(f"/runs/{job_id}/").content.decode()
    assert "<dt>Attempt</dt><dd>2" in page
    assert "started again from the beginning" in page
