"""The README's run command on the embedded defaults runs async jobs, and a restart of it loses none."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.test_serve import ROOT, free_port, wait_until_serving

pytestmark = pytest.mark.worker

SLEEPER = "import time\ndef sleeper(seconds=0):\n    time.sleep(seconds)\n    return seconds\n"


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


HTTP = urllib.request.build_opener(NoRedirect)


def request(method: str, url: str, token: str | None = None, body: dict | None = None):
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    try:
        response = HTTP.open(urllib.request.Request(url, data=data, headers=headers, method=method), timeout=60)
    except urllib.error.HTTPError as error:
        response = error
    return response.status, dict(response.headers), response.read()


def serve(env: dict, port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "serve", "--bind", f"127.0.0.1:{port}", "--web-workers", "1"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_until_serving(f"http://127.0.0.1:{port}", process, time.monotonic() + 60)
    return process


def stop(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=90)
    assert process.returncode == 0, output
    return output


def test_async_jobs_survive_a_restart_of_everything(tmp_path):
    """Jobs submitted to `manage.py serve` (one running, more queued) all finish after it is stopped
    (Ctrl-C) and started again, each exactly once, and their results come back."""
    env = {
        **os.environ,
        "OMLWEB_DATA_DIR": str(tmp_path),
        "DJANGO_SUPERUSER_USERNAME": "admin",
        "DJANGO_SUPERUSER_PASSWORD": "restart-password-1",
        "OMLWEB_RUNNER_PRELOAD": "",
        "OMLWEB_LOW_CONCURRENCY": "1",
    }
    for variable in ("DATABASE_URL", "CELERY_BROKER_URL"):
        env.pop(variable, None)
    manage = [sys.executable, str(ROOT / "manage.py")]
    for command in (["migrate", "--no-input"], ["bootstrap"]):
        subprocess.run(manage + command, env=env, cwd=ROOT, check=True, capture_output=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = serve(env, port)
    output = ""
    try:
        status, _, body = request(
            "POST",
            f"{base}/omlusers/api/oauth2/v1/token",
            body={"grant_type": "password", "username": "admin", "password": "restart-password-1"},
        )
        token = json.loads(body)["accessToken"]
        status, _, _ = request(
            "POST", f"{base}/oml/api/py-scripts/v1/scripts", token, {"name": "sleeper", "script": SLEEPER}
        )
        assert status == 201
        locations = []
        for _ in range(4):
            status, headers, body = request(
                "POST",
                f"{base}/oml/api/py-scripts/v1/do-eval/sleeper",
                token,
                {"asyncFlag": True, "parameters": '{"seconds": 1}'},
            )
            assert (status, body) == (201, b"")
            locations.append(headers["Location"])
        assert all(location.startswith(f"{base}/oml/api/py-scripts/v1/jobs/") for location in locations)
        output += stop(process)

        process = serve(env, port)
        deadline = time.monotonic() + 90
        for location in locations:
            while True:
                status, headers, body = request("GET", location, token)
                if status == 302:
                    break
                assert status == 202, body
                assert time.monotonic() < deadline, f"{location} still not finished after the restart"
                time.sleep(0.2)
            assert headers["Content-Location"] == f"{location}/result"
            status, _, body = request("GET", f"{location}/result", token)
            assert (status, json.loads(body)) == (200, {"result": 1})
    finally:
        output += stop(process)
    assert "omlweb stopped." in output
