"""The reaper and retention: no run stays QUEUED or RUNNING forever, and old runs go away."""

from __future__ import annotations

import re
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.management import call_command
from django.utils import timezone

from scripts_app.errors import ErrorCode
from scripts_app.models import Run, RunImage
from scripts_app.services.jobs import broker, reaper, submission
from scripts_app.services.pipeline import RunRequest, start_run
from tests.factories import UserFactory, make_script


@pytest.fixture
def published(monkeypatch):
    sent: list[str] = []
    monkeypatch.setattr(submission, "job_enqueue", lambda *, run: sent.append(str(run.pk)))
    return sent


@pytest.fixture
def script(db):
    return make_script(UserFactory(), "f", "def f():\n    return 1\n")


@pytest.fixture
def reaper_settings(settings):
    settings.OMLWEB_HEARTBEAT_STALE_SECONDS = 60
    settings.OMLWEB_RUN_MAX_ATTEMPTS = 3
    settings.OMLWEB_REQUEUE_AFTER_SECONDS = 120
    settings.OMLWEB_RUN_WALL_SECONDS = 60
    return settings


def job(script, **fields) -> Run:
    run = start_run(RunRequest(script=script, user=script.owner, parameters={}, asynchronous=True))
    Run.objects.filter(pk=run.pk).update(**fields)
    return Run.objects.get(pk=run.pk)


def ago(seconds: float):
    return timezone.now() - timedelta(seconds=seconds)


def running(script, *, heartbeat: float, attempts: int = 1, **fields) -> Run:
    return job(
        script, status=Run.Status.RUNNING, worker="low@dead", attempts=attempts, heartbeat_at=ago(heartbeat), **fields
    )


def test_a_run_whose_worker_vanished_is_requeued(script, published, reaper_settings):
    """RUNNING with a heartbeat older than the stale limit: back to QUEUED, published again."""
    run = running(script, heartbeat=61)
    report = reaper.reap_runs()
    assert report.requeued == [str(run.pk)]
    run.refresh_from_db()
    assert run.status == Run.Status.QUEUED
    assert (run.worker, run.heartbeat_at, run.attempts) == ("", None, 1)
    assert published == [str(run.pk)]


def test_a_run_with_a_live_heartbeat_is_left_alone(script, published, reaper_settings):
    """A heartbeat within the limit means its worker still holds it."""
    run = running(script, heartbeat=30)
    assert not reaper.reap_runs()
    run.refresh_from_db()
    assert run.status == Run.Status.RUNNING
    assert published == []


def test_a_run_that_lost_its_worker_too_often_fails_clearly(script, published, reaper_settings):
    """After OMLWEB_RUN_MAX_ATTEMPTS tries it fails with a message saying why, and is not published."""
    run = running(script, heartbeat=61, attempts=3)
    assert reaper.reap_runs().failed == [str(run.pk)]
    run.refresh_from_db()
    assert run.status == Run.Status.FAILED
    assert run.error_code == ErrorCode.CRASHED
    assert "started 3 times" in run.error_message
    assert "low@dead" in run.error_message
    assert run.finished_at is not None
    assert published == []


def test_a_cancelled_run_whose_worker_vanished_ends_cancelled(script, published, reaper_settings):
    """A cancel that no worker could carry out still ends the run, CANCELLED."""
    run = running(script, heartbeat=61, cancel_requested_at=ago(65))
    assert reaper.reap_runs().cancelled == [str(run.pk)]
    run.refresh_from_db()
    assert run.status == Run.Status.CANCELLED
    assert published == []


def test_queued_runs_are_republished_when_their_queue_lost_messages(script, published, reaper_settings, monkeypatch):
    """Two old queued runs and one message in the queue: the oldest is published again, once."""
    oldest = job(script, enqueued_at=ago(300))
    job(script, enqueued_at=ago(200))
    monkeypatch.setattr(broker, "queue_length", lambda service: 1 if service == "LOW" else 0)
    assert reaper.reap_runs().republished == [str(oldest.pk)]
    assert published == [str(oldest.pk)]
    # With its new message counted, the next pass publishes nothing more.
    monkeypatch.setattr(broker, "queue_length", lambda service: 2 if service == "LOW" else 0)
    assert not reaper.reap_runs()


