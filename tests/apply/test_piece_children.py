"""Several pieces per child: a run's d children take its pieces until none are left (runner.serve_pieces).

These try to break what that promises: a crash, a time-out, a cancel or a memory limit in the middle
of a child's pieces names the piece and never hangs; pieces of one run share a child's /tmp, pieces
of another run never see it; every piece's output is its own.
"""

from __future__ import annotations

import time

from scripts_app.models import Run, Script
from scripts_app.services.execution import execute_run
from scripts_app.services.pipeline import ApplyInput, RunRequest, record_run
from tests.apply.test_endpoints import apply
from tests.factories import make_script

# Each child writes a token of its own in its working directory (its own /tmp when confined, its own
# TMPDIR at the process level) the first time; every piece answers the token it finds.
TOKEN = """
import os, uuid

def token(i):
    path = os.path.join(os.getcwd(), "omlweb-test-token")
    if not os.path.exists(path):
        with open(path, "w") as file:
            file.write(uuid.uuid4().hex)
    print(f"piece {i}")
    with open(path) as file:
        return file.read()
"""


def test_a_child_serves_several_pieces_and_each_piece_prints_its_own(alice, alice_api):
    """8 indexes at degree 2: at most two children (tokens), one of them served several pieces;
    each piece's stdout holds only what it printed."""
    make_script(alice, "token", TOKEN)
    response = apply(alice_api, "index-apply", "token", {"times": 8, "parallelFlag": True, "service": "LOW"})
    assert response.status_code == 200, response.json()
    tokens = response.json()["result"]
    assert len(tokens) == 8
    assert 1 <= len(set(tokens)) <= 2
    run = Run.objects.get()
    assert run.apply_options["degree"] == 2
    for i in range(1, 9):
        assert f"--- index {i} ---\npiece {i}\n" in run.stdout
    assert run.stdout.count("piece ") == 8


def test_pieces_of_one_run_share_tmp_and_the_next_run_does_not_see_it(alice, alice_api):
    """The promise (docs/runner.md): a child's /tmp is shared by the pieces it serves, of one run;
    a new run's children start with an empty /tmp."""
    make_script(alice, "token", TOKEN)
    first = apply(alice_api, "index-apply", "token", {"times": 4}).json()["result"]
    assert len(set(first)) == 1  # degree 1: one child, the token written by piece 1 is read by 2-4
    second = apply(alice_api, "index-apply", "token", {"times": 4}).json()["result"]
    assert len(set(second)) == 1
    assert second[0] != first[0]


def test_a_piece_that_kills_its_child_fails_the_run_naming_it(alice, alice_api):
    """os._exit in the middle of a child's pieces: that piece is named, the pieces before it kept."""
    source = "import os\n\ndef f(i):\n    if i == 3:\n        os._exit(7)\n    return i\n"
    make_script(alice, "f", source)
    started = time.monotonic()
    response = apply(alice_api, "index-apply", "f", {"times": 6})
    assert time.monotonic() - started < 20
    assert response.status_code == 400
    message = response.json()["errorMessage"]
    assert message.startswith("Index 3 failed: The script's process exited with code 7 before giving a result")
    run = Run.objects.get()
    assert run.status == Run.Status.FAILED
    statuses = [piece["status"] for piece in run.pieces]
    assert statuses[:3] == ["SUCCEEDED", "SUCCEEDED", "FAILED"]
    assert set(statuses[3:]) == {"SKIPPED"}


def test_a_piece_killed_by_a_signal_in_a_parallel_run_is_named(alice, alice_api):
    """A segfault of one child while the other keeps taking pieces: the run fails naming the piece.
    (A signal the child sends itself is no test: in its PID namespace it is init, which ignores it.)"""
    source = (
        "import ctypes, time\n\ndef f(i):\n    time.sleep(0.05)\n    if i == 5:\n        ctypes.string_at(0)\n"
        "    return i\n"
    )
    make_script(alice, "f", source)
    response = apply(alice_api, "index-apply", "f", {"times": 12, "parallelFlag": True, "service": "LOW"})
    assert response.status_code == 400
    assert response.json()["errorMessage"].startswith("Index 5 failed: The script's process was killed by SIGSEGV")
    statuses = {piece["key"]: piece["status"] for piece in Run.objects.get().pieces}
    assert statuses[5] == "FAILED"
    assert set(statuses.values()) <= {"SUCCEEDED", "FAILED", "CANCELLED", "SKIPPED"}


def test_a_piece_that_never_ends_times_the_run_out_naming_it(alice, alice_api, settings):
    """A child stuck in its third piece: the run's wall clock ends it; the piece is named, nothing hangs."""
    settings.OMLWEB_RUN_WALL_SECONDS = 3.0
    make_script(alice, "f", "def f(i):\n    while i == 3:\n        pass\n    return i\n")
    started = time.monotonic()
    response = apply(alice_api, "index-apply", "f", {"times": 5})
    assert time.monotonic() - started < 15
    assert response.status_code == 400
    body = response.json()
    assert body["errorCode"] == 1031
    assert body["errorMessage"] == "Index 3 failed: The run exceeded its time limit of 3 seconds"
    run = Run.objects.get()
    assert run.status == Run.Status.TIMED_OUT
    assert [p["status"] for p in run.pieces] == ["SUCCEEDED", "SUCCEEDED", "TIMED_OUT", "SKIPPED", "SKIPPED"]


