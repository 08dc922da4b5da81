"""The Python client and the `omlweb` command, against the real service (gunicorn and a LOW worker)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from rest_framework.test import APIClient

from omlweb_client.api import ENDPOINTS
from tests.served import PASSWORD, ROOT, free_port, served, service_env

DRAWING = """import matplotlib.pyplot as plt

def drawing(n=3):
    plt.figure()
    plt.plot(range(n))
    plt.title("a line")
    return {"n": n}
"""
SLOW = "import time\n\ndef slow(seconds=1):\n    time.sleep(seconds)\n    return seconds\n"


def test_every_call_of_the_client_is_in_the_openapi_document(db):
    """The client's paths, methods and operation ids are those the served document declares."""
    document = APIClient().get("/oml/api/schema?format=json").json()
    for operation_id, (method, path) in ENDPOINTS.items():
        assert path in document["paths"], path
        assert document["paths"][path][method.lower()]["operationId"] == operation_id


@pytest.mark.worker
def test_the_command_logs_in_pushes_runs_and_fetches_through_the_real_service(tmp_path):
    """login, push a .py file, run it sync with figures to files, as a job with progress, list, fetch."""
    env = service_env(tmp_path / "service", OMLWEB_LOW_CONCURRENCY="1")
    port = free_port()
    command = [sys.executable, str(ROOT / "manage.py"), "serve", "--bind", f"127.0.0.1:{port}"]
    command += ["--web-workers", "1", "--services", "LOW"]
    config = tmp_path / "client" / "credentials.json"
    client_env = {**os.environ, "OMLWEB_CONFIG": str(config), "OMLWEB_PASSWORD": PASSWORD}

    def omlweb(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(ROOT / "bin" / "omlweb"), *args], env=client_env, capture_output=True, text=True, timeout=300
        )

    (tmp_path / "drawing.py").write_text(DRAWING)
    (tmp_path / "slow.py").write_text(SLOW)
    with served(command, env, port, tmp_path / "serve.log") as base:
        done = omlweb("login", "--url", base + "/", "--username", "admin")
        assert done.returncode == 0, done.stderr
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        assert json.loads(config.read_text())["url"] == base

        done = omlweb("push", str(tmp_path / "drawing.py"))
        assert (done.returncode, done.stdout.strip()) == (0, "Pushed admin/drawing, version 1."), done.stderr
        assert omlweb("push", str(tmp_path / "slow.py")).returncode == 0

        out = tmp_path / "out"
        done = omlweb("run", "drawing", "-p", "n=5", "--graphics", "--out", str(out))
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"n": 5}
        assert (out / "drawing-1.png").read_bytes().startswith(b"\x89PNG")
        assert json.loads((out / "drawing.json").read_text()) == {"n": 5}

        done = omlweb("run", "slow", "-p", "seconds=6", "--async", "--service", "LOW")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == 6
        assert "job is still running" in done.stderr  # the progress display
        job_id = done.stderr.split("job ", 1)[1].split()[0]

        done = omlweb("runs")
        assert done.returncode == 0, done.stderr
        assert job_id in done.stdout
        assert "SUCCEEDED" in done.stdout

        done = omlweb("result", job_id, "--out", str(out))
        assert (done.returncode, json.loads(done.stdout)) == (0, 6)
        assert json.loads((out / f"{job_id}.json").read_text()) == 6

        done = omlweb("run", "missing")
        assert done.returncode == 1
        assert "404 (error 1020)" in done.stderr
