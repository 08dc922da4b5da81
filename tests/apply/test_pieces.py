"""Pieces of an apply run: they overlap in time when parallel, a failing one is named, control arguments."""

from __future__ import annotations

import base64
import datetime
import json

from scripts_app.models import Run, RunImage
from tests.apply.test_endpoints import apply
from tests.factories import make_script

SLEEPY = "import time\n\ndef sleepy(i):\n    time.sleep(1.5)\n    return i\n"


def _spans(run: Run) -> list[tuple[datetime.datetime, datetime.datetime]]:
    return [
        (datetime.datetime.fromisoformat(p["started_at"]), datetime.datetime.fromisoformat(p["finished_at"]))
        for p in run.pieces
    ]


def test_parallel_pieces_overlap_in_time(alice, alice_api):
    """With parallelFlag at LOW, two pieces run at once: each starts before the other finishes."""
    make_script(alice, "sleepy", SLEEPY)
    response = apply(alice_api, "index-apply", "sleepy", {"times": 2, "parallelFlag": True, "service": "LOW"})
    assert response.json() == {"result": [1, 2]}
    (start1, end1), (start2, end2) = _spans(Run.objects.get())
    assert start1 < end2
    assert start2 < end1


def test_without_parallel_flag_pieces_run_one_after_another(alice, alice_api):
    """Without parallelFlag the pieces run in sequence: the second starts after the first ended."""
    make_script(alice, "sleepy", SLEEPY.replace("1.5", "0.2"))
    response = apply(alice_api, "index-apply", "sleepy", {"times": 2})
    assert response.json() == {"result": [1, 2]}
    run = Run.objects.get()
    (_, end1), (start2, _) = _spans(run)
    assert end1 <= start2
    assert run.apply_options["degree"] == 1


def test_parallel_is_capped_by_the_service_level(alice, alice_api):
    """parallel=6 at MEDIUM behaves as 4, as Oracle; LOW caps at 2."""
    make_script(alice, "ident", "def ident(i):\n    return i\n")
    apply(alice_api, "index-apply", "ident", {"times": 8, "parallelFlag": True, "parallel": 6, "service": "MEDIUM"})
    apply(alice_api, "index-apply", "ident", {"times": 8, "parallel": 3, "service": "LOW"})
    degrees = [run.apply_options["degree"] for run in Run.objects.order_by("created_at")]
    assert degrees == [4, 2]


def test_a_failing_index_fails_the_run_naming_it(alice, alice_api):
    """One failing piece fails the run: 400 whose message names the index; the run records it."""
    make_script(alice, "picky", "def picky(i):\n    if i == 3:\n        raise ValueError('three')\n    return i\n")
    response = apply(alice_api, "index-apply", "picky", {"times": 4})
    assert response.status_code == 400
    body = response.json()
    assert body["errorCode"] == 1030
    assert body["errorMessage"].startswith("Index 3 failed: ValueError: three")
    run = Run.objects.get()
    assert run.status == Run.Status.FAILED
    statuses = {piece["key"]: piece["status"] for piece in run.pieces}
    assert statuses[3] == "FAILED"
    assert statuses[4] in ("SKIPPED", "CANCELLED", "SUCCEEDED")


def test_a_failing_chunk_and_group_are_named(alice, alice_api, alice_iris):
    """row-apply names the chunk and its rows; group-apply names the group."""
    source = (
        "def f(df):\n"
        "    if (df['SPECIES'] == 'virginica').any():\n"
        "        raise KeyError('no virginica')\n"
        "    return 1\n"
    )
    make_script(alice, "f", source)
    base = {"input": "select * from IRIS", "parameters": '{"oml_input_type":"pandas.DataFrame"}'}
    chunk = apply(alice_api, "row-apply", "f", {**base, "rows": 7}).json()
    assert chunk["errorMessage"].startswith("Chunk 3 (rows 15-21) failed: KeyError")
    group = apply(alice_api, "group-apply", "f", {**base, "groupBy": "SPECIES"}).json()
    assert group["errorMessage"].startswith("Group 'virginica' failed: KeyError")


def test_input_types_and_na_omit(alice, alice_api, alice_iris, iris):
    """oml_input_type picks the first argument's type; oml_na_omit drops rows with a missing value."""
    make_script(alice, "kind", "def kind(data):\n    return [type(data).__name__, len(data)]\n")
    body = {"input": "select SEPAL_LENGTH, PETAL_WIDTH from IRIS"}
    for parameters, expected in [
        ({}, ["ndarray", len(iris)]),
        ({"oml_input_type": "default", "oml_na_omit": True}, ["ndarray", len(iris.dropna())]),
        ({"oml_input_type": "pandas.DataFrame"}, ["DataFrame", len(iris)]),
        ({"oml_input_type": "numpy.recarray"}, ["recarray", len(iris)]),
    ]:
        response = apply(alice_api, "table-apply", "kind", {**body, "parameters": json.dumps(parameters)})
        assert response.json() == {"result": expected}, parameters
    mixed = apply(alice_api, "table-apply", "kind", {"input": "select * from IRIS"})
    assert mixed.json() == {"result": ["DataFrame", len(iris)]}


