"""Live runs in a real browser with a real Celery worker: output as printed, clock, timeline, bounds.

Screenshots of a running run's page at 1280 and 390 px when OMLWEB_E2E_SCREENSHOTS names a folder
(docs/screenshots/ holds the ones made so).
"""

from __future__ import annotations

import re

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from scripts_app.models import Run, RunOutput
from tests.e2e.conftest import assert_accessible, sign_in
from tests.factories import PASSWORD, UserFactory, make_script
from tests.worker import conftest as worker_conftest
from tests.worker.conftest import Broker, _cluster, publish_on, wait_for

celery_on_broker = worker_conftest.celery_on_broker

pytestmark = [pytest.mark.e2e, pytest.mark.worker, pytest.mark.django_db(transaction=True)]

STREAM_KB = 16

TICKER = """import sys
import time


def ticker(n: int = 8, pause: float = 0.8):
    for i in range(n):
        print(f"tick {i}", flush=True)
        if i == 1:
            print("half way <b>not bold</b>", file=sys.stderr, flush=True)
        time.sleep(pause)
    return [{"ticks": n}]
"""

FLOOD = """import sys
import time


def flood(megabytes: int = 30):
    line = "y" * 1023 + "\\n"
    for _ in range(megabytes * 1024):
        sys.stdout.write(line)
    sys.stdout.flush()
    time.sleep(4)
    return megabytes
"""


@pytest.fixture(scope="module")
def broker(tmp_path_factory) -> Broker:
    return Broker("filesystem", "filesystem://", tmp_path_factory.mktemp("data-live"))


@pytest.fixture
def worker(celery_on_broker, live_server, tmp_path, settings):
    """A real worker writing live output every 0.3 s, with a small stdout bound for the flood test."""
    for cluster in _cluster(celery_on_broker, tmp_path):
        publish_on(cluster, settings)
        settings.MEDIA_ROOT = celery_on_broker.data_dir / "media"
        settings.OMLWEB_LIVE_POLL_SECONDS = 0.5
        cluster.start(
            "live",
            ["LOW", "MEDIUM", "HIGH"],
            OMLWEB_LIVE_FLUSH_SECONDS="0.3",
            OMLWEB_RUN_MAX_STREAM_KB=str(STREAM_KB),
        )
        yield cluster


def submit_job(page: Page, live_server, script, **fields) -> None:
    page.goto(f"{live_server.url}/scripts/{script.pk}/run/")
    for label, value in fields.items():
        page.get_by_label(label, exact=True).fill(value)
    page.get_by_label("Run as a job").check()
    page.get_by_role("button", name="Run", exact=True).click()


def test_a_running_job_shows_its_output_as_it_is_printed(live_server, page: Page, worker, screenshot):
    alice = UserFactory(username="alice")
    script = make_script(alice, "ticker", TICKER)
    sign_in(page, live_server, "alice", PASSWORD)
    page.set_viewport_size({"width": 1280, "height": 900})
    submit_job(page, live_server, script, n="10", pause="0.8")
    # The worker's side first, so that a job that never starts fails with the worker's log.
    wait_for(
        lambda: "tick 1" in "".join(RunOutput.objects.values_list("text", flat=True)),
        timeout=60,
        what="the job's first lines",
        on=worker,
    )
    stdout = page.locator("#live-stdout")
    expect(stdout).to_contain_text("tick 1", timeout=60_000)
    run = Run.objects.get()
    # Early lines are on the page while the run is still going.
    assert run.status == Run.Status.RUNNING
    assert "tick 9" not in stdout.inner_text()
    expect(page.locator("#live-stderr")).to_contain_text("half way <b>not bold</b>")
    expect(page.locator("#live-status")).to_have_attribute("aria-live", "polite")
    expect(page.locator("#live-status .status")).to_have_text("Running")
    expect(page.locator("#live-clock")).to_have_text(re.compile(r"running for \d+:\d\d"))
    expect(page.locator("#live-timeline")).to_contain_text(re.compile(r"Queued \d\d:\d\d:\d\d"))
    expect(page.locator("#live-timeline .current")).to_contain_text("Started")
    # The poll's answer (the partial) has the output too, before the run ends.
    answer = page.request.get(
        f"{live_server.url}/runs/{run.pk}/live/?after=0&attempt={run.attempts}&seen=", headers={"HX-Request": "true"}
    )
    assert answer.status == 200
    assert "tick 0" in answer.text()
    # No focus stealing: the output pane keeps the focus while lines arrive.
    stdout.focus()
    expect(stdout).to_contain_text("tick 4", timeout=30_000)
    assert page.evaluate("() => document.activeElement.id") == "live-stdout"
    assert_accessible(page, "a running job's page")
    screenshot(page, "live-run-1280")
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1")
    screenshot(page, "live-run-390")
    page.set_viewport_size({"width": 1280, "height": 900})
    assert Run.objects.get().status == Run.Status.RUNNING
    page.evaluate("() => { window.notReloaded = true; }")
    # Then the result, without a reload; the timeline stays in the details.
    expect(page.locator(".run-status .status")).to_have_text("Succeeded", timeout=60_000)
    assert page.evaluate("() => window.notReloaded") is True
    finished = page.locator(".facts ol.steps")
    for step in ("Queued", "Started", "Finished"):
        expect(finished).to_contain_text(re.compile(step + r" \d\d:\d\d:\d\d"))
    expect(page.locator("pre.stream").first).to_contain_text("tick 9")
    assert_accessible(page, "the finished job's page")
    run = Run.objects.get()
    assert run.stdout == "".join(f"tick {i}\n" for i in range(10))
    assert run.stderr == "half way <b>not bold</b>\n"
    # Removed by the writer just after the outcome is recorded.
    wait_for(lambda: not RunOutput.objects.filter(run=run).exists(), timeout=10, what="the live rows to go")


