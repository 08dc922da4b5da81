"""The metrics endpoint: Prometheus' text format, only for the token or an allowed address, and counters
that move with real runs (sync runs through the API, on this process's real runner)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from scripts_app.models import MetricCounter, Run
from scripts_app.services import metrics
from tests.factories import make_script

pytestmark = pytest.mark.django_db

TOKEN = "s3cret-metrics-token-for-tests"


@pytest.fixture
def metrics_on(settings):
    settings.OMLWEB_METRICS_TOKEN = TOKEN
    settings.OMLWEB_METRICS_ALLOW = []
    settings.OMLWEB_METRICS_FOLD_LAG_SECONDS = 0
    return settings


def scrape(client, **headers) -> dict[str, dict[tuple, float]]:
    """Scrape /metrics with the token; {sample name: {sorted labels: value}}."""
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


# Who may scrape


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer ",
        "Bearer wrong",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Basic {TOKEN}",
        f"bearer{TOKEN}",
        TOKEN,
    ],
    ids=["none", "empty", "empty-bearer", "wrong", "longer", "shorter", "basic", "no-space", "bare"],
)
def test_refused_without_the_token(client, metrics_on, authorization):
    headers = {} if authorization is None else {"HTTP_AUTHORIZATION": authorization}
    response = client.get("/metrics", **headers)
    assert response.status_code == 403
    assert b"omlweb_" not in response.content


def test_refused_to_everyone_when_neither_token_nor_allow_list_is_set(client, settings):
    settings.OMLWEB_METRICS_TOKEN = ""
    settings.OMLWEB_METRICS_ALLOW = []
    assert client.get("/metrics").status_code == 403
    # An empty token must never match an empty bearer.
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 403


def test_a_signed_in_admin_is_not_enough(client, settings, admin_user):
    settings.OMLWEB_METRICS_TOKEN = TOKEN
    client.force_login(admin_user)
    assert client.get("/metrics").status_code == 403


def test_an_allowed_address_or_network_may_scrape_without_token(client, settings):
    settings.OMLWEB_METRICS_TOKEN = ""
    settings.OMLWEB_METRICS_ALLOW = ["10.1.2.3", "192.168.7.0/24", "not an address"]
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="192.168.7.200").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.4").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="::ffff:10.1.2.3").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::ffff:10.1.2.4").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="garbage").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 403
    # A forwarded-for header is the client's word, not its address: it does not let anyone in.
    assert client.get("/metrics", REMOTE_ADDR="8.8.8.8", HTTP_X_FORWARDED_FOR="10.1.2.3").status_code == 403


def test_only_get(client, metrics_on):
    assert client.post("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 405


# What it says


def test_every_documented_series_is_there(client, metrics_on):
    samples = scrape(client)
    for name in (
        "omlweb_queue_depth",
        "omlweb_queue_oldest_job_age_seconds",
        "omlweb_workers_alive",
        "omlweb_environments",
        "omlweb_metrics_scrape_seconds",
    ):
        assert name in samples, name
    assert value(samples, "omlweb_queue_depth", queue="omlweb.low", service="LOW") == 0
    # The audit trail's count: the chain head's last event id.
    assert value(samples, "omlweb_audit_events_total") == metrics.audit_event_count()


def test_counters_and_histograms_move_with_real_sync_runs(client, alice, alice_api, metrics_on):
    scrape(client)  # the first scrape starts counting
    make_script(alice, "hello", "def hello(n=1):\n    return n * 2\n")
    make_script(alice, "huge", "def huge():\n    return list(range(10**6))\n")
    for n in (1, 2):
        body = {"parameters": f'{{"n": {n}}}'}
        response = alice_api.post("/oml/api/py-scripts/v1/do-eval/hello", body, format="json")
        assert response.json() == {"result": 2 * n}
    assert alice_api.post("/oml/api/py-scripts/v1/do-eval/huge", {}, format="json").json()["errorCode"] == 1024

    samples = scrape(client)
    finished = {"kind": "do-eval", "service": "LOW", "mode": "sync"}
    assert value(samples, "omlweb_runs_finished_total", status="SUCCEEDED", **finished) == 2
    assert value(samples, "omlweb_runs_finished_total", status="FAILED", **finished) == 1
    assert value(samples, "omlweb_runner_limit_hits_total", limit="output", service="LOW", mode="sync") == 1
    assert value(samples, "omlweb_run_duration_seconds_count", service="LOW", mode="sync") == 3
    durations = sum(
        run.finished_at.timestamp() - run.started_at.timestamp() for run in Run.objects.filter(status__in=Run.FINISHED)
    )
    # SQLite computes durations in whole milliseconds.
    assert value(samples, "omlweb_run_duration_seconds_sum", service="LOW", mode="sync") == pytest.approx(
        durations, abs=0.005
    )
    buckets = sorted(
        (float(dict(labels)["le"]), count) for labels, count in samples["omlweb_run_duration_seconds_bucket"].items()
    )
    assert [count for _, count in buckets] == sorted(count for _, count in buckets), "buckets are cumulative"
    assert buckets[-1] == (float("inf"), 3)

    # Scraping again counts nothing twice.
    again = scrape(client)
    assert value(again, "omlweb_runs_finished_total", status="SUCCEEDED", **finished) == 2
    assert value(again, "omlweb_run_duration_seconds_count", service="LOW", mode="sync") == 3


def test_counters_do_not_go_down_when_retention_deletes_runs(client, alice, alice_api, metrics_on):
    scrape(client)
    make_script(alice, "hello", "def hello():\n    return 1\n")
    alice_api.post("/oml/api/py-scripts/v1/do-eval/hello", {}, format="json")
    before = scrape(client)
    Run.objects.all().delete()
    after = scrape(client)
    labels = {"kind": "do-eval", "status": "SUCCEEDED", "service": "LOW", "mode": "sync"}
    assert value(before, "omlweb_runs_finished_total", **labels) == 1
    assert value(after, "omlweb_runs_finished_total", **labels) == 1


def test_runs_recorded_late_are_counted_once_the_lag_has_passed(client, alice, alice_api, metrics_on):
    """A run finishing inside the lag window is not counted yet; it is counted by a later scrape, once."""
    metrics_on.OMLWEB_METRICS_FOLD_LAG_SECONDS = 3600
    scrape(client)
    make_script(alice, "hello", "def hello():\n    return 1\n")
    alice_api.post("/oml/api/py-scripts/v1/do-eval/hello", {}, format="json")
    labels = {"kind": "do-eval", "status": "SUCCEEDED", "service": "LOW", "mode": "sync"}
    assert value(scrape(client), "omlweb_runs_finished_total", **labels) == 0
    # An hour later (the watermark moved back an hour stands for it) the run is counted, once.
    mark = MetricCounter.objects.get(name=metrics.RUNS_WATERMARK)
    mark.at = mark.at - timedelta(hours=1)
    mark.save()
    metrics_on.OMLWEB_METRICS_FOLD_LAG_SECONDS = 0
    assert value(scrape(client), "omlweb_runs_finished_total", **labels) == 1
    assert value(scrape(client), "omlweb_runs_finished_total", **labels) == 1


def test_queued_jobs_show_as_depth_and_oldest_age(client, alice, metrics_on):
    script = make_script(alice, "hello", "def hello():\n    return 1\n")
    for minutes in (10, 3):
        Run.objects.create(
            script_version=script.current_version,
            script_name="hello",
            script_owner="alice",
            user=alice,
            mode=Run.Mode.ASYNC,
            service="MEDIUM",
            status=Run.Status.QUEUED,
            created_at=timezone.now() - timedelta(minutes=minutes),
        )
    samples = scrape(client)
    assert value(samples, "omlweb_queue_depth", queue="omlweb.medium", service="MEDIUM") == 2
    age = value(samples, "omlweb_queue_oldest_job_age_seconds", queue="omlweb.medium", service="MEDIUM")
    assert 600 <= age < 660
    assert value(samples, "omlweb_queue_oldest_job_age_seconds", queue="omlweb.low", service="LOW") == 0
    assert value(samples, "omlweb_runs_queued", kind="do-eval", service="MEDIUM", mode="async") == 2
    assert value(samples, "omlweb_workers_alive", queue="omlweb.medium", service="MEDIUM") == 0


@pytest.mark.django_db(transaction=True)
def test_scrapes_at_once_never_count_a_run_twice(metrics_on, alice):
    """Eight folds at once (eight scrapes hitting several web processes) count each run exactly once."""
    import threading

    from django.db import connection

    metrics.fold()  # starts counting
    script = make_script(alice, "hello", "def hello():\n    return 1\n")
    now = timezone.now()
    Run.objects.bulk_create(
        Run(
            script_version=script.current_version,
            script_name="hello",
            script_owner="alice",
            user=alice,
            status=Run.Status.SUCCEEDED,
            created_at=now,
            started_at=now,
            finished_at=now + timedelta(microseconds=i),
        )
        for i in range(300)
    )
    start = threading.Barrier(8)

    def scrape_once() -> None:
        try:
            start.wait()
            metrics.fold(now=now + timedelta(seconds=1))
        finally:
            connection.close()

    threads = [threading.Thread(target=scrape_once) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    metrics.fold(now=now + timedelta(seconds=2))  # whatever a busy database made a fold skip
    counted = MetricCounter.objects.get(
        name=metrics.RUNS_FINISHED,
        labels=metrics.label_key({"kind": "do-eval", "status": "SUCCEEDED", "service": "LOW", "mode": "sync"}),
    )
    assert counted.value == 300
    durations = MetricCounter.objects.get(
        name=f"{metrics.RUN_DURATION}_count", labels=metrics.label_key({"service": "LOW", "mode": "sync"})
    )
    assert durations.value == 300


def test_a_backlog_is_folded_in_batches_each_run_once(metrics_on, alice, monkeypatch):
    """After a long pause the backlog is taken a batch per scrape; runs sharing an instant at a batch's
    edge are neither lost nor counted twice."""
    monkeypatch.setattr(metrics, "FOLD_BATCH", 10)
    metrics.fold()
    script = make_script(alice, "hello", "def hello():\n    return 1\n")
    now = timezone.now()
    # 35 runs; instants 1..30 in steps, with five runs sharing instant 10 (across the first edge).
    instants = [*range(1, 10), *[10] * 5, *range(11, 32)]
    Run.objects.bulk_create(
        Run(
            script_version=script.current_version,
            script_name="hello",
            script_owner="alice",
            user=alice,
            status=Run.Status.FAILED,
            error_code=1033,
            created_at=now,
            started_at=now,
            finished_at=now + timedelta(milliseconds=instant),
        )
        for instant in instants
    )
    folded = []
    for _ in range(10):
        folded.append(metrics.fold(now=now + timedelta(seconds=5)))
    assert all(n <= 10 + 5 for n in folded), folded
    assert sum(folded) == len(instants) == 35
    labels = {"kind": "do-eval", "status": "FAILED", "service": "LOW", "mode": "sync"}
    assert MetricCounter.objects.get(name=metrics.RUNS_FINISHED, labels=metrics.label_key(labels)).value == 35
    memory = {"limit": "memory", "service": "LOW", "mode": "sync"}
    assert MetricCounter.objects.get(name=metrics.LIMIT_HITS, labels=metrics.label_key(memory)).value == 35


def test_environment_builds_are_counted_once_each(client, metrics_on, admin_user):
    from scripts_app.models import Environment

    scrape(client)
    done = timezone.now()
    Environment.objects.create(name="science", python="/usr/bin/python3", status="READY", build_finished_at=done)
    Environment.objects.create(name="broken", python="/usr/bin/python3", status="FAILED", build_finished_at=done)
    Environment.objects.create(name="pending", python="/usr/bin/python3", status="BUILDING")
    samples = scrape(client)
    assert value(samples, "omlweb_environment_builds_total", status="ready") == 1
    assert value(samples, "omlweb_environment_builds_total", status="failed") == 1
    assert value(samples, "omlweb_environments", status="building") == 1
    # A rebuild finishing later counts again; scraping again does not.
    Environment.objects.filter(name="science").update(build_finished_at=timezone.now())
    scrape(client)
    assert value(scrape(client), "omlweb_environment_builds_total", status="ready") == 2
