"""Metrics and the worker health page against real worker processes: heartbeats, queue series, a job's
counters, and a worker killed with SIGKILL shown as gone within the heartbeat window."""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from scripts_app.models import Run, WorkerHeartbeat
from tests.conftest import client_for, in_group
from tests.factories import UserFactory, make_script
from tests.worker.conftest import wait_for, wait_status

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

TOKEN = "worker-metrics-token"
SLEEPER = "import time\ndef sleeper(seconds=0):\n    time.sleep(seconds)\n    return seconds\n"
BEAT_SECONDS = 0.3
GONE_SECONDS = 2.0


@pytest.fixture
def fast_clocks(settings):
    settings.OMLWEB_METRICS_TOKEN = TOKEN
    settings.OMLWEB_METRICS_FOLD_LAG_SECONDS = 0
    settings.OMLWEB_WORKER_GONE_SECONDS = GONE_SECONDS
    return settings


@pytest.fixture
def alice(transactional_db):
    user = UserFactory(username="alice")
    make_script(user, "sleeper", SLEEPER)
    return user


@pytest.fixture
def admin_client(client, transactional_db):
    admin = UserFactory(username="operator")
    in_group(admin, "admins")
    client.force_login(admin)
    return client


def scrape(client) -> dict[str, dict[tuple, float]]:
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200, response.content
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def submit(api, service: str, seconds: float = 0) -> str:
    body = {"asyncFlag": True, "parameters": f'{{"seconds": {seconds}}}', "service": service}
    response = api.post("/oml/api/py-scripts/v2/do-eval/sleeper", body, format="json")
    assert response.status_code == 201, response.content
    return response["Location"].rstrip("/").rsplit("/", 1)[1]


def test_queue_and_worker_series_follow_a_real_worker(cluster, fast_clocks, alice, client):
    worker = cluster.start(
        "low", ["LOW"], OMLWEB_WORKER_HEARTBEAT_SECONDS=str(BEAT_SECONDS), OMLWEB_WORKER_GONE_SECONDS=str(GONE_SECONDS)
    )
    row = wait_for(
        lambda: WorkerHeartbeat.objects.filter(name=worker.name).first(), timeout=30, what="a heartbeat", on=cluster
    )
    low, medium = f"{cluster.prefix}.low", f"{cluster.prefix}.medium"
    assert row.queues == [low]
    assert row.kind == "worker"
    before = scrape(client)
    assert value(before, "omlweb_workers_alive", queue=low, service="LOW") == 1
    assert value(before, "omlweb_workers_alive", queue=medium, service="MEDIUM") == 0

    api = client_for(alice)
    job = submit(api, "LOW", 0.3)
    wait_status(job, Run.Status.SUCCEEDED, timeout=60, on=cluster)
    # A job nobody serves: it waits in the MEDIUM queue.
    waiting = submit(api, "MEDIUM")
    time.sleep(1.1)
    after = scrape(client)
    finished = {"kind": "do-eval", "status": "SUCCEEDED", "service": "LOW", "mode": "async"}
    assert value(after, "omlweb_runs_finished_total", **finished) == 1
    assert value(after, "omlweb_queue_wait_seconds_count", service="LOW") == 1
    run = Run.objects.get(pk=job)
    waited = (run.started_at - run.created_at).total_seconds()
    assert value(after, "omlweb_queue_wait_seconds_sum", service="LOW") == pytest.approx(waited, abs=0.005)
    assert value(after, "omlweb_run_duration_seconds_count", service="LOW", mode="async") == 1
    assert value(after, "omlweb_run_duration_seconds_sum", service="LOW", mode="async") >= 0.3
    assert value(after, "omlweb_queue_depth", queue=medium, service="MEDIUM") == 1
    assert value(after, "omlweb_queue_oldest_job_age_seconds", queue=medium, service="MEDIUM") >= 1
    assert value(after, "omlweb_runs_queued", kind="do-eval", service="MEDIUM", mode="async") == 1
    assert Run.objects.get(pk=waiting).status == Run.Status.QUEUED


def test_a_killed_worker_shows_as_gone_within_the_heartbeat_window(cluster, fast_clocks, alice, admin_client):
    env = {"OMLWEB_WORKER_HEARTBEAT_SECONDS": str(BEAT_SECONDS), "OMLWEB_WORKER_GONE_SECONDS": str(GONE_SECONDS)}
    doomed = cluster.start("doomed", ["LOW"], **env)
    survivor = cluster.start("survivor", ["MEDIUM"], **env)
    for worker in (doomed, survivor):
        wait_for(
            lambda w=worker: WorkerHeartbeat.objects.filter(name=w.name).exists(),
            timeout=30,
            what=f"{worker.name}'s heartbeat",
            on=cluster,
        )

    def state(page: str, name: str) -> str:
        """The badge of the process card that `name` heads."""
        card = page[page.index(name) :]
        card = card[: card.index("</li>")]
        return "alive" if ">alive<" in card else "gone" if ">gone<" in card else "?"

    page = admin_client.get("/service/workers/").content.decode()
    assert (state(page, doomed.name), state(page, survivor.name)) == ("alive", "alive")
    assert f"No worker serves queue <code>{cluster.prefix}.low</code>" not in page

    doomed.kill9()
    killed_at = time.monotonic()
    gone = wait_for(
        lambda: (p := admin_client.get("/service/workers/").content.decode()) and state(p, doomed.name) == "gone" and p,
        timeout=GONE_SECONDS + 3 * BEAT_SECONDS + 5,
        what="the killed worker to show as gone",
        on=cluster,
    )
    took = time.monotonic() - killed_at
    assert took <= GONE_SECONDS + 2 * BEAT_SECONDS + 1.5, took
    assert state(gone, survivor.name) == "alive"
    assert f"No worker serves queue <code>{cluster.prefix}.low</code>" in gone
    samples = scrape(admin_client)
    assert value(samples, "omlweb_workers_alive", queue=f"{cluster.prefix}.low", service="LOW") == 0
    assert value(samples, "omlweb_workers_alive", queue=f"{cluster.prefix}.medium", service="MEDIUM") == 1


def test_a_worker_stopped_cleanly_removes_its_row(cluster, fast_clocks):
    worker = cluster.start("clean", ["LOW"], OMLWEB_WORKER_HEARTBEAT_SECONDS=str(BEAT_SECONDS))
    wait_for(lambda: WorkerHeartbeat.objects.filter(name=worker.name).exists(), timeout=30, what="a heartbeat")
    worker.stop()
    assert not WorkerHeartbeat.objects.filter(name=worker.name).exists()