def test_a_flood_of_output_stays_within_the_bound_live_and_stored(live_server, page: Page, worker):
    """30 MB printed at once with a 16 kB bound: the live rows hold 16 kB and the cut note, as stored."""
    alice = UserFactory(username="alice")
    script = make_script(alice, "flood", FLOOD)
    sign_in(page, live_server, "alice", PASSWORD)
    submit_job(page, live_server, script, megabytes="30")
    note = f"[... output cut at {STREAM_KB * 1024} bytes ...]"
    expect(page.locator("#live-stdout")).to_contain_text(note, timeout=60_000)
    run = Run.objects.get()
    assert run.status == Run.Status.RUNNING
    texts = list(RunOutput.objects.filter(run=run, stream="stdout").values_list("text", flat=True))
    live_text = "".join(texts)
    assert len(live_text) == STREAM_KB * 1024 + len("\n" + note)
    assert live_text.endswith(note)
    shown = page.locator("#live-stdout").inner_text()
    assert shown.endswith(note)
    assert shown.removesuffix(note).count("y") == STREAM_KB * 1024 - STREAM_KB
    wait_for(lambda: Run.objects.get(pk=run.pk).is_finished, timeout=60, what="the flood job to end", on=worker)
    run.refresh_from_db()
    assert run.status == Run.Status.SUCCEEDED
    assert run.stdout == live_text
    # Removed by the writer just after the outcome is recorded.
    wait_for(lambda: not RunOutput.objects.filter(run=run).exists(), timeout=10, what="the live rows to go")


@pytest.mark.django_db(transaction=True)
def test_a_run_that_waits_for_its_answer_shows_its_output_while_the_page_waits(live_server, page: Page, screenshot):
    """ "Run now and wait" from the form: the form page shows the lines as they are printed, then the
    result page opens. The run runs in the live server's own process, no worker needed."""
    alice = UserFactory(username="alice")
    script = make_script(alice, "ticker", TICKER)
    sign_in(page, live_server, "alice", PASSWORD)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"{live_server.url}/scripts/{script.pk}/run/")
    form_url = page.url
    page.get_by_label("n", exact=True).fill("8")
    page.get_by_label("pause", exact=True).fill("0.7")
    page.get_by_label("Run now and wait").check()
    # Playwright reads no page while a navigation is pending, and the answer comes once the run ended:
    # what the waiting page asked for and got is recorded on its way instead.
    polls = []

    def record(route):
        response = route.fetch()
        polls.append((timezone.now(), route.request.url, response.status, response.text()))
        route.fulfill(response=response)

    page.route(lambda url: "/live/?" in url, record)
    page.get_by_role("button", name="Run", exact=True).click(timeout=60_000)
    page.wait_for_url("**/runs/*/", timeout=60_000)
    run = Run.objects.get()
    early = [body for at, url, status, body in polls if status == 200 and at < run.finished_at]
    assert all(str(run.pk) in url and "attempt=0" in url for _, url, _, _ in polls)
    assert any("tick 1" in body for body in early), polls
    first = next(body for body in early if "tick 0" in body)
    assert "tick 7" not in first
    assert 'hx-swap-oob="beforeend:#live-stdout"' in first
    expect(page.locator(".run-status .status")).to_have_text("Succeeded", timeout=60_000)
    assert "/runs/" in page.url
    assert run.mode == Run.Mode.SYNC
    assert run.stdout == "".join(f"tick {i}\n" for i in range(8))
    # Removed by the writer just after the outcome is recorded.
    wait_for(lambda: not RunOutput.objects.filter(run=run).exists(), timeout=10, what="the live rows to go")
    # The panel as it stood (axe cannot read a page waiting for its answer): shown again, checked.
    page.goto(form_url)
    page.evaluate("() => { document.getElementById('sync-live').hidden = false; }")
    assert_accessible(page, "the run form with its live panel")
