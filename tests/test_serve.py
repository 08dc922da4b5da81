"""The README's run command serves the API with a worker, answers Example 1, and stops on Ctrl-C."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.worker


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call(url: str, body: dict, token: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, json.loads(response.read())


def wait_until_serving(base: str, process: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline:
        assert process.poll() is None, "the service exited while starting"
        try:
            urllib.request.urlopen(f"{base}/oml/api/schema", timeout=2)
            return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("the service did not answer within the deadline")


def test_serve_answers_example_1_and_stops_cleanly(tmp_path):
    """manage.py serve: token, Example 1 verbatim, then SIGINT stops gunicorn and the worker."""
    env = {
        **os.environ,
        "OMLWEB_DATA_DIR": str(tmp_path),
        "DJANGO_SUPERUSER_USERNAME": "admin",
        "DJANGO_SUPERUSER_PASSWORD": "example-1-password",
    }
    env.pop("DATABASE_URL", None)
    env.pop("CELERY_BROKER_URL", None)
    manage = [sys.executable, str(ROOT / "manage.py")]
    for command in (["migrate", "--no-input"], ["bootstrap"]):
        subprocess.run(manage + command, env=env, cwd=ROOT, check=True, capture_output=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        manage + ["serve", "--bind", f"127.0.0.1:{port}", "--web-workers", "1"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_serving(base, process, time.monotonic() + 60)
        status, body = call(
            f"{base}/omlusers/api/oauth2/v1/token",
            {"grant_type": "password", "username": "admin", "password": "example-1-password"},
        )
        assert status == 200
        status, body = call(
            f"{base}/oml/api/py-scripts/v1/do-eval/RandomRedDots",
            {"graphicsFlag": True, "service": "LOW"},
            token=body["accessToken"],
        )
        assert status == 200
        [element] = body["result"]
        assert base64.b64decode(element["IMAGE"]).startswith(b"\x89PNG")
        assert json.loads(element["DATA"])[0] == {"id": 1, "val": 0.01}
        assert element["TITLE"] == "Random Red Dots"
        assert element["ID"] == 1
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "omlweb stopped." in output
