"""A chunked request body (Transfer-Encoding: chunked, no Content-Length) is read, never taken as empty.

Django's test client cannot send one, so these go through gunicorn, as production runs it.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts_app.api.middleware import ChunkedBodies

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "chunked-body-password"
BODY_LIMIT = 64 * 1024
SOURCE = "def echo(word='nothing', times=1):\n    return word * times\n"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def gunicorn(tmp_path_factory):
    """gunicorn serving omlweb.wsgi on SQLite in a temporary data folder, with a small body limit."""
    data = tmp_path_factory.mktemp("chunked")
    env = {
        **os.environ,
        "OMLWEB_DATA_DIR": str(data),
        "OMLWEB_MAX_BODY_BYTES": str(BODY_LIMIT),
        "DJANGO_SUPERUSER_USERNAME": "admin",
        "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
    }
    env.pop("DATABASE_URL", None)
    env.pop("CELERY_BROKER_URL", None)
    manage = [sys.executable, str(ROOT / "manage.py")]
    for command in (["migrate", "--no-input"], ["bootstrap"]):
        subprocess.run(manage + command, env=env, cwd=ROOT, check=True, capture_output=True)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "omlweb.wsgi:application", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                status, _ = send(port, "GET", "/oml/api/schema", None)
                if status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "gunicorn did not answer"
            time.sleep(0.3)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)


def send(port: int, method: str, path: str, body: bytes | None, *, token: str | None = None, chunk: int = 7):
    """One request; a body goes chunked (`chunk` bytes a chunk), without Content-Length."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if body is None:
        connection.request(method, path, headers=headers)
    else:
        headers["Content-Type"] = "application/json"
        pieces = (body[i : i + chunk] for i in range(0, len(body), chunk))
        connection.request(method, path, body=pieces, headers=headers, encode_chunked=True)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    is_json = response.getheader("Content-Type", "").startswith("application/json")
    return response.status, json.loads(data) if is_json else data


def token_for(port: int) -> str:
    body = json.dumps({"grant_type": "password", "username": "admin", "password": PASSWORD}).encode()
    status, answer = send(port, "POST", "/omlusers/api/oauth2/v1/token", body)
    assert status == 200, answer
    return answer["accessToken"]


def test_a_chunked_body_is_read_whole(gunicorn):
    """Token, a new script and a run with parameters, each sent chunked: every field arrives."""
    token = token_for(gunicorn)
    script = json.dumps({"name": "echo", "script": SOURCE}).encode()
    status, answer = send(gunicorn, "POST", "/oml/api/py-scripts/v1/scripts", script, token=token)
    assert status == 201, answer
    assert answer["result"]["SCRIPT"] == SOURCE
    run = json.dumps({"parameters": json.dumps({"word": "chunk", "times": 3})}).encode()
    status, answer = send(gunicorn, "POST", "/oml/api/py-scripts/v1/do-eval/echo", run, token=token)
    assert (status, answer) == (200, {"result": "chunkchunkchunk"})


def test_a_chunked_body_over_the_limit_is_413(gunicorn):
    """A chunked body past OMLWEB_MAX_BODY_BYTES is refused with the OML body, and the next request is served."""
    token = token_for(gunicorn)
    big = json.dumps({"parameters": {"word": "x" * (2 * BODY_LIMIT)}}).encode()
    status, answer = send(gunicorn, "POST", "/oml/api/py-scripts/v1/do-eval/echo", big, token=token, chunk=8192)
    assert status == 413
    assert answer["errorCode"] == 1002
    assert str(BODY_LIMIT) in answer["errorMessage"]
    status, answer = send(gunicorn, "GET", "/oml/api/py-scripts", None, token=token)
    assert status == 200, answer


def test_a_server_that_cannot_end_a_chunked_body_answers_411():
    """Under a server that does not mark the body's end (runserver), a chunked body is refused, not read as empty."""
    called = []
    app = ChunkedBodies(lambda environ, start_response: called.append(environ))
    answers = []
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/oml/api/py-scripts/v1/do-eval/echo",
        "HTTP_TRANSFER_ENCODING": "chunked",
        "wsgi.input": io.BytesIO(b'{"parameters": {}}'),
    }
    body = app(environ, lambda status, headers: answers.append(status))
    assert answers == ["411 Length Required"]
    assert json.loads(b"".join(body))["errorCode"] == 1009
    assert called == []
