"""Real OML clients never trip: through `manage.py serve` at its default settings, as such clients behave.

One service, one timeline (about 3 minutes, to keep CI's budget): three sync runs of 3 minutes hold
three of the web process's four run slots while an async client submits a 70 s job and polls its
Location every 2 s on one keep-alive connection (dbt-oracle's way) until the 302, then fetches the
result on that same connection. Meanwhile short requests and a short sync run are answered; with every
slot taken, a sync run gets a clear 503 rather than a hang, and polls are still answered.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from urllib.parse import urlsplit

import pytest

from tests.served import ROOT, free_port, served, service_env, token

pytestmark = pytest.mark.worker

SLEEPER = "import time\n\ndef sleeper(seconds=0):\n    time.sleep(seconds)\n    return seconds\n"
LONG_SYNC_SECONDS = 180  # three times the old sync limit (60 s), well under the new default (900 s)
JOB_SECONDS = 70
POLL_SECONDS = 2


class Client:
    """One HTTP/1.1 keep-alive connection, as OML clients hold one: every request on the same socket."""

    def __init__(self, base: str, bearer: str, timeout: float = 60) -> None:
        parts = urlsplit(base)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        self.headers = {"Authorization": f"Bearer {bearer}", "Accept": "application/json"}
        self.local_ports: set[int] = set()

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict, object]:
        headers = dict(self.headers)
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body)
        self.connection.request(method, path, body=data, headers=headers)
        self.local_ports.add(self.connection.sock.getsockname()[1])
        response = self.connection.getresponse()
        raw = response.read()
        assert response.getheader("Connection", "").lower() != "close", "the server closed a keep-alive connection"
        return response.status, dict(response.getheaders()), json.loads(raw) if raw else None


def sync_run(base: str, bearer: str, seconds: float, results: list) -> None:
    client = Client(base, bearer, timeout=LONG_SYNC_SECONDS + 120)
    started = time.monotonic()
    try:
        body = {"parameters": {"seconds": seconds}}
        status, _, body = client.call("POST", "/oml/api/py-scripts/v1/do-eval/sleeper", body)
        results.append((status, body, time.monotonic() - started))
    except Exception as error:  # noqa: BLE001 - reported by the test thread
        results.append((None, repr(error), time.monotonic() - started))


def test_long_jobs_long_sync_runs_and_polls_on_one_keep_alive_connection(tmp_path):
    """70 s job polled every 2 s on one connection; 3-minute sync runs succeed; short requests never starve."""
    # One user plays every client here, so their fair share of sync runs (2, tests/api/test_shares.py)
    # is lifted: this test is about the process's run slots and threads.
    env = service_env(tmp_path, OMLWEB_LOW_CONCURRENCY="1", OMLWEB_USER_MAX_CONCURRENT_RUNS="10")
    port = free_port()
    command = [sys.executable, str(ROOT / "manage.py"), "serve", "--bind", f"127.0.0.1:{port}", "--web-workers", "1"]
    command += ["--services", "LOW"]
    with served(command, env, port, tmp_path / "serve.log") as base:
        bearer = token(base)
        side = Client(base, bearer)
        status, _, _ = side.call("POST", "/oml/api/py-scripts/v1/scripts", {"name": "sleeper", "script": SLEEPER})
        assert status == 201

        # Three long sync runs take three of the web process's four run slots.
        long_results: list = []
        long_runs = [
            threading.Thread(target=sync_run, args=(base, bearer, LONG_SYNC_SECONDS, long_results)) for _ in range(3)
        ]
        for thread in long_runs:
            thread.start()
        time.sleep(3)

        poller = Client(base, bearer)
        status, headers, _ = poller.call(
            "POST",
            "/oml/api/py-scripts/v2/do-eval/sleeper",
            {"parameters": {"seconds": JOB_SECONDS}, "asyncFlag": True, "comments": "keep-alive"},
        )
        assert status == 201
        job = urlsplit(headers["Location"]).path
        polls, statuses, fourth_results = 0, [], []
        while True:
            time.sleep(POLL_SECONDS)
            status, headers, body = poller.call("GET", job)
            polls += 1
            statuses.append(status)
            if status == 302:
                break
            assert status == 202, body
            assert body["status"] == "job is still running"
            if polls == 5:
                # A short sync run, a token and a listing while long runs hold three slots.
                status, _, body = side.call("POST", "/oml/api/py-scripts/v1/do-eval/sleeper", {})
                assert (status, body) == (200, {"result": 0})
                assert token(base)
                status, _, body = side.call("GET", "/oml/api/py-scripts/v2/scripts/user")
                assert status == 200
                assert "sleeper" in [row["NAME"] for row in body["result"]]  # beside bootstrap's demo scripts
            if polls == 8:
                fourth = threading.Thread(target=sync_run, args=(base, bearer, 20, fourth_results))
                fourth.start()
            if polls == 10:
                # Every slot taken: a sync run gets a clear, prompt 503, never a hang; others are answered.
                started = time.monotonic()
                status, _, body = side.call("POST", "/oml/api/py-scripts/v1/do-eval/sleeper", {})
                assert status == 503, body
                assert body["errorCode"] == 1040
                assert time.monotonic() - started < 30
                status, _, _ = side.call("HEAD", "/oml/api/py-scripts/v2/scripts")
                assert status == 200
                # A base URL with a trailing slash, through gunicorn: served, not an HTML 404.
                status, _, body = side.call("GET", "//oml/api/py-scripts/v2/scripts")
                assert status == 200
                assert "sleeper" in [row["NAME"] for row in body["result"]]
        assert polls >= (JOB_SECONDS - 10) // POLL_SECONDS
        assert set(statuses[:-1]) == {202}
        assert urlsplit(headers["Content-Location"]).path == f"{job}/result"
        status, _, body = poller.call("GET", f"{job}/result")
        assert (status, body) == (200, {"result": JOB_SECONDS, "comments": "keep-alive"})
        # Every poll and the result went over one connection: the server never closed it under the client.
        assert len(poller.local_ports) == 1

        fourth.join(timeout=120)
        assert [(status, body) for status, body, _ in fourth_results] == [(200, {"result": 20})]
        for thread in long_runs:
            thread.join(timeout=LONG_SYNC_SECONDS + 180)
        assert [(status, body) for status, body, _ in long_results] == [(200, {"result": LONG_SYNC_SECONDS})] * 3
        assert all(seconds >= LONG_SYNC_SECONDS for _, _, seconds in long_results)

        # The record agrees: the job SUCCEEDED, and a normal run still succeeds afterwards. A new
        # connection: `side` has been idle longer than the keep-alive (75 s), and was closed, rightly.
        side = Client(base, bearer)
        status, _, body = side.call("GET", "/oml/api/py-scripts/v2/jobs")
        assert status == 200
        [row] = body["result"]
        assert (row["state"], row["status"], row["comments"]) == ("SUCCEEDED", "FINISH", "keep-alive")
        status, _, body = side.call("POST", "/oml/api/py-scripts/v1/do-eval/sleeper", {"parameters": {"seconds": 1}})
        assert (status, body) == (200, {"result": 1})
