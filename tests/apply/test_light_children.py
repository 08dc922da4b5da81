"""Children past the cores: an apply run starts min(degree, cores) children at once and the rest of
its degree only when the pieces left are long enough to be worth one more process
(services.execution, EXTRA_CHILD_SECONDS).

These try to break that: light pieces never see more children than the cores; long pieces still
get the whole degree at once; a failure or a cancel while the further children wait ends the run
at once, naming the piece, and never waits for them.
"""

from __future__ import annotations

import time

import pytest

from scripts_app.models import Run, Script
from scripts_app.services import execution
from scripts_app.services.execution import execute_run
from scripts_app.services.pipeline import ApplyInput, RunRequest, record_run
from tests.apply.test_degree import STAMPED, most_at_once
from tests.apply.test_endpoints import apply
from tests.apply.test_piece_children import TOKEN
from tests.factories import make_script

# Each piece answers its child's token (see TOKEN) and when it ran, by its own clock.
TOKEN_STAMPED = """
import os, time, uuid

def token(i):
    start = time.time()
    path = os.path.join(os.getcwd(), "omlweb-test-token")
    if not os.path.exists(path):
        with open(path, "w") as file:
            file.write(uuid.uuid4().hex)
    time.sleep(SLEEP)
    with open(path) as file:
        return [file.read(), start, time.time()]
"""


@pytest.fixture
def cores(monkeypatch):
    """The number of cores the service sees, set: the rule must not depend on the machine's."""

    def set_cores(count: int) -> None:
        monkeypatch.setattr(execution, "_cores", lambda: count)

    return set_cores


def test_light_pieces_never_start_more_children_than_cores(alice, alice_api, cores, monkeypatch):
    """12 light pieces at MEDIUM (degree 4) on 2 cores: two children serve them all, in order; the
    run still records its level's degree."""
    cores(2)
    monkeypatch.setattr(execution, "EXTRA_CHILD_SECONDS", 60.0)
    make_script(alice, "token", TOKEN)
    response = apply(alice_api, "index-apply", "token", {"times": 12, "parallelFlag": True, "service": "MEDIUM"})
    assert response.status_code == 200, response.json()
    tokens = response.json()["result"]
    assert len(tokens) == 12
    assert 1 <= len(set(tokens)) <= 2
    run = Run.objects.get()
    assert run.apply_options["degree"] == 4
    assert [piece["status"] for piece in run.pieces] == ["SUCCEEDED"] * 12
    for i in range(1, 13):
        assert f"--- index {i} ---\npiece {i}\n" in run.stdout


def test_long_pieces_get_the_whole_degree_on_one_core(alice, alice_api, cores):
    """4 pieces of a second each at MEDIUM on one core: all four still run at once (a piece that waits
    on something is why a degree above the cores exists)."""
    cores(1)
    make_script(alice, "stamped", STAMPED.replace("sleep(3)", "sleep(1.5)"))
    response = apply(alice_api, "index-apply", "stamped", {"times": 4, "parallelFlag": True, "service": "MEDIUM"})
    assert response.status_code == 200, response.content
    assert most_at_once(response.json()["result"]) == 4


def test_the_pieces_left_start_further_children_before_the_time_bound(alice, alice_api, cores, monkeypatch):
    """12 pieces of 0.4 s on one core, the time bound set to 3 s: once the first piece is done, the 11
    left (4.4 s for one child) start the others well before the bound; all four children serve."""
    cores(1)
    monkeypatch.setattr(execution, "EXTRA_CHILD_SECONDS", 3.0)
    make_script(alice, "token", TOKEN_STAMPED.replace("SLEEP", "0.4"))
    response = apply(alice_api, "index-apply", "token", {"times": 12, "parallelFlag": True, "service": "MEDIUM"})
    assert response.status_code == 200, response.content
    result = response.json()["result"]
    assert len({token for token, _, _ in result}) == 4
    first = min(start for _, start, _ in result)
    firsts: dict[str, float] = {}
    for token, start, _ in result:
        firsts[token] = min(start, firsts.get(token, start))
    # Every child's first piece began before the time bound would have started it.
    assert max(firsts.values()) - first < 2.5
    assert most_at_once([[0, start, end] for _, start, end in result]) == 4


def test_a_long_piece_after_fast_ones_starts_the_others(alice, alice_api, cores):
    """Two instant pieces, then four of 1.5 s, on one core: the fastest piece says the work left is
    light, but a piece running past the bound starts the other children: the long four overlap."""
    cores(1)
    source = STAMPED.replace("time.sleep(3)", "time.sleep(1.5 if i > 2 else 0)")
    make_script(alice, "stamped", source)
    response = apply(alice_api, "index-apply", "stamped", {"times": 6, "parallelFlag": True, "service": "MEDIUM"})
    assert response.status_code == 200, response.content
    result = response.json()["result"]
    assert [piece[0] for piece in result] == list(range(1, 7))
    assert most_at_once(result[2:]) == 4


def test_a_failing_piece_ends_the_run_while_further_children_wait(alice, alice_api, cores, monkeypatch):
    """Piece 3 raises while the children past the core wait (for a minute, here): the run fails at
    once naming it, and no waiting child starts a piece."""
    cores(1)
    monkeypatch.setattr(execution, "EXTRA_CHILD_SECONDS", 60.0)
    make_script(alice, "f", "def f(i):\n    if i == 3:\n        raise ValueError('bad piece')\n    return i\n")
    started = time.monotonic()
    response = apply(alice_api, "index-apply", "f", {"times": 8, "parallelFlag": True, "service": "MEDIUM"})
    assert time.monotonic() - started < 20
    assert response.status_code == 400
    assert response.json()["errorMessage"].startswith("Index 3 failed: ValueError: bad piece")
    run = Run.objects.get()
    statuses = [piece["status"] for piece in run.pieces]
    assert statuses[:3] == ["SUCCEEDED", "SUCCEEDED", "FAILED"]
    assert set(statuses[3:]) == {"SKIPPED"}


@pytest.mark.parametrize("parallel", [True, False])
def test_a_cancel_between_short_pieces_cancels_the_run(alice, cores, monkeypatch, parallel):
    """Cancelled while one child works through pieces of 50 ms (and, in parallel, the others wait
    for the time bound): the run ends promptly and is CANCELLED, never SUCCEEDED with pieces left
    unrun, whether the cancel finds a piece running or falls between two."""
    cores(1)
    monkeypatch.setattr(execution, "EXTRA_CHILD_SECONDS", 60.0)
    make_script(alice, "sleepy", "import time\n\ndef sleepy(i):\n    time.sleep(0.05)\n    return i\n")
    run = record_run(
        RunRequest(
            kind=Run.Kind.INDEX_APPLY,
            script=Script.objects.get(name="sleepy"),
            user=alice,
            apply_input=ApplyInput(times=200, parallel_flag=parallel),
            parameters={},
            service="MEDIUM",
        )
    )
    started = time.monotonic()
    execute_run(run, is_cancelled=lambda: time.monotonic() - started > 1.0)
    run.refresh_from_db()
    assert time.monotonic() - started < 10
    assert run.status == Run.Status.CANCELLED
    assert run.error_message.endswith("The run was cancelled")
    statuses = [piece["status"] for piece in run.pieces]
    assert "SUCCEEDED" in statuses
    assert statuses.count("CANCELLED") == 1
    cancelled = statuses.index("CANCELLED")
    assert set(statuses[:cancelled]) <= {"SUCCEEDED", "CANCELLED"}
    assert statuses[cancelled + 1 :] == ["SKIPPED"] * (199 - cancelled)