def test_queued_runs_with_their_messages_in_the_queue_are_left_alone(script, published, reaper_settings, monkeypatch):
    """As many messages as queued runs: nothing is lost."""
    job(script, enqueued_at=ago(300))
    monkeypatch.setattr(broker, "queue_length", lambda service: 1 if service == "LOW" else 0)
    assert not reaper.reap_runs()
    assert published == []


def test_recently_queued_runs_are_not_republished(script, published, reaper_settings, monkeypatch):
    """A run queued moments ago may simply not be in the broker's count yet."""
    job(script, enqueued_at=ago(5))
    monkeypatch.setattr(broker, "queue_length", lambda service: 0)
    assert not reaper.reap_runs()


def test_unknown_queue_length_republishes_old_queued_runs(script, published, reaper_settings, monkeypatch):
    """When the broker can't be asked, old queued runs are published again (a duplicate is harmless)."""
    run = job(script, enqueued_at=ago(300))
    monkeypatch.setattr(broker, "queue_length", lambda service: None)
    assert reaper.reap_runs().republished == [str(run.pk)]


def test_a_sync_run_left_open_by_a_dead_web_process_fails(script, reaper_settings):
    """A sync run still RUNNING long after the sync limit fails; a recent one is left alone."""
    from scripts_app.services.pipeline import RunRequest, record_run

    old = record_run(RunRequest(script=script, user=script.owner, parameters={}))
    Run.objects.filter(pk=old.pk).update(status=Run.Status.RUNNING, created_at=ago(200))
    recent = record_run(RunRequest(script=script, user=script.owner, parameters={}))
    Run.objects.filter(pk=recent.pk).update(status=Run.Status.RUNNING)
    assert reaper.reap_runs().failed == [str(old.pk)]
    assert Run.objects.get(pk=old.pk).status == Run.Status.FAILED
    assert Run.objects.get(pk=recent.pk).status == Run.Status.RUNNING


def test_reap_runs_command_prints_what_it_did(script, published, reaper_settings):
    """manage.py reap_runs lists each run it touched."""
    run = running(script, heartbeat=61)
    out = StringIO()
    call_command("reap_runs", stdout=out)
    assert f"requeued {run.pk}" in out.getvalue()
    out = StringIO()
    call_command("reap_runs", stdout=out)
    assert "Nothing to reap." in out.getvalue()


def test_prune_deletes_old_finished_runs_and_their_images(
    script, settings, published, django_capture_on_commit_callbacks
):
    """Finished runs past retention go, with their image files; recent and unfinished ones stay."""
    settings.OMLWEB_RUN_RETENTION_DAYS = 183
    old = job(script, status=Run.Status.SUCCEEDED, finished_at=timezone.now() - timedelta(days=184))
    image = RunImage(run=old, position=1)
    image.image.save("1.png", ContentFile(b"png"), save=True)
    path = Path(image.image.path)
    recent = job(script, status=Run.Status.FAILED, finished_at=timezone.now() - timedelta(days=10))
    queued = job(script)
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("prune_runs", stdout=out)
    assert "Deleted 1 runs" in out.getvalue()
    assert set(Run.objects.values_list("pk", flat=True)) == {recent.pk, queued.pk}
    assert not RunImage.objects.exists()
    assert not path.exists()


def test_omlweb_status_command_shows_levels_and_the_oldest_job(script, published, monkeypatch):
    """manage.py omlweb_status: the workers, a row per service level, and the oldest queued job."""
    monkeypatch.setattr(broker, "workers_alive", lambda: [{"name": "high@h", "queues": ["omlweb.high"]}])
    monkeypatch.setattr(broker, "queue_length", lambda service: 1 if service == "LOW" else 0)
    run = job(script, created_at=ago(3725))
    out = StringIO()
    call_command("omlweb_status", stdout=out)
    text = out.getvalue()
    assert "Workers alive: 1" in text
    assert "high@h: omlweb.high" in text
    assert re.search(r"LOW\s+omlweb\.low\s+1\s+1\s+0\s+0", text), text
    assert f"Oldest queued job: {run.pk} (LOW), waiting 01:02:05" in text
