"""Scripts that try to break the service, through do-eval: each gets its own clear error, the service
keeps serving, and the next run succeeds."""

from __future__ import annotations

import json

import pytest
from django.conf import settings as django_settings

from scripts_app.models import Run
from tests.factories import make_script

HEALTHY = "def healthy():\n    return 'still here'\n"


@pytest.fixture
def tight_limits(settings):
    settings.OMLWEB_RUN_WALL_SECONDS = 3.0
    settings.OMLWEB_RUN_CPU_SECONDS = 1
    settings.OMLWEB_RUN_MEMORY_MB = 1024
    settings.OMLWEB_RUN_MAX_PROCESSES = 32
    settings.OMLWEB_RUN_MAX_FILE_MB = 10
    settings.OMLWEB_RUN_MAX_STREAM_KB = 64
    return settings


def attack(api, owner, source: str):
    make_script(owner, "attack", source)
    response = api.post("/oml/api/py-scripts/v1/do-eval/attack", {}, format="json")
    make_script(owner, "healthy", HEALTHY, overwrite=True)
    after = api.post("/oml/api/py-scripts/v1/do-eval/healthy", {}, format="json")
    assert after.json() == {"result": "still here"}, "the next run must succeed"
    return response


@pytest.mark.parametrize(
    ("source", "code", "status"),
    [
        ("import time\ndef attack():\n    time.sleep(10**6)\n", 1031, Run.Status.TIMED_OUT),
        ("def attack():\n    while True:\n        pass\n", 1032, Run.Status.TIMED_OUT),
        ("def attack():\n    return bytearray(50 * 1024**3)\n", 1033, Run.Status.FAILED),
        (
            "def attack():\n    with open('big', 'wb') as f:\n        for _ in range(100):\n"
            "            f.write(b'x' * 1024**2)\n",
            1035,
            Run.Status.FAILED,
        ),
        ("def attack():\n    return list(range(10**6))\n", 1024, Run.Status.FAILED),
    ],
    ids=["sleeps-forever", "spins-the-cpu", "allocates-50-GB", "writes-a-huge-file", "returns-a-huge-list"],
)
def test_limit_attacks_get_their_own_error(alice, alice_api, tight_limits, source, code, status):
    """Each limit, when hit, gives its own error code and run status."""
    if code == 1032:
        # One CPU second may take many wall seconds on a loaded machine: the clock must not win.
        tight_limits.OMLWEB_RUN_WALL_SECONDS = 60.0
    response = attack(alice_api, alice, source)
    assert response.status_code == 400
    assert response.json()["errorCode"] == code, response.json()
    assert Run.objects.filter(script_name="attack").get().status == status


def test_fork_bomb_is_contained(alice, alice_api, tight_limits):
    """Forking without end hits the process limit (or the clock); the host survives."""
    source = "import os\ndef attack():\n    while True:\n        os.fork()\n"
    response = attack(alice_api, alice, source)
    assert response.status_code == 400
    assert response.json()["errorCode"] in (1034, 1031, 1038), response.json()


def test_printing_gigabytes_is_cut_and_the_run_succeeds(alice, alice_api, tight_limits):
    """Printing without end keeps the first bytes with a visible marker; the run itself still succeeds."""
    source = (
        "import sys\ndef attack():\n    line = 'x' * 1023 + '\\n'\n"
        "    for _ in range(200 * 1024):\n        sys.stdout.write(line)\n    return 'done'\n"
    )
    response = attack(alice_api, alice, source)
    assert response.json() == {"result": "done"}
    run = Run.objects.get(script_name="attack")
    assert len(run.stdout) < 80 * 1024
    assert "output cut at" in run.stdout


def test_the_environment_holds_no_secret(alice, alice_api, monkeypatch):
    """/proc/self/environ and the parent's environ hold none of the service's secrets."""
    monkeypatch.setenv("DJANGO_SECRET_KEY", "s3cr3t-in-the-service")
    monkeypatch.setenv("DATABASE_URL", "postgres://user:hunter2@db/x")
    source = (
        "import os\n"
        "def attack():\n"
        "    seen = repr(dict(os.environ))\n"
        "    for path in ('/proc/self/environ', f'/proc/{os.getppid()}/environ', '/proc/1/environ'):\n"
        "        try:\n"
        "            seen += open(path, 'rb').read().decode(errors='replace')\n"
        "        except OSError as e:\n"
        "            seen += repr(e)\n"
        "    return seen\n"
    )
    response = attack(alice_api, alice, source)
    seen = response.json()["result"]
    assert "s3cr3t-in-the-service" not in seen
    assert "hunter2" not in seen
    assert str(django_settings.SECRET_KEY) not in seen


def test_the_database_file_cannot_be_read(alice, alice_api):
    """The service's database file and data folder are out of a run's reach."""
    from django.db import connection

    database = connection.settings_dict["NAME"]
    source = (
        "def attack(paths):\n"
        "    found = []\n"
        "    for path in paths:\n"
        "        try:\n"
        "            with open(path, 'rb') as f:\n"
        "                found.append(len(f.read(100)))\n"
        "        except OSError as e:\n"
        "            found.append(type(e).__name__)\n"
        "    return found\n"
    )
    make_script(alice, "attack", source)
    paths = [str(database), str(django_settings.DATA_DIR / "secret_key")]
    response = alice_api.post(
        "/oml/api/py-scripts/v1/do-eval/attack", {"parameters": json.dumps({"paths": paths})}, format="json"
    )
    assert all(isinstance(item, str) for item in response.json()["result"]), response.json()


def test_no_network_by_default(alice, alice_api):
    """A socket to 127.0.0.1 fails: runs have no network unless the setting allows it."""
    source = (
        "import socket\n"
        "def attack():\n"
        "    try:\n"
        "        socket.create_connection(('127.0.0.1', 8000), timeout=2)\n"
        "    except OSError as e:\n"
        "        return type(e).__name__ + ': ' + str(e)\n"
        "    return 'connected'\n"
    )
    response = attack(alice_api, alice, source)
    assert response.json()["result"] != "connected"
