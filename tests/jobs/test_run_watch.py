"""A job's watch (services/jobs/worker.RunWatch): one thread per worker process, reused by every job.

The watch thread reads the rows through its own connection, so these tests commit their rows
(transaction=True) and use fast clocks: polls every 0.05 s, heartbeats every 0.2 s.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from scripts_app.models import Run
from scripts_app.services import live
from scripts_app.services.jobs import worker
from scripts_app.services.pipeline import RunRequest, start_run
from tests.factories import UserFactory, make_script

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def fast(settings, monkeypatch):
    settings.OMLWEB_CANCEL_POLL_SECONDS = 0.05
    settings.OMLWEB_HEARTBEAT_SECONDS = 0.2
    settings.OMLWEB_LIVE_FLUSH_SECONDS = 0.05
    monkeypatch.setattr("scripts_app.services.jobs.submission.job_enqueue", lambda **kwargs: None)
    return settings


@pytest.fixture
def script(fast):
    return make_script(UserFactory(), "f", "def f():\n    return 1\n")


def claimed(script) -> Run:
    """A job as a worker holds it just after its claim."""
    run = start_run(RunRequest(script=script, user=script.owner, parameters={}, asynchronous=True))
    long_ago = timezone.now() - timedelta(seconds=30)
    Run.objects.filter(pk=run.pk).claim(worker="w@test", now=long_ago)
    return Run.objects.get(pk=run.pk)


def until(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def watch_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith(("run-watch", "watch-"))]


def test_jobs_one_after_another_share_one_watch_thread(script):
    idents = set()
    for _ in range(5):
        run = claimed(script)
        watch = worker.RunWatch(run=run)
        watch.start()
        idents |= {thread.ident for thread in watch_threads()}
        watch.stop()
    assert len(idents) == 1
    assert len(watch_threads()) == 1


def test_a_cancel_is_seen_and_the_heartbeat_written(script):
    run = claimed(script)
    watch = worker.RunWatch(run=run)
    watch.start()
    try:
        assert until(lambda: Run.objects.get(pk=run.pk).heartbeat_at > timezone.now() - timedelta(seconds=5))
        assert not watch.is_cancelled()
        Run.objects.filter(pk=run.pk).cancel(now=timezone.now())
        assert until(watch.is_cancelled)
    finally:
        watch.stop()


def test_a_run_deleted_or_taken_away_counts_as_cancelled(script):
    deleted, taken = claimed(script), claimed(script)
    watches = [worker.RunWatch(run=deleted), worker.RunWatch(run=taken)]
    for watch in watches:
        watch.start()
    try:
        Run.objects.filter(pk=deleted.pk).delete()
        Run.objects.filter(pk=taken.pk).requeue(now=timezone.now())
        assert until(lambda: all(watch.is_cancelled() for watch in watches))
    finally:
        for watch in watches:
            watch.stop()


def test_nothing_is_done_for_a_run_once_its_watch_stopped(script):
    run = claimed(script)
    watch = worker.RunWatch(run=run)
    watch.start()
    assert until(lambda: Run.objects.get(pk=run.pk).heartbeat_at > timezone.now() - timedelta(seconds=5))
    watch.stop()
    stale = timezone.now() - timedelta(seconds=30)
    Run.objects.filter(pk=run.pk).update(heartbeat_at=stale)
    Run.objects.filter(pk=run.pk).cancel(now=timezone.now())
    # The next job's watch keeps the thread busy meanwhile; the stopped one's run is left alone.
    other = worker.RunWatch(run=claimed(script))
    other.start()
    time.sleep(0.5)
    other.stop()
    assert Run.objects.get(pk=run.pk).heartbeat_at == stale
    assert not watch.is_cancelled()


def test_the_watch_writes_live_output_and_stops_before_the_writer(script):
    run = claimed(script)
    writer = live.LiveRun(run=run).start(flushed_by_caller=True)
    flushed = threading.Event()
    original = writer.flush_quietly

    def flush() -> None:
        original()
        flushed.set()

    writer.flush_quietly = flush  # type: ignore[method-assign]
    watch = worker.RunWatch(run=run, live=writer)
    watch.start()
    assert flushed.wait(5)
    watch.stop()
    flushed.clear()
    time.sleep(0.3)
    assert not flushed.is_set()
    writer.stop()


def test_a_watch_stop_waits_for_a_poll_under_way(script, monkeypatch):
    run = claimed(script)
    watch = worker.RunWatch(run=run)
    in_poll, release = threading.Event(), threading.Event()
    real_held_by = Run.objects.held_by

    def slow_held_by(held):
        if held.pk == run.pk and threading.current_thread().name == "run-watch":
            in_poll.set()
            release.wait(5)
        return real_held_by(held)

    monkeypatch.setattr(Run.objects, "held_by", slow_held_by)
    watch.start()
    assert in_poll.wait(5)
    stopped = threading.Event()
    stopper = threading.Thread(target=lambda: (watch.stop(), stopped.set()))
    stopper.start()
    assert not stopped.wait(0.3)
    release.set()
    assert stopped.wait(5)
    stopper.join()
