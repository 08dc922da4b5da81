"""Live output and progress written by real worker processes while jobs run (services.live)."""

from __future__ import annotations

import pytest

from scripts_app.models import Run, RunOutput
from scripts_app.services import live
from scripts_app.services.jobs.reaper import worker_lost
from scripts_app.services.pipeline import ApplyInput, RunRequest, start_run
from tests.factories import UserFactory, make_script
from tests.worker.conftest import wait_for, wait_status

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

PIECES = (
    "import time\n\ndef pieces(i):\n    print(f'piece {i} says hello', flush=True)\n    time.sleep(1.2)\n    return i\n"  # noqa: E501
)
TICKER = "import time\n\ndef ticker(n=30):\n    for i in range(n):\n        print(f'attempt tick {i}', flush=True)\n        time.sleep(0.3)\n    return n\n"  # noqa: E501


@pytest.fixture
def alice(transactional_db):
    return UserFactory(username="alice")


def live_text(run: Run, stream: str = "stdout") -> str:
    return "".join(RunOutput.objects.filter(run=run, stream=stream).order_by("id").values_list("text", flat=True))


def test_an_apply_job_shows_its_pieces_and_their_output_as_they_go(shared, alice):
    """index-apply, one piece at a time: while it runs, the run's pieces say which are done and the
    live output has each piece's lines under its heading; at the end the rows are gone."""
    script = make_script(alice, "pieces", PIECES)
    run = start_run(
        RunRequest(
            script=script, user=alice, kind=Run.Kind.INDEX_APPLY, apply_input=ApplyInput(times=3), asynchronous=True
        )
    )

    def one_done_and_printed():
        current = Run.objects.get(pk=run.pk)
        done = [p for p in current.pieces if p.get("status") == "SUCCEEDED"]
        return current.status == Run.Status.RUNNING and done and "--- index 2 ---\npiece 2" in live_text(current)

    current = wait_for(one_done_and_printed, timeout=60, what="a piece done while the run goes on", on=shared)
    current = Run.objects.get(pk=run.pk)
    assert live_text(current).startswith("--- index 1 ---\npiece 1 says hello\n")
    steps = {step["name"]: step for step in live.timeline(current)}
    assert steps["Pieces"]["total"] == 3
    assert steps["Pieces"]["done"] >= 1
    done = wait_status(run.pk, Run.FINISHED, timeout=60, on=shared)
    assert done.status == Run.Status.SUCCEEDED, done.error_message
    assert done.result == [1, 2, 3]
    assert [piece["status"] for piece in done.pieces] == ["SUCCEEDED"] * 3
    # Removed by the writer just after the outcome is recorded.
    wait_for(lambda: not RunOutput.objects.filter(run=run).exists(), timeout=10, what="the live rows to go")
    assert current  # the last progress seen


def test_a_job_started_again_shows_only_its_new_attempts_output(cluster, alice):
    """kill -9 of the worker mid-run: attempt 1's live output stays until attempt 2 starts, which
    removes it and writes its own; the timeline says the job went back to the queue."""
    script = make_script(alice, "ticker", TICKER)
    first = cluster.start("first", ["LOW"])
    run = start_run(RunRequest(script=script, user=alice, parameters={"n": 20}, asynchronous=True))
    wait_for(lambda: "attempt tick 2" in live_text(run), timeout=60, what="attempt 1 to print", on=cluster)
    first.kill9()
    assert worker_lost(worker="first@test") == [str(run.pk)]
    queued = Run.objects.get(pk=run.pk)
    assert [step["name"] for step in live.timeline(queued)] == ["Queued", "Back in the queue"]
    # Back in the queue, the page still shows what the lost attempt printed ...
    assert live.output_after(queued).stdout.startswith("attempt tick 0\n")
    # Not waiting for "ready": a solo worker may take the redelivered job (RabbitMQ hands it back at
    # once) and run it before it says ready, so watch from the start.
    cluster.start("second", ["LOW"], wait=False)
    wait_for(
        lambda: not RunOutput.objects.filter(run=run, attempt=1).exists() and "attempt tick 1" in live_text(run),
        timeout=60,
        what="attempt 2 to replace attempt 1's output",
        on=cluster,
    )
    # ... until attempt 2 starts: then only its own.
    running = Run.objects.get(pk=run.pk)
    assert live.output_after(running).stdout.startswith("attempt tick 0\nattempt tick 1\n")
    steps = live.timeline(running)
    assert [step["name"] for step in steps] == ["Queued", "Back in the queue", "Started"]
    assert steps[2]["note"].startswith("attempt 2")
    done = wait_status(run.pk, Run.FINISHED, timeout=60, on=cluster)
    assert (done.status, done.attempts) == (Run.Status.SUCCEEDED, 2)
    # Removed by the writer just after the outcome is recorded.
    wait_for(lambda: not RunOutput.objects.filter(run=run).exists(), timeout=10, what="the live rows to go")
