"""An apply run's first children start while its input query runs (services.execution._run_pieces):
they wait for their first piece, which comes once the query is split.

These try to break that: a query that fails, or a fault while it is split, with children already
started, fails the run as before and leaves no process behind; a cancel that comes while the query
runs cancels the run and ends its children.
"""

from __future__ import annotations

import os
import time

import pytest

from scripts_app.errors import BadRequest
from scripts_app.models import Run, Script
from scripts_app.services import apply as apply_service
from scripts_app.services import execution
from scripts_app.services.execution import execute_run
from scripts_app.services.pipeline import ApplyInput, RunRequest, record_run
from tests.factories import make_dataset, make_script

ROWS = "import pandas as pd\n\ndef rows(df):\n    return pd.DataFrame({'N': [len(df)]})\n"


def descendants() -> set[int]:
    """The processes below this one: the templates, their spares, and the runs' children."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(entry)] = int(fields[1])
    found, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def settle(baseline: int, timeout: float = 15.0) -> int:
    """The number of processes below this one once it is back to `baseline` (or the timeout)."""
    until = time.monotonic() + timeout
    while (count := len(descendants())) > baseline and time.monotonic() < until:
        time.sleep(0.1)
    return count


def row_run(user, *, query: str = "select * from DATA", rows: int = 10) -> Run:
    return record_run(
        RunRequest(
            kind=Run.Kind.ROW_APPLY,
            script=Script.objects.get(name="rows"),
            user=user,
            apply_input=ApplyInput(input_query=query, rows=rows, parallel_flag=True),
            parameters={"oml_input_type": "pandas.DataFrame"},
            service="MEDIUM",
        )
    )


@pytest.fixture
def warm(alice):
    """A dataset and a script, run once so that the template and its spares are up; returns the
    number of processes below this one at rest."""
    import pandas as pd

    make_dataset(alice, "DATA", pd.DataFrame({"X": range(40)}))
    make_script(alice, "rows", ROWS)
    run = execute_run(row_run(alice))
    assert run.status == Run.Status.SUCCEEDED, run.error_message
    return _at_rest()


def _at_rest() -> int:
    """The count of processes below this one once it stops changing (spares made after a run)."""
    count, still = len(descendants()), 0
    until = time.monotonic() + 10
    while still < 5 and time.monotonic() < until:
        time.sleep(0.1)
        now = len(descendants())
        still = still + 1 if now == count else 0
        count = now
    return count


def slow_build(monkeypatch, baseline: int, then):
    """build_pieces, once the run's first children are up (more processes than at rest): `then(run)`."""
    seen = {}

    def build(run):
        until = time.monotonic() + 10
        while len(descendants()) <= baseline and time.monotonic() < until:
            time.sleep(0.02)
        seen["started"] = len(descendants()) - baseline
        return then(run)

    monkeypatch.setattr(execution, "build_pieces", build)
    return seen


def test_a_failing_query_with_children_started_fails_the_run_and_leaves_no_process(alice, warm, monkeypatch):
    def fail(run):
        raise BadRequest("input: the query failed on purpose")

    seen = slow_build(monkeypatch, warm, fail)
    run = execute_run(row_run(alice))
    run.refresh_from_db()
    assert seen["started"] >= 1, "the run's children should have started while its query ran"
    assert (run.status, run.error_code) == (Run.Status.FAILED, 1000)
    assert run.error_message == "input: the query failed on purpose"
    assert run.pieces in (None, [])
    assert settle(warm) <= warm


def test_a_fault_while_splitting_with_children_started_is_recorded_and_leaves_no_process(alice, warm, monkeypatch):
    def fault(run):
        raise RuntimeError("a fault of the service")

    seen = slow_build(monkeypatch, warm, fault)
    run = row_run(alice)
    with pytest.raises(RuntimeError, match="a fault of the service"):
        execute_run(run)
    run.refresh_from_db()
    assert seen["started"] >= 1
    assert run.status == Run.Status.FAILED
    assert run.error_message == "The service failed to prepare the input: a fault of the service"
    assert settle(warm) <= warm


def test_a_cancel_while_the_query_runs_cancels_the_run_and_ends_its_children(alice, warm, monkeypatch):
    """The cancel is asked while the query runs (its answer comes once it is split): the run is
    CANCELLED, no piece is recorded SUCCEEDED after the cancel, and no process is left."""
    cancel = {"now": False}

    def cancel_then_build(run):
        cancel["now"] = True
        return apply_service.build_pieces(run)

    seen = slow_build(monkeypatch, warm, cancel_then_build)
    run = execute_run(row_run(alice), is_cancelled=lambda: cancel["now"])
    run.refresh_from_db()
    assert seen["started"] >= 1
    assert run.status == Run.Status.CANCELLED
    statuses = [piece["status"] for piece in run.pieces]
    assert statuses.count("CANCELLED") == 1
    assert set(statuses) <= {"SUCCEEDED", "CANCELLED", "SKIPPED"}
    assert settle(warm) <= warm


def test_fewer_pieces_than_children_started(alice, warm):
    """One piece at MEDIUM: the children started before the query was split that get no piece exit
    (nothing runs in them); the run records the degree its pieces allow."""
    run = execute_run(row_run(alice, rows=100))
    assert run.status == Run.Status.SUCCEEDED, run.error_message
    assert run.result == [{"N": 40}]
    assert run.apply_options["degree"] == 1
    assert settle(warm) <= warm


def test_an_empty_query_runs_no_piece(alice, warm):
    run = execute_run(row_run(alice, query="select * from DATA where X < 0"))
    assert run.status == Run.Status.SUCCEEDED, run.error_message
    assert run.result == []
    assert settle(warm) <= warm
