"""The real service for tests that talk HTTP to it: gunicorn with omlweb's config, on a fresh data dir."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "served-test-password"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """A fresh service: SQLite and the file broker in `data_dir`, an admin named admin."""
    env = {
        **os.environ,
        "OMLWEB_DATA_DIR": str(data_dir),
        "DJANGO_SUPERUSER_USERNAME": "admin",
        "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
        **settings,
    }
    env.pop("DATABASE_URL", None)
    env.pop("CELERY_BROKER_URL", None)
    manage = [sys.executable, str(ROOT / "manage.py")]
    for command in (["migrate", "--no-input"], ["bootstrap"]):
        subprocess.run(manage + command, env=env, cwd=ROOT, check=True, capture_output=True)
    return env


@contextlib.contextmanager
def served(command: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[str]:
    """Run `command` (gunicorn or manage.py serve) until the API answers; yield its base URL; stop it."""
    base = f"http://127.0.0.1:{port}"
    with log.open("w") as output:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 90
            while True:
                assert process.poll() is None, f"the service exited while starting:\n{log.read_text()}"
                try:
                    urllib.request.urlopen(f"{base}/oml/api/py-scripts", timeout=2)
                except urllib.error.HTTPError:
                    break  # a 401 is an answer
                except OSError:
                    assert time.monotonic() < deadline, f"the service did not start:\n{log.read_text()}"
                    time.sleep(0.3)
                else:
                    break
            yield base
        finally:
            process.terminate()
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def gunicorn_command(port: int, *, workers: int = 1, threads: int | None = None) -> list[str]:
    """gunicorn exactly as `manage.py serve` configures it (omlweb/gunicorn_conf.py)."""
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "omlweb.wsgi:application",
        "--config",
        "python:omlweb.gunicorn_conf",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
    ]
    if threads is not None:
        command += ["--threads", str(threads)]
    return command


def token(base: str, username: str = "admin", password: str = PASSWORD) -> str:
    body = json.dumps({"grant_type": "password", "username": username, "password": password}).encode()
    request = urllib.request.Request(
        f"{base}/omlusers/api/oauth2/v1/token", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["accessToken"]