def test_cancel_in_the_middle_of_a_childs_pieces(alice):
    """Cancelled while one child works through its pieces: the running piece is CANCELLED, those done
    stay SUCCEEDED, the rest are never started."""
    make_script(alice, "sleepy", "import time\n\ndef sleepy(i):\n    time.sleep(0.4)\n    return i\n")
    run = record_run(
        RunRequest(
            kind=Run.Kind.INDEX_APPLY,
            script=Script.objects.get(name="sleepy"),
            user=alice,
            apply_input=ApplyInput(times=20),
            parameters={},
        )
    )
    started = time.monotonic()
    execute_run(run, is_cancelled=lambda: time.monotonic() - started > 1.5)
    run.refresh_from_db()
    assert time.monotonic() - started < 10
    assert run.status == Run.Status.CANCELLED
    statuses = [piece["status"] for piece in run.pieces]
    assert "SUCCEEDED" in statuses
    assert statuses.count("CANCELLED") == 1
    assert statuses[statuses.index("CANCELLED") + 1 :] == ["SKIPPED"] * (19 - statuses.index("CANCELLED"))


def test_the_memory_limit_is_each_childs_across_its_pieces(alice, alice_api, settings):
    """The memory limit bounds a child, whatever piece it serves: memory a piece keeps (here in a
    module of the interpreter) counts against the next ones; the piece that goes over is named."""
    settings.OMLWEB_RUN_MEMORY_MB = 512
    source = (
        "import sys\n\n"
        "def f(i):\n"
        "    kept = sys.modules['sys'].__dict__.setdefault('omlweb_test_kept', [])\n"
        "    kept.append(bytearray(150 * 1024 * 1024))\n"
        "    return len(kept)\n"
    )
    make_script(alice, "hog", source)
    response = apply(alice_api, "index-apply", "hog", {"times": 6})
    assert response.status_code == 400
    body = response.json()
    assert body["errorCode"] == 1033, body
    assert body["errorMessage"].startswith(("Index 3 failed: Memory limit of 512 MB", "Index 4 failed: Memory limit"))
    statuses = [piece["status"] for piece in Run.objects.get().pieces]
    assert statuses[:2] == ["SUCCEEDED", "SUCCEEDED"]

    # A run that keeps nothing runs every piece in one child within the same limit.
    make_script(alice, "fair", source.replace("kept.append(", "del kept[:]; kept.append(").replace("len(kept)", "i"))
    assert apply(alice_api, "index-apply", "fair", {"times": 6}).json() == {"result": [1, 2, 3, 4, 5, 6]}


def test_rows_reach_each_piece_of_a_child_whole(alice, alice_api, alice_iris, iris):
    """Chunks of 2 rows through one child: every chunk gets exactly its rows, in order."""
    make_script(alice, "rows", "def rows(df):\n    return [list(df['SEPAL_LENGTH'])]\n")
    body = {"input": "select * from IRIS", "rows": 2, "parameters": '{"oml_input_type":"pandas.DataFrame"}'}
    response = apply(alice_api, "row-apply", "rows", body)
    assert response.status_code == 200, response.json()
    chunks = response.json()["result"]
    expected = list(iris.SEPAL_LENGTH)
    assert chunks == [expected[i : i + 2] for i in range(0, len(expected), 2)]


def test_without_a_warm_template_each_piece_is_one_job(alice, alice_api, alice_iris, iris):
    """The cold mode has no template to fork children from: each piece runs as one job, as before."""
    from scripts_app import runner

    make_script(alice, "count", "def count(df):\n    return len(df)\n")
    runner.configure(mode="cold")
    try:
        body = {"input": "select * from IRIS", "rows": 8, "parameters": '{"oml_input_type":"pandas.DataFrame"}'}
        response = apply(alice_api, "row-apply", "count", {**body, "parallelFlag": True})
    finally:
        runner.configure(mode="zygote")
    assert response.status_code == 200, response.json()
    assert response.json() == {"result": [8, 8, len(iris) - 16]}


BURN = """
import time

def burn(i):
    end = time.process_time() + (60 if i == 4 else 0.8)
    while time.process_time() < end:
        pass
    return i
"""


def test_each_piece_has_its_own_cpu_seconds_in_a_shared_child(alice, alice_api, settings):
    """The CPU limit stays each piece's: three pieces of 0.8 s in one child pass a 2-second limit
    together; the fourth, which burns on, is named with the CPU limit."""
    settings.OMLWEB_RUN_CPU_SECONDS = 2
    settings.OMLWEB_RUN_WALL_SECONDS = 60.0
    make_script(alice, "burn", BURN)
    response = apply(alice_api, "index-apply", "burn", {"times": 4})
    assert response.status_code == 400
    body = response.json()
    assert body["errorMessage"].startswith("Index 4 failed: The run used more than its CPU time limit of 2 seconds")
    assert [p["status"] for p in Run.objects.get().pieces] == ["SUCCEEDED", "SUCCEEDED", "SUCCEEDED", "TIMED_OUT"]