def test_unknown_input_type_is_400(alice, alice_api, alice_iris):
    """An oml_input_type Oracle does not know is refused before anything runs."""
    make_script(alice, "kind", "def kind(data):\n    return 1\n")
    body = {"input": "select * from IRIS", "parameters": '{"oml_input_type": "list"}'}
    response = apply(alice_api, "table-apply", "kind", body)
    assert response.status_code == 400
    assert "oml_input_type" in response.json()["errorMessage"]
    assert not Run.objects.exists()


PLOT = """
import matplotlib.pyplot as plt

def plot(i):
    plt.figure()
    plt.plot([0, i], [0, i])
    plt.title(f"index {i}")
    return {"i": i}
"""


def test_graphics_gives_image_records_per_piece(alice, alice_api):
    """With graphicsFlag each piece's figures come back as IMAGE/DATA/TITLE/ID records, in piece order."""
    make_script(alice, "plot", PLOT)
    response = apply(alice_api, "index-apply", "plot", {"times": 3, "graphicsFlag": True, "parallelFlag": True})
    assert response.status_code == 200, response.json()
    result = response.json()["result"]
    assert [r["TITLE"] for r in result] == ["index 1", "index 2", "index 3"]
    assert [json.loads(r["DATA"]) for r in result] == [{"i": 1}, {"i": 2}, {"i": 3}]
    assert [r["ID"] for r in result] == [1, 2, 3]
    assert all(base64.b64decode(r["IMAGE"]).startswith(b"\x89PNG") for r in result)
    assert RunImage.objects.count() == 3


def test_group_apply_graphics_are_keyed_per_group(alice, alice_api, alice_iris):
    """group-apply with graphicsFlag answers image records keyed per group."""
    source = PLOT.replace("def plot(i):", "def plot(df):\n    i = len(df)")
    make_script(alice, "plot", source)
    body = {"input": "select * from IRIS", "groupBy": "SPECIES", "graphicsFlag": True}
    result = apply(alice_api, "group-apply", "plot", body).json()["result"]
    assert sorted(result) == ["setosa", "versicolor", "virginica"]
    assert result["setosa"][0]["TITLE"] == "index 7"
    assert result["setosa"][0]["ID"] == 1


def test_empty_input_gives_empty_answers(alice, alice_api, alice_iris):
    """A query with no rows: row-apply answers [], group-apply {}, table-apply calls once with no rows."""
    make_script(alice, "count", "def count(df):\n    return len(df)\n")
    base = {"input": "select * from IRIS where 1 = 0", "parameters": '{"oml_input_type":"pandas.DataFrame"}'}
    assert apply(alice_api, "row-apply", "count", {**base, "rows": 3}).json() == {"result": []}
    assert apply(alice_api, "group-apply", "count", {**base, "groupBy": "SPECIES"}).json() == {"result": {}}
    assert apply(alice_api, "table-apply", "count", base).json() == {"result": 0}


def test_the_time_limit_bounds_the_whole_run(alice, alice_api, settings):
    """The wall-clock limit is the run's, not each piece's: pieces past it end the run TIMED_OUT."""
    settings.OMLWEB_RUN_WALL_SECONDS = 2.0
    make_script(alice, "sleepy", SLEEPY.replace("1.5", "0.8"))
    response = apply(alice_api, "index-apply", "sleepy", {"times": 5})
    assert response.status_code == 400
    assert response.json()["errorCode"] == 1031
    assert "The run exceeded its time limit of 2 seconds" in response.json()["errorMessage"]
    run = Run.objects.get()
    assert run.status == Run.Status.TIMED_OUT
    assert run.duration_seconds < 10
    assert [p["status"] for p in run.pieces][:2] == ["SUCCEEDED", "SUCCEEDED"]


def test_cancelling_stops_every_piece(alice):
    """The caller's cancel check (asked by the async worker) stops running pieces: the run is CANCELLED."""
    import time

    from scripts_app.models import Script
    from scripts_app.services.execution import execute_run
    from scripts_app.services.pipeline import ApplyInput, RunRequest, record_run

    make_script(alice, "sleepy", SLEEPY.replace("1.5", "30"))
    run = record_run(
        RunRequest(
            kind=Run.Kind.INDEX_APPLY,
            script=Script.objects.get(name="sleepy"),
            user=alice,
            apply_input=ApplyInput(times=4, parallel_flag=True),
            parameters={},
        )
    )
    started = time.monotonic()
    execute_run(run, is_cancelled=lambda: time.monotonic() - started > 1)
    run.refresh_from_db()
    assert run.status == Run.Status.CANCELLED
    assert run.error_code == 1037
    assert time.monotonic() - started < 15
    assert {p["status"] for p in run.pieces} <= {"CANCELLED", "SKIPPED"}


def test_too_many_pieces_is_400_before_anything_runs(alice, alice_api, settings):
    """More indexes than OMLWEB_APPLY_MAX_PIECES is refused up front, async or not."""
    settings.OMLWEB_APPLY_MAX_PIECES = 3
    make_script(alice, "ident", "def ident(i):\n    return i\n")
    for extra in ({}, {"asyncFlag": True}):
        response = apply(alice_api, "index-apply", "ident", {"times": 4, **extra})
        assert response.status_code == 400
        assert "limit of 3 pieces" in response.json()["errorMessage"]
    assert not Run.objects.exists()
