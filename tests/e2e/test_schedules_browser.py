"""The schedule pages in a real browser, wide and phone-sized: from the script page to a saved schedule,
the next five runs previewed while typing, pause and resume, a run's attempts; axe finds nothing serious.

With OMLWEB_E2E_SCREENSHOTS=docs/screenshots the pages are saved there (schedules-*-1280.png, -390.png).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from scripts_app.errors import ErrorCode
from scripts_app.models import Run, Schedule
from tests.e2e.conftest import assert_accessible, sign_in
from tests.factories import PASSWORD, UserFactory, make_script

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SOURCE = "def report(day: str = 'mon'):\n    return [{'day': day}]\n"


def attempts_of_a_scheduled_run(schedule: Schedule) -> Run:
    """A scheduled run whose worker was lost, and its retry that succeeded (as the retry policy makes them)."""
    now = timezone.now()
    script = schedule.script
    common = {
        "script_version": script.current_version,
        "script_name": script.name,
        "script_owner": script.owner.username,
        "user": schedule.owner,
        "mode": Run.Mode.ASYNC,
        "schedule": schedule,
        "scheduled_for": now - timedelta(minutes=5),
        "parameters": schedule.parameters,
    }
    first = Run.objects.create(
        **common,
        status=Run.Status.FAILED,
        created_at=now - timedelta(minutes=5),
        started_at=now - timedelta(minutes=5),
        finished_at=now - timedelta(minutes=4),
        error_code=ErrorCode.WORKER_LOST,
        error_message="This attempt stopped: its worker process omlweb-low-1 died (killed, or out of memory).",
        attempts=1,
    )
    Run.objects.create(
        **common,
        status=Run.Status.SUCCEEDED,
        retry_of=first,
        retry_number=1,
        created_at=now - timedelta(minutes=4),
        started_at=now - timedelta(minutes=3),
        finished_at=now - timedelta(minutes=3) + timedelta(seconds=2),
        result=[{"day": "tue"}],
        attempts=1,
    )
    return first


def settle(page: Page) -> None:
    """A full-page screenshot resizes the page and back: let the layout settle before the next click, or
    the button moves between the press and the release and the click lands on the form."""
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
    page.wait_for_timeout(100)


@pytest.mark.parametrize("width", [1280, 390])
def test_schedule_a_script_every_morning(live_server, page: Page, screenshot, width):
    alice = UserFactory(username="alice")
    script = make_script(alice, "report", SOURCE)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_viewport_size({"width": width, "height": 900 if width > 800 else 844})
    sign_in(page, live_server, "alice", PASSWORD)

    # From the script page, "Schedule" opens the form with the script chosen.
    page.goto(f"{live_server.url}/scripts/{script.pk}/")
    page.get_by_role("link", name="Schedule", exact=True).click()
    expect(page.get_by_role("heading", name="New schedule")).to_be_visible(timeout=30_000)
    expect(page.locator("#id_script")).to_have_value(str(script.pk))

    # The preview follows the typing, without a reload: an error first, then the next five runs.
    page.evaluate("() => { window.notReloaded = true; }")
    page.get_by_label("Cron expression").fill("0 7 * *")
    expect(page.locator("#schedule-preview")).to_contain_text("does not parse")
    page.get_by_label("Cron expression").fill("0 7 * * 1-5")
    page.get_by_label("Time zone").fill("Europe/Paris")
    expect(page.locator("#schedule-preview")).to_contain_text("At 07:00 on Monday through Friday (Europe/Paris)")
    expect(page.locator("#schedule-preview li")).to_have_count(5)
    expect(page.locator("#schedule-preview li").first).to_contain_text("07:00:00 CET")
    assert page.evaluate("() => window.notReloaded") is True
    page.get_by_label("Parameters").fill('{"day": "tue"}')
    page.get_by_label("Queue it after the running one").check()
    page.locator("#id_max_retries").fill("2")
    assert_accessible(page, "schedule form")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= width
    screenshot(page, f"schedules-form-{width}")
    settle(page)
    # Pressed from the keyboard: after a full-page screenshot a mouse click may land beside the button.
    page.get_by_role("button", name="Save").press("Enter")

    # Its page: what runs, when, and the next five runs on its own clock.
    # A loaded machine may take seconds to answer the POST.
    expect(page.get_by_role("heading", name="report")).to_be_visible(timeout=30_000)
    expect(page.locator(".next-runs li")).to_have_count(5)
    schedule = Schedule.objects.get()
    assert (schedule.cron, schedule.time_zone, schedule.parameters) == ("0 7 * * 1-5", "Europe/Paris", {"day": "tue"})
    assert (schedule.overlap_policy, schedule.max_retries) == ("queue", 2)
    first = attempts_of_a_scheduled_run(schedule)
    page.reload()
    expect(page.get_by_role("region", name="Runs of this schedule").locator("tbody tr")).to_have_count(2)
    assert_accessible(page, "schedule page")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= width
    screenshot(page, f"schedules-detail-{width}")
    settle(page)

    # Pause and resume.
    page.get_by_role("button", name="Pause").press("Enter")
    expect(page.get_by_text("Paused: no run comes until it is resumed.")).to_be_visible()
    page.get_by_role("button", name="Resume").click()
    expect(page.locator(".next-runs li")).to_have_count(5)

    # The list, linked from the navigation.
    nav_link = page.locator("nav[aria-label=Main] a", has_text="Schedules")
    expect(nav_link).to_have_attribute("href", "/schedules/")
    page.goto(f"{live_server.url}/schedules/")  # on a phone the navigation sits behind its menu button
    expect(page.get_by_role("heading", name="Schedules", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name="report")).to_be_visible()
    assert_accessible(page, "schedule list")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= width
    screenshot(page, f"schedules-list-{width}")

    # A run's page lists its attempts and its schedule.
    page.goto(f"{live_server.url}/runs/{first.pk}/")
    expect(page.get_by_text("Attempt 1 of 2")).to_be_visible()
    expect(page.get_by_role("link", name="Attempt 2 of 2")).to_be_visible()
    assert_accessible(page, "run page with attempts")
    screenshot(page, f"schedules-run-attempts-{width}")

    # Delete, through its confirmation.
    page.goto(f"{live_server.url}/schedules/{schedule.pk}/")
    page.get_by_role("link", name="Delete").click()
    page.get_by_role("button", name="Delete").click()
    expect(page.get_by_text("No schedules yet.")).to_be_visible()
    assert not Schedule.objects.exists()
    assert Run.objects.count() == 2, "its runs stay"
    assert errors == []


def test_the_timing_is_checked_again_on_save(live_server, page: Page):
    """A form sent with a bad time zone (the preview aside) is refused on its field, nothing saved."""
    alice = UserFactory(username="alice")
    make_script(alice, "report", SOURCE)
    sign_in(page, live_server, "alice", PASSWORD)
    page.goto(f"{live_server.url}/schedules/new/")
    page.get_by_label("Cron expression").fill("0 7 * * *")
    page.get_by_label("Time zone").fill("Mars/Olympus_Mons")
    page.get_by_role("button", name="Save").click()
    expect(page.locator(".field-error").first).to_contain_text("Unknown time zone")
    assert not Schedule.objects.exists()
