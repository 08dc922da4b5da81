"""Metrics of the whole service as `manage.py serve` runs it (gunicorn, a worker, the reaper), over HTTP:
the scraper's view of sync runs and of an async job, and every process's heartbeat row."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.served import ROOT, free_port, served, service_env, token

pytestmark = pytest.mark.worker

METRICS_TOKEN = "served-metrics-token"


def scrape(base: str, bearer: str | None = METRICS_TOKEN) -> dict[str, dict[tuple, float]]:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    with urllib.request.urlopen(urllib.request.Request(f"{base}/metrics", headers=headers), timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.read().decode()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def post(url: str, body: dict, bearer: str) -> urllib.request.addinfourl:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {bearer}"},
        method="POST",
    )
    return urllib.request.urlopen(request, timeout=60)


def eventually(check, *, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_the_served_service_exposes_its_runs_and_processes(tmp_path):
    env = service_env(
        tmp_path,
        OMLWEB_METRICS_TOKEN=METRICS_TOKEN,
        OMLWEB_METRICS_FOLD_LAG_SECONDS="0",
        OMLWEB_WORKER_HEARTBEAT_SECONDS="0.5",
        OMLWEB_SERVICES="LOW",
        OMLWEB_LOW_CONCURRENCY="1",
    )
    port = free_port()
    command = [sys.executable, str(ROOT / "manage.py"), "serve", "--bind", f"127.0.0.1:{port}", "--web-workers", "1"]
    with served(command, env, port, tmp_path / "serve.log") as base:
        with pytest.raises(urllib.error.HTTPError) as refused:
            scrape(base, bearer=None)
        assert refused.value.code == 403
        with pytest.raises(urllib.error.HTTPError) as refused:
            scrape(base, bearer="guess")
        assert refused.value.code == 403

        scrape(base)  # starts counting
        bearer = token(base)
        for _ in range(2):
            with post(f"{base}/oml/api/py-scripts/v1/do-eval/RandomRedDots", {"service": "LOW"}, bearer) as response:
                assert response.status == 200
        eventually(
            lambda: value(scrape(base), "omlweb_workers_alive", queue="omlweb.low", service="LOW") == 1,
            timeout=90,
            what="the LOW worker's heartbeat",
        )
        with post(
            f"{base}/oml/api/py-scripts/v1/do-eval/RandomRedDots", {"service": "LOW", "asyncFlag": True}, bearer
        ) as response:
            assert response.status == 201
        finished = {"kind": "do-eval", "status": "SUCCEEDED", "service": "LOW"}
        samples = eventually(
            lambda: (s := scrape(base)) and value(s, "omlweb_runs_finished_total", mode="async", **finished) == 1 and s,
            timeout=90,
            what="the async job to be counted",
        )
        assert value(samples, "omlweb_runs_finished_total", mode="sync", **finished) == 2
        assert value(samples, "omlweb_run_duration_seconds_count", service="LOW", mode="sync") == 2
        assert value(samples, "omlweb_queue_wait_seconds_count", service="LOW") == 1
        assert value(samples, "omlweb_queue_depth", queue="omlweb.low", service="LOW") == 0

        with sqlite3.connect(tmp_path / "omlweb.sqlite3") as db:
            kinds = sorted(kind for (kind,) in db.execute("SELECT kind FROM scripts_app_workerheartbeat"))
        assert kinds == ["web", "worker"]
    # Stopped cleanly: every process removed its row.
    with sqlite3.connect(tmp_path / "omlweb.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM scripts_app_workerheartbeat").fetchone() == (0,)
