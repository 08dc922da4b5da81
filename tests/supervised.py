"""`manage.py serve` as an operator runs it, for the supervision and outage tests: start it, find its
children, kill them, call its API, and wait for jobs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.test_serve import ROOT, free_port

ADMIN_PASSWORD = "supervised-password-1"
# Returns its argument after a nap: a job's result says which job it was.
ECHO = "import time\ndef echo(value=0, seconds=0.5):\n    time.sleep(seconds)\n    return {'value': value}\n"
# Fast clocks: heartbeats every 0.2 s, stale after 1.5 s, the reaper every second, probes every second.
FAST = {
    "OMLWEB_HEARTBEAT_SECONDS": "0.2",
    "OMLWEB_HEARTBEAT_STALE_SECONDS": "1.5",
    "OMLWEB_CANCEL_POLL_SECONDS": "0.1",
    "OMLWEB_REAPER_INTERVAL_SECONDS": "1",
    "OMLWEB_REQUEUE_AFTER_SECONDS": "3",
    "OMLWEB_WORKER_PROBE_SECONDS": "1",
    "OMLWEB_WORKER_WEDGED_SECONDS": "4",
    "OMLWEB_RUNNER_PRELOAD": "",
}


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


HTTP = urllib.request.build_opener(NoRedirect)


@dataclass
class Service:
    data_dir: Path
    env: dict
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    token: str = ""

    @classmethod
    def prepare(cls, data_dir: Path, **env) -> Service:
        environment = {
            **os.environ,
            "OMLWEB_DATA_DIR": str(data_dir),
            "DJANGO_SUPERUSER_PASSWORD": ADMIN_PASSWORD,
            # Queues of their own on a shared broker.
            "OMLWEB_QUEUE_PREFIX": f"omlwebsv{uuid.uuid4().hex[:8]}",
            **FAST,
            **env,
        }
        for variable in ("DATABASE_URL", "CELERY_BROKER_URL"):
            if variable not in env:
                environment.pop(variable, None)
        service = cls(data_dir=data_dir, env=environment)
        service.manage("migrate", "--no-input")
        service.manage("createsuperuser", "--no-input", "--username", "admin", "--email", "admin@example.com")
        return service

    def manage(self, *command: str) -> str:
        done = subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), *command],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.data_dir / "serve.log"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def start(self, *options: str) -> None:
        """`manage.py serve` with its test flags, and `options` (say, --no-scheduler)."""
        with self.log.open("a") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "manage.py"),
                    "serve",
                    "--bind",
                    f"127.0.0.1:{self.port}",
                    "--web-workers",
                    "1",
                    *options,
                ],
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.wait_answering(timeout=60)
        self.wait_children_running(timeout=60)

    def stop(self) -> str:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                raise
        return self.log_text()

    # The supervisor's children

    def children(self) -> dict[str, dict]:
        for path in (self.data_dir / "supervisor").glob(f"serve-{self.process.pid}.json"):
            try:
                return {child["name"]: child for child in json.loads(path.read_text())["children"]}
            except ValueError:
                return {}
        return {}

    def wait_children_running(self, timeout: float) -> dict[str, dict]:
        return wait_for(
            lambda: (c := self.children()) and all(child["pid"] for child in c.values()) and c,
            timeout=timeout,
            what="every child of serve to run",
            on=self,
        )

    def kill9(self, name: str) -> int:
        """kill -9 of one child (its main process only, as a crash would), by the pid serve reports."""
        pid = self.children()[name]["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(
            lambda: self.children()[name]["pid"] not in (None, pid),
            timeout=60,
            what=f"{name} to be restarted",
            on=self,
        )
        return pid

    # The API

    def request(self, method: str, path: str, body: dict | None = None, *, token: str | None = None):
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token or self.token:
            headers["Authorization"] = f"Bearer {token or self.token}"
        data = json.dumps(body).encode() if body is not None else None
        url = path if path.startswith("http") else f"{self.base}{path}"
        try:
            response = HTTP.open(urllib.request.Request(url, data=data, headers=headers, method=method), timeout=30)
        except urllib.error.HTTPError as error:
            response = error
        return response.status, dict(response.headers), response.read()

    def answering(self) -> bool:
        try:
            return self.request("GET", "/oml/api/schema")[0] == 200
        except OSError:
            return False

    def wait_answering(self, timeout: float) -> None:
        wait_for(self.answering, timeout=timeout, what="the service to answer", on=self)

    def sign_in(self) -> None:
        status, _, body = self.request(
            "POST",
            "/omlusers/api/oauth2/v1/token",
            {"grant_type": "password", "username": "admin", "password": ADMIN_PASSWORD},
        )
        assert status == 200, body
        self.token = json.loads(body)["accessToken"]

    def add_echo(self) -> None:
        status, _, body = self.request("POST", "/oml/api/py-scripts/v1/scripts", {"name": "echo", "script": ECHO})
        assert status == 201, body

    def submit(self, value: int, seconds: float = 0.5) -> str:
        status, headers, body = self.request(
            "POST",
            "/oml/api/py-scripts/v1/do-eval/echo",
            {"asyncFlag": True, "parameters": json.dumps({"value": value, "seconds": seconds})},
        )
        assert status == 201, body
        return headers["Location"]

    def result(self, location: str) -> dict | None:
        """The job's result body once finished, else None (the web tier may be restarting: None too)."""
        try:
            status, headers, body = self.request("GET", location)
            if status == 202:
                return None
            assert status == 302, body
            status, _, body = self.request("GET", f"{location}/result")
        except OSError:
            return None
        return {"status": status, **json.loads(body)}


def wait_for(predicate, *, timeout: float, what: str, on: Service | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    log = f"\n--- serve ---\n{on.log_text()[-6000:]}" if on else ""
    raise AssertionError(f"Timed out after {timeout:g} s waiting for {what}{log}")


def wait_results(service: Service, jobs: dict[str, int], *, timeout: float) -> dict[str, dict]:
    """Every job's result, waiting up to `timeout` for the slowest."""
    results: dict[str, dict] = {}

    def all_done() -> bool:
        for location in jobs:
            if location not in results and (result := service.result(location)) is not None:
                results[location] = result
        return len(results) == len(jobs)

    wait_for(all_done, timeout=timeout, what=f"{len(jobs) - len(results)} of {len(jobs)} jobs to finish", on=service)
    return results
