"""A running run's page: live output rows, the poll's answer, the clock, the timeline (views.live)."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.urls import reverse
from django.utils import timezone

from scripts_app import runner
from scripts_app.models import Run, RunOutput
from scripts_app.services import live
from tests.factories import make_script
from tests.web.conftest import logged_in

HX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def running(alice):
    script = make_script(alice, "printer", "def printer():\n    print('hi')\n")
    now = timezone.now()
    return Run.objects.create(
        script_version=script.current_version,
        script_name=script.name,
        script_owner="alice",
        user=alice,
        mode=Run.Mode.ASYNC,
        status=Run.Status.RUNNING,
        created_at=now - dt.timedelta(seconds=75),
        enqueued_at=now - dt.timedelta(seconds=75),
        started_at=now - dt.timedelta(seconds=65),
        attempts=1,
        worker="w1@test",
    )


def live_url(run, after=0, attempt=None, seen=""):
    attempt = run.attempts if attempt is None else attempt
    return f"{reverse('web:run_live', args=[run.pk])}?after={after}&attempt={attempt}&seen={seen}"


def test_the_page_of_a_running_run_shows_what_it_printed_so_far(client, alice, running):
    first = RunOutput.objects.create(run=running, attempt=1, stream="stdout", text="line 0\n")
    RunOutput.objects.create(run=running, attempt=1, stream="stderr", text="careful\n")
    last = RunOutput.objects.create(run=running, attempt=1, stream="stdout", text="line 1\n")
    page = logged_in(client, alice).get(reverse("web:run_detail", args=[running.pk])).content.decode()
    assert 'data-empty="Nothing printed yet.">line 0\nline 1\n</pre>' in page
    assert ">careful\n</pre>" in page
    assert '<span id="live-status" aria-live="polite" aria-atomic="true">' in page
    assert f"after={last.pk}&amp;attempt=1" in page
    assert re.search(r'running for <span class="clock">1:0\d</span>', page)
    # The timeline: queued, started (after 10 s in the queue, on its worker), the step it is at.
    assert '<span class="step-name">Queued</span>' in page
    assert "after 0:10 in the queue, on w1@test" in page
    assert 'aria-current="step"><span class="step-name">Started</span>' in page
    assert first.pk < last.pk


def test_the_poll_answers_only_what_is_new(client, alice, running):
    client = logged_in(client, alice)
    first = RunOutput.objects.create(run=running, attempt=1, stream="stdout", text="<b>line 0</b>\n")
    answer = client.get(live_url(running, seen="x"), **HX)
    body = answer.content.decode()
    assert answer.status_code == 200
    assert '<span hx-swap-oob="beforeend:#live-stdout">&lt;b&gt;line 0&lt;/b&gt;\n</span>' in body
    assert "beforeend:#live-stderr" not in body
    assert 'hx-swap-oob="innerHTML:#live-status"' in body  # the state it had seen was another
    assert f"after={first.pk}&amp;attempt=1" in body
    # Nothing new: no output, and the status sentence (an aria-live region) is not sent again.
    key = live.state_key(running, None)
    body = client.get(live_url(running, after=first.pk, seen=key), **HX).content.decode()
    assert "beforeend" not in body
    assert "live-status" not in body
    assert 'id="live-clock"' in body


def test_output_of_an_earlier_attempt_is_not_shown(client, alice, running):
    RunOutput.objects.create(run=running, attempt=1, stream="stdout", text="from attempt one\n")
    Run.objects.filter(pk=running.pk).update(attempts=2)
    running.refresh_from_db()
    page = logged_in(client, alice).get(reverse("web:run_detail", args=[running.pk])).content.decode()
    assert "from attempt one" not in page
    assert "attempt 1 lost its worker" in page
    # A page still polling for attempt 1 gets the whole block again.
    answer = client.get(live_url(running, attempt=1), **HX)
    assert answer["HX-Retarget"] == "#run-live"
    assert "from attempt one" not in answer.content.decode()


def test_once_finished_the_poll_answers_the_whole_run_and_stops(client, alice, running):
    Run.objects.filter(pk=running.pk).update(
        status=Run.Status.SUCCEEDED, finished_at=timezone.now(), stdout="all of it\n", result_json='{"a":1}'
    )
    answer = logged_in(client, alice).get(live_url(running), **HX)
    assert answer.status_code == 286
    assert answer["HX-Retarget"] == "#run-live"
    assert answer["HX-Reswap"] == "outerHTML"
    body = answer.content.decode()
    assert "all of it" in body
    assert "live-poll" not in body
    # The finished page keeps the timeline in its details.
    page = client.get(reverse("web:run_detail", args=[running.pk])).content.decode()
    for step in ("Queued", "Started", "Finished"):
        assert f'<span class="step-name">{step}</span>' in page
    assert "Succeeded after 65" in page


def test_a_queued_job_shows_its_place_and_waiting_time(client, alice, running):
    Run.objects.filter(pk=running.pk).update(status=Run.Status.QUEUED, started_at=None, attempts=0, worker="")
    running.refresh_from_db()
    page = logged_in(client, alice).get(reverse("web:run_detail", args=[running.pk])).content.decode()
    assert "number 1 in the LOW queue" in page
    assert re.search(r'waiting <span class="clock">1:1\d</span>', page)


def test_someone_elses_run_is_not_found_and_a_plain_get_goes_to_the_page(client, alice, bob, running):
    assert logged_in(client, bob).get(live_url(running), **HX).status_code == 404
    answer = logged_in(client, alice).get(live_url(running))
    assert answer.status_code == 302
    assert answer["Location"] == reverse("web:run_detail", args=[running.pk])


def test_crafted_poll_parameters_do_no_harm(client, alice, running):
    client = logged_in(client, alice)
    for query in ("after=x&attempt=1", "after=-5&attempt=1", "after=99999999999999999999&attempt=1", "attempt=zz"):
        answer = client.get(f"{reverse('web:run_live', args=[running.pk])}?{query}", **HX)
        assert answer.status_code in (200, 286), query


def test_a_live_run_writes_rows_and_removes_them_at_the_end(running):
    """LiveRun.flush writes each tap's new text (apply pieces with a heading), stop() removes the rows."""
    writer = live.LiveRun(run=running, interval=60)
    tap = writer.tap()
    tap.feed("stdout", b"abc\xe2\x82")
    assert writer.flush() == 1
    tap.feed("stdout", b"\xac\x00\n")
    piece = writer.tap("chunk 1 (rows 1-2)")
    piece.feed("stderr", b"oops\n")
    assert writer.flush() == 2
    assert writer.flush() == 0  # nothing new, nothing written
    output = live.output_after(running)
    assert output.stdout == "abc€\ufffd\n"
    assert output.stderr == "--- chunk 1 (rows 1-2) ---\noops\n"
    writer.stop()
    assert not RunOutput.objects.filter(run=running).exists()


def test_a_tap_past_its_bound_adds_the_cut_note_once(running):
    writer = live.LiveRun(run=running, interval=60)
    tap = writer.tap()
    tap.feed("stdout", b"x" * 10)
    tap.cut("stdout", 10)
    writer.flush()
    tap.cut("stdout", 10)
    writer.flush()
    assert live.output_after(running).stdout == "x" * 10 + runner.live.cut_note(10)
