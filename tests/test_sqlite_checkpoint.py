"""SQLite's WAL checkpoint, taken off the request that stored a large value (omlweb/sqlite_checkpoint.py):
the connections' own checkpoint stays as a backstop, so a checkpointer that fails or never runs cannot
let the WAL grow without bound, and no committed value is lost either way."""

from __future__ import annotations

import os
import sqlite3
import time

import pytest

from omlweb import sqlite_checkpoint
from omlweb.env import database
from scripts_app.models import Run
from tests.factories import make_script

VALUE = "[" + ",".join(f'{{"id":{i},"name":"row{i}","x":{i / 7}}}' for i in range(20_000)) + "]"  # ~0.8 MB
WAL_FRAME = 4096 + 24


def connect(path, init_command: str) -> sqlite3.Connection:
    """A connection opened as Django opens omlweb's: the same PRAGMAs."""
    connection = sqlite3.connect(path, isolation_level=None)
    for pragma in init_command.split(";"):
        if pragma.strip():
            connection.execute(pragma)
    return connection


def store(connection: sqlite3.Connection, count: int, after=lambda: None) -> list[int]:
    ids = []
    for _ in range(count):
        connection.execute("BEGIN IMMEDIATE")
        ids.append(connection.execute("INSERT INTO run (result_json) VALUES (?)", (VALUE,)).lastrowid)
        connection.execute("COMMIT")
        after()
    return ids


@pytest.fixture
def options(tmp_path):
    config = database("", tmp_path)
    connection = connect(config["NAME"], config["OPTIONS"]["init_command"])
    connection.execute("CREATE TABLE run (id INTEGER PRIMARY KEY, result_json TEXT)")
    yield config, connection
    connection.close()


def test_connections_keep_their_own_checkpoint_as_the_backstop(options):
    config, connection = options
    assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert connection.execute("PRAGMA wal_autocheckpoint").fetchone() == (sqlite_checkpoint.BACKSTOP_PAGES,)


def test_the_wal_stays_bounded_when_the_checkpointer_fails(options, monkeypatch, caplog):
    """The checkpointer's connection fails every time: the commits' backstop bounds the WAL, and every value
    committed reads back whole."""
    config, connection = options

    def broken(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(sqlite_checkpoint.sqlite3, "connect", broken)
    checkpointer = sqlite_checkpoint.Checkpointer(config["NAME"], threshold=1)
    ids = store(connection, 60, after=lambda: checkpointer.checkpoint())  # ~50 MB through the WAL
    assert checkpointer.checkpoints == 0
    assert "checkpoint of" in caplog.text
    wal = os.path.getsize(config["NAME"] + "-wal")
    # At most the backstop's pages plus the one transaction that crossed it.
    assert wal <= (sqlite_checkpoint.BACKSTOP_PAGES + len(VALUE) // 4096 + 10) * WAL_FRAME
    monkeypatch.undo()
    reader = sqlite3.connect(config["NAME"])
    assert [row[0] == VALUE for row in reader.execute("SELECT result_json FROM run ORDER BY id")] == [True] * 60
    assert [row[0] for row in reader.execute("SELECT id FROM run ORDER BY id")] == ids
    reader.close()


def test_the_checkpointer_keeps_the_wal_small(options):
    """With the backstop out of the way, the checkpointer's own checkpoints keep the WAL at about one value."""
    config, connection = options
    connection.execute("PRAGMA wal_autocheckpoint=0")
    checkpointer = sqlite_checkpoint.Checkpointer(config["NAME"])
    store(connection, 20, after=checkpointer.checkpoint)
    assert checkpointer.checkpoints == 20
    assert os.path.getsize(config["NAME"] + "-wal") <= 3 * len(VALUE)
    # Without it the same writes grow the WAL past them all.
    store(connection, 20)
    assert os.path.getsize(config["NAME"] + "-wal") >= 20 * len(VALUE)


def test_the_thread_checkpoints_once_enough_is_stored(options):
    config, connection = options
    checkpointer = sqlite_checkpoint.Checkpointer(config["NAME"], threshold=2 * len(VALUE))
    store(connection, 1)
    checkpointer.stored(len(VALUE))
    assert checkpointer.thread is None  # below the threshold: nothing to do yet
    store(connection, 1)
    checkpointer.stored(len(VALUE))
    deadline = time.monotonic() + 30
    while checkpointer.checkpoints == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert checkpointer.checkpoints == 1
    assert checkpointer.thread is not None
    assert checkpointer.thread.daemon


def test_a_run_tells_the_checkpointer_what_it_stored_after_its_commit(
    alice, alice_api, monkeypatch, django_capture_on_commit_callbacks
):
    """The recorder hands the stored bytes over once the outcome is committed (never before: a rolled-back
    outcome stored nothing). A non-ASCII value counts its UTF-8 bytes."""
    told: list[int] = []
    monkeypatch.setattr(sqlite_checkpoint, "stored", told.append)
    make_script(alice, "value", "def value():\n    return ['h\\u00e9llo \\u2603'] * 1000\n")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = alice_api.post("/oml/api/py-scripts/v1/do-eval/value", {}, format="json")
        assert response.status_code == 200
        assert told == []
    for callback in callbacks:
        callback()
    run = Run.objects.get()
    assert run.stored_bytes == len(run.result_json.encode()) + len(run.stdout.encode()) > len(run.result_json)
    assert told == [run.stored_bytes]
