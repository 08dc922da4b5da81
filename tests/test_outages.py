"""The database and the broker stop and start again under `manage.py serve`, with jobs in flight.

A PostgreSQL cluster and a Redis server of this test's own, on free ports, are stopped and started
again (never the machine's shared ones). What users see is asserted; how long recovery took is printed
(the issue's numbers: the first job after a dependency returns finishes within 15 s).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.supervised import Service, wait_for, wait_results
from tests.test_serve import free_port

pytestmark = pytest.mark.worker

POSTGRES_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
REDIS_SERVER = shutil.which("redis-server")
# initdb refuses to run as root: the cluster then belongs to nobody.
AS_NOBODY = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []


class Postgres:
    """A throwaway PostgreSQL cluster in a temporary folder, trusting local connections."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="omlweb-pg-"))
        self.folder.chmod(0o755)
        if AS_NOBODY:
            shutil.chown(self.folder, "nobody", "nogroup")
        self.port = free_port()
        self.bin = Path(POSTGRES_BIN[-1])
        self.run("initdb", "-D", str(self.folder / "data"), "-U", "postgres", "--auth=trust", "--no-sync")

    def run(self, program: str, *args: str) -> None:
        subprocess.run([*AS_NOBODY, str(self.bin / program), *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        data, log = str(self.folder / "data"), str(self.folder / "log")
        self.run("pg_ctl", "-D", data, "-o", options, "-l", log, "-w", "start")

    def stop(self) -> None:
        """As a crash or a pulled cable would: immediately, clients' connections cut."""
        self.run("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop")

    def url(self, name: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def remove(self) -> None:
        subprocess.run(
            [*AS_NOBODY, str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(self.folder, ignore_errors=True)


class Redis:
    """A throwaway Redis server without persistence: a restart loses every message, as a crash would."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        wait_for(self.answering, timeout=30, what="redis-server to start")

    def answering(self) -> bool:
        import socket

        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture
def postgres():
    if not POSTGRES_BIN:
        pytest.skip("PostgreSQL's initdb is not installed (/usr/lib/postgresql/*/bin)")
    cluster = Postgres()
    cluster.start()
    subprocess.run(
        [str(cluster.bin / "createdb"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres", "omlweb"],
        check=True,
        capture_output=True,
    )
    yield cluster
    cluster.remove()


@pytest.fixture
def redis():
    if not REDIS_SERVER:
        pytest.skip("redis-server is not installed")
    server = Redis()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def service(tmp_path, postgres, redis):
    service = Service.prepare(
        tmp_path,
        DATABASE_URL=postgres.url("omlweb"),
        CELERY_BROKER_URL=redis.url,
        OMLWEB_LOW_CONCURRENCY="1",
        OMLWEB_MEDIUM_CONCURRENCY="0",
        OMLWEB_HIGH_CONCURRENCY="0",
    )
    service.start()
    service.sign_in()
    service.add_echo()
    yield service
    service.stop()


def sync_run(service: Service, value: int) -> tuple[int, dict]:
    status, _, body = service.request(
        "POST", "/oml/api/py-scripts/v1/do-eval/echo", {"parameters": json.dumps({"value": value, "seconds": 0})}
    )
    return status, json.loads(body)


def first_job_after(service: Service, value: int, *, timeout: float = 60) -> float:
    """Submit until the service accepts, then wait for that job: seconds from now until it finished."""
    began = time.monotonic()
    location = wait_for(lambda: _try_submit(service, value), timeout=timeout, what="a submission to be accepted")
    assert wait_results(service, {location: value}, timeout=timeout)[location]["result"] == {"value": value}
    return time.monotonic() - began


def _try_submit(service: Service, value: int) -> str | None:
    try:
        status, headers, _ = service.request(
            "POST",
            "/oml/api/py-scripts/v1/do-eval/echo",
            {"asyncFlag": True, "parameters": json.dumps({"value": value, "seconds": 0})},
        )
    except OSError:
        return None
    return headers["Location"] if status == 201 else None


def test_the_broker_stops_and_comes_back(service: Service, redis: Redis):
    """Broker down: async submissions get a JSON 503 (1043), sync runs go on, the status endpoint says
    so at once; back: submissions are accepted again and the jobs in flight when it stopped finish."""
    in_flight = {service.submit(value, seconds=1): value for value in range(3)}
    wait_for(lambda: _running(service), timeout=60, what="a job to run", on=service)
    redis.stop()
    stopped = time.monotonic()

    status, headers, body = service.request(
        "POST", "/oml/api/py-scripts/v1/do-eval/echo", {"asyncFlag": True, "parameters": '{"value": 99}'}
    )
    refused_after = time.monotonic() - stopped
    assert status == 503, body
    assert json.loads(body)["errorCode"] == 1043
    assert headers["Retry-After"] == "10"
    assert sync_run(service, 5) == (200, {"result": {"value": 5}})
    asked = time.monotonic()
    status, _, body = service.request("GET", "/oml/api/admin/status")
    status_seconds = time.monotonic() - asked
    assert status == 200
    body = json.loads(body)
    assert body["brokerAvailable"] is False
    assert "Error" in body["brokerError"]
    # Nothing was recorded for the refused job: only the three in flight are jobs.
    status, _, body = service.request("GET", "/oml/api/py-scripts/v2/jobs")
    assert len(json.loads(body)["result"]) == 3

    time.sleep(3)
    redis.start()
    first = first_job_after(service, 100)
    results = wait_results(service, in_flight, timeout=90)
    for location, value in in_flight.items():
        assert results[location] == {"status": 200, "result": {"value": value}}
    assert json.loads(service.request("GET", "/oml/api/admin/status")[2])["brokerAvailable"] is True
    print(
        f"\nbroker down: async refused in {refused_after:.2f} s, status answered in {status_seconds:.2f} s; "
        f"back: first job finished {first:.1f} s after the broker returned"
    )


def test_the_database_stops_and_comes_back(service: Service, postgres: Postgres):
    """Database down: API calls get a JSON 503 (1042), pages a plain 503 page, the workers and the reaper
    wait; back: everything answers again by itself and the jobs in flight finish."""
    in_flight = {service.submit(value, seconds=1): value for value in range(3)}
    wait_for(lambda: _running(service), timeout=60, what="a job to run", on=service)
    postgres.stop()

    status, headers, body = service.request(
        "POST",
        "/omlusers/api/oauth2/v1/token",
        {"grant_type": "password", "username": "admin", "password": "whatever-it-is"},
        token="-",
    )
    assert status == 503, body
    assert json.loads(body) == {
        "errorMessage": "The database is unavailable: the service can neither read nor record anything. "
        "Try again shortly.",
        "errorCode": 1042,
    }
    assert headers["Retry-After"] == "10"
    status, _, body = service.request("GET", "/oml/api/py-scripts/v1/scripts")
    assert (status, json.loads(body)["errorCode"]) == (503, 1042)
    page = _page(service, "/", cookie="sessionid=a-session-the-database-must-be-asked-about")
    assert page[0] == 503
    assert "Service unavailable" in page[1]
    assert service.process.poll() is None

    time.sleep(3)
    postgres.start()
    first = first_job_after(service, 100)
    results = wait_results(service, in_flight, timeout=90)
    for location, value in in_flight.items():
        assert results[location] == {"status": 200, "result": {"value": value}}
    log = service.log_text()
    assert log.count("Reaper pass failed") <= 2, "the reaper repeats the same error on every pass"
    print(f"\ndatabase back: first job finished {first:.1f} s after it returned")


def _running(service: Service) -> bool:
    status, _, body = service.request("GET", "/oml/api/py-scripts/v2/jobs")
    return status == 200 and any(row["state"] == "RUNNING" for row in json.loads(body)["result"])


def _page(service: Service, path: str, *, cookie: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{service.base}{path}", headers={"Cookie": cookie})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_serve_starts_with_the_broker_down_and_says_so(tmp_path):
    """First start with no broker: serve starts anyway, says what is missing, refuses async jobs with a
    503 and runs sync ones; once a broker appears, jobs run without a restart."""
    if not REDIS_SERVER:
        pytest.skip("redis-server is not installed")
    redis = Redis()  # its port is free: nothing answers there yet
    service = Service.prepare(
        tmp_path,
        CELERY_BROKER_URL=redis.url,
        OMLWEB_LOW_CONCURRENCY="1",
        OMLWEB_MEDIUM_CONCURRENCY="0",
        OMLWEB_HIGH_CONCURRENCY="0",
    )
    service.start()
    try:
        assert "The broker (redis) does not answer" in service.log_text()
        service.sign_in()
        service.add_echo()
        status, _, body = service.request(
            "POST", "/oml/api/py-scripts/v1/do-eval/echo", {"asyncFlag": True, "parameters": '{"value": 1}'}
        )
        assert (status, json.loads(body)["errorCode"]) == (503, 1043)
        assert sync_run(service, 2) == (200, {"result": {"value": 2}})
        redis.start()
        first = first_job_after(service, 3, timeout=90)
        print(f"\nbroker appeared: first job finished {first:.1f} s later")
    finally:
        service.stop()
        redis.stop()
