"""The degree of parallelism of each service level is what it says (LOW 2, MEDIUM 4, HIGH 8).

Proven from the timestamps the pieces themselves return, not from the service's own record.
"""

from __future__ import annotations

import pytest

from scripts_app import runner
from scripts_app.models import Run
from tests.apply.test_endpoints import apply
from tests.factories import make_script

# Each piece reports when it ran, by its own clock: the proof does not trust the service's record.
STAMPED = """import time

def stamped(i):
    start = time.time()
    time.sleep(3)
    return [i, start, time.time()]
"""


@pytest.fixture
def two_slots():
    """A per-process runner cap far below HIGH's degree, as an operator might set it."""
    before = runner.config.current().max_concurrent
    runner.configure(max_concurrent=2)
    yield
    runner.configure(max_concurrent=before)


def most_at_once(result: list) -> int:
    """The largest number of pieces running at one instant, from their (start, end) stamps."""
    events = sorted([(start, 1) for _, start, _ in result] + [(end, -1) for _, _, end in result])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_high_runs_eight_pieces_at_once_whatever_the_runner_cap(alice, alice_api, two_slots):
    """HIGH with parallelFlag: all 8 pieces overlap, although the runner allows 2 runs per process."""
    make_script(alice, "stamped", STAMPED)
    response = apply(alice_api, "index-apply", "stamped", {"times": 8, "parallelFlag": True, "service": "HIGH"})
    assert response.status_code == 200, response.content
    result = response.json()["result"]
    assert [piece[0] for piece in result] == list(range(1, 9))
    assert most_at_once(result) == 8
    # Every piece started before any piece ended.
    assert max(start for _, start, _ in result) < min(end for _, _, end in result)
    run = Run.objects.get()
    assert run.status == Run.Status.SUCCEEDED
    assert run.apply_options["degree"] == 8
    assert "degreeLimitedBy" not in run.apply_options


def test_medium_runs_four_at_once_and_no_more(alice, alice_api, two_slots):
    """MEDIUM with 6 pieces: 4 at once, never 5, never the runner's 2."""
    make_script(alice, "stamped", STAMPED.replace("sleep(3)", "sleep(2)"))
    response = apply(alice_api, "index-apply", "stamped", {"times": 6, "parallelFlag": True, "service": "MEDIUM"})
    assert response.status_code == 200, response.content
    assert most_at_once(response.json()["result"]) == 4
    assert Run.objects.get().apply_options["degree"] == 4


def test_an_operator_cap_lowers_the_degree_and_says_so(alice, alice_api, admin_api, settings):
    """OMLWEB_APPLY_MAX_DEGREE=3: HIGH runs 3 at once; the run's record and the status endpoint say why."""
    settings.OMLWEB_APPLY_MAX_DEGREE = 3
    make_script(alice, "stamped", STAMPED.replace("sleep(3)", "sleep(1.5)"))
    response = apply(alice_api, "index-apply", "stamped", {"times": 5, "parallelFlag": True, "service": "HIGH"})
    assert response.status_code == 200, response.content
    assert most_at_once(response.json()["result"]) == 3
    run = Run.objects.get()
    assert run.apply_options["degree"] == 3
    assert run.apply_options["degreeLimitedBy"] == "OMLWEB_APPLY_MAX_DEGREE=3"
    status = admin_api.get("/oml/api/admin/status")
    assert status.status_code == 200
    degrees = status.json()["degreeOfParallelism"]
    assert degrees["HIGH"] == {"degree": 8, "effectiveDegree": 3, "limitedBy": "OMLWEB_APPLY_MAX_DEGREE=3"}
    assert degrees["LOW"] == {"degree": 2, "effectiveDegree": 2}
    # And the next run at a level the cap does not touch records no limit.
    response = apply(alice_api, "index-apply", "stamped", {"times": 2, "parallelFlag": True, "service": "LOW"})
    assert response.status_code == 200
    assert "degreeLimitedBy" not in Run.objects.order_by("-created_at").first().apply_options


def test_an_apply_run_that_finds_no_slot_is_a_clear_busy(alice, alice_api):
    """Every runner slot taken: the apply run is a 503 (1040) recorded FAILED; with a slot free it runs."""
    before = runner.config.current()
    runner.configure(max_concurrent=1, queue_timeout=0.5)
    make_script(alice, "stamped", STAMPED.replace("sleep(3)", "sleep(0)"))
    try:
        with runner.slot():
            response = apply(alice_api, "index-apply", "stamped", {"times": 2, "parallelFlag": True})
        assert response.status_code == 503
        assert response.json()["errorCode"] == 1040
        run = Run.objects.get()
        assert (run.status, run.error_code) == (Run.Status.FAILED, 1040)
        response = apply(alice_api, "index-apply", "stamped", {"times": 2, "parallelFlag": True})
        assert response.status_code == 200, response.content
        assert [piece[0] for piece in response.json()["result"]] == [1, 2]
    finally:
        runner.configure(max_concurrent=before.max_concurrent, queue_timeout=before.queue_timeout)
