"""Defects found by walking the pages as users do, each shown in a real browser (issue #13, "Broken")."""

from __future__ import annotations

import pandas as pd
import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from scripts_app.models import Dataset, Run, Script
from scripts_app.services.pipeline import RunRequest, record_run
from scripts_app.services.scripts import script_update
from tests.e2e.conftest import assert_accessible, sign_in
from tests.factories import PASSWORD, UserFactory, make_dataset, make_script

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_restore_on_the_versions_page_restores_and_keeps_the_csrf_token_out_of_urls(live_server, page: Page):
    """Restore posts (a new current version with the old source); comparing puts no CSRF token in the URL."""
    alice = UserFactory(username="alice")
    script = make_script(alice, "greet", "def greet():\n    return 'v1'\n")
    script_update(script=script, by=alice, source="def greet():\n    return 'v2'\n")
    sign_in(page, live_server, "alice", PASSWORD)
    page.goto(f"{live_server.url}/scripts/{script.pk}/versions/")

    page.get_by_label("Compare from v1").check()
    page.get_by_label("Compare to v2").check()
    page.get_by_role("button", name="Show the difference").click()
    expect(page.get_by_role("heading", name="Difference from v1 to v2")).to_be_visible()
    assert "csrfmiddlewaretoken" not in page.url

    page.get_by_role("button", name="Restore").click()
    expect(page.get_by_text("Restored version 1 as version 3.")).to_be_visible()
    assert "csrfmiddlewaretoken" not in page.url
    script.refresh_from_db()
    assert script.current_version.number == 3
    assert script.current_version.source == "def greet():\n    return 'v1'\n"


def test_an_apply_mode_runs_without_typing_into_the_ignored_first_parameter(live_server, page: Page):
    """index-apply gives the first argument itself: the form submits with that field left empty."""
    alice = UserFactory(username="alice")
    script = make_script(alice, "square", "def square(i, scale: int = 1):\n    return i * i * scale\n")
    sign_in(page, live_server, "alice", PASSWORD)
    page.goto(f"{live_server.url}/scripts/{script.pk}/run/")
    page.get_by_label("index-apply").check()
    page.get_by_label("Times", exact=True).fill("3")
    page.get_by_role("button", name="Run", exact=True).click()

    expect(page.locator(".status").first).to_have_text("Succeeded")
    run = Run.objects.get(script_version__script=script)
    assert run.kind == Run.Kind.INDEX_APPLY
    assert run.result == [1, 4, 9]


def test_fields_of_other_modes_stay_hidden_and_out_of_the_tab_order(live_server, page: Page, screenshot):
    """In do-eval the group-by, order-by and job fields are hidden, grid layout or not."""
    alice = UserFactory(username="alice")
    script = make_script(alice, "hello", "def hello():\n    return 1\n")
    sign_in(page, live_server, "alice", PASSWORD)
    page.goto(f"{live_server.url}/scripts/{script.pk}/run/")
    for label in ("Group by", "Order by", "Job time limit (seconds)", "Job comments"):
        expect(page.get_by_label(label)).to_be_hidden()
    screenshot(page, "12-run-form")
    page.get_by_label("group-apply").check()
    expect(page.get_by_label("Group by")).to_be_visible()


def test_deleting_a_dataset_asks_first(live_server, page: Page, screenshot):
    """The Delete button opens a confirmation; the dataset goes only when that is confirmed."""
    alice = UserFactory(username="alice")
    dataset = make_dataset(alice, "SALES", pd.DataFrame({"x": [1, 2]}))
    sign_in(page, live_server, "alice", PASSWORD)
    page.goto(f"{live_server.url}/datasets/{dataset.pk}/")
    page.get_by_role("link", name="Delete SALES").click()
    expect(page.get_by_role("heading", name="Delete the dataset SALES?")).to_be_visible()
    assert Dataset.objects.filter(pk=dataset.pk).exists()
    screenshot(page, "12-dataset-confirm-delete")
    page.get_by_role("link", name="Keep it").click()
    assert Dataset.objects.filter(pk=dataset.pk).exists()

    page.get_by_role("link", name="Delete SALES").click()
    page.get_by_role("button", name="Delete", exact=True).click()
    expect(page.get_by_text("Deleted the dataset SALES.")).to_be_visible()
    assert not Dataset.objects.filter(pk=dataset.pk).exists()


def test_messages_never_contradict_the_page(live_server, page: Page):
    """The cancel message says what was asked, not a state the badge contradicts; a live check clears old errors."""
    alice = UserFactory(username="alice")
    script = make_script(alice, "wait", "def wait():\n    return 1\n")
    run = record_run(RunRequest(script=script, user=alice, parameters={}, asynchronous=True))
    sign_in(page, live_server, "alice", PASSWORD)
    page.goto(f"{live_server.url}/runs/{run.pk}/")
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator(".status")).to_have_text("Cancelled")
    expect(page.locator(".messages")).to_have_text("Cancel requested.")

    page.goto(f"{live_server.url}/scripts/new/")
    page.get_by_label("Name").fill("fresh")
    page.evaluate("() => window.omlwebEditor.setValue('')")
    page.get_by_role("button", name="Create script").click()
    expect(page.get_by_text("This field is required.")).to_be_visible()
    page.evaluate("source => window.omlwebEditor.setValue(source)", "def fresh():\n    return 1\n")
    expect(page.locator(".check-ok")).to_be_visible()
    expect(page.get_by_text("This field is required.")).to_have_count(0)
    page.get_by_role("button", name="Create script").click()
    expect(page.get_by_role("heading", name="fresh")).to_be_visible()
    assert Script.objects.filter(name="fresh").exists()


def test_statuses_read_as_words(live_server, page: Page):
    """TIMED_OUT reads "Timed out" on the run page and in the history, not "Timed_out"."""
    alice = UserFactory(username="alice")
    script = make_script(alice, "slow", "def slow():\n    return 1\n")
    run = record_run(RunRequest(script=script, user=alice, parameters={}, asynchronous=True))
    Run.objects.filter(pk=run.pk).update(status=Run.Status.TIMED_OUT, finished_at=timezone.now())
    sign_in(page, live_server, "alice", PASSWORD)
    page.goto(f"{live_server.url}/runs/{run.pk}/")
    expect(page.locator(".status")).to_have_text("Timed out")
    page.goto(f"{live_server.url}/runs/")
    expect(page.locator("td .status")).to_have_text("Timed out")


def test_without_javascript_a_job_page_does_not_claim_to_update_itself(live_server, browser):
    """With scripts off, a queued job's page offers a reload instead of promising live updates."""
    alice = UserFactory(username="alice")
    script = make_script(alice, "later", "def later():\n    return 1\n")
    run = record_run(RunRequest(script=script, user=alice, parameters={}, asynchronous=True))
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    sign_in(page, live_server, "alice", PASSWORD)
    page.goto(f"{live_server.url}/runs/{run.pk}/")
    expect(page.locator(".status")).to_have_text("Queued")
    expect(page.get_by_text("(updates by itself)")).to_be_hidden()
    expect(page.get_by_role("link", name="reload")).to_be_visible()
    context.close()


def test_with_javascript_a_job_page_says_it_updates_itself(live_server, page: Page):
    """The same page with scripts on promises live updates (and keeps its promise: see test_browser)."""
    alice = UserFactory(username="alice")
    script = make_script(alice, "later", "def later():\n    return 1\n")
    run = record_run(RunRequest(script=script, user=alice, parameters={}, asynchronous=True))
    sign_in(page, live_server, "alice", PASSWORD)
    page.goto(f"{live_server.url}/runs/{run.pk}/")
    expect(page.get_by_text("(updates by itself)")).to_be_visible()
    expect(page.get_by_role("link", name="reload")).to_have_count(0)


def test_a_new_script_starts_from_a_template_that_runs(live_server, page: Page):
    """The editor opens on a working example; clicking anywhere in its box types there; Ctrl+S saves."""
    alice = UserFactory(username="alice")
    sign_in(page, live_server, "alice", PASSWORD)
    page.goto(f"{live_server.url}/scripts/new/")
    expect(page.locator(".CodeMirror")).to_contain_text("def main(rows: int = 5):")
    template = page.evaluate("() => window.omlwebEditor.getValue()")
    page.get_by_label("Name").fill("squares")
    # An empty editor is one line tall inside a taller box: a click low in the box still reaches it.
    page.evaluate("() => window.omlwebEditor.setValue('')")
    page.get_by_label("Name").focus()
    # The editor is a bounded box now (taller than the rest of a 720 px screen below the name): bring it in view.
    page.locator(".editor-box .CodeMirror").scroll_into_view_if_needed()
    box = page.locator(".editor-box .CodeMirror").bounding_box()
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] - 5)
    page.keyboard.type("# saved from the keyboard\n")
    page.evaluate("source => window.omlwebEditor.replaceRange(source, {line: 1, ch: 0})", template)
    page.keyboard.press("Control+s")
    expect(page.get_by_role("heading", name="squares")).to_be_visible()
    script = Script.objects.get(owner=alice, name="squares")
    assert "# saved from the keyboard" in script.source

    page.get_by_role("link", name="Full run form").click()
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page.locator(".status")).to_have_text("Succeeded")
    expect(page.get_by_role("img", name="Squares 1")).to_be_visible()
    expect(page.locator("table.data tbody tr")).to_have_count(5)


def test_on_a_phone_the_navigation_folds_behind_a_menu_button(live_server, page: Page, screenshot):
    """A phone shows a one-row header with a Menu button that opens the links; a desktop shows the links."""
    UserFactory(username="alice")
    page.set_viewport_size({"width": 390, "height": 844})
    sign_in(page, live_server, "alice", PASSWORD)
    menu = page.get_by_role("button", name="Menu")
    expect(menu).to_be_visible()
    expect(page.get_by_role("link", name="Runs")).to_be_hidden()
    assert page.locator(".site-header").bounding_box()["height"] < 70
    screenshot(page, "13-phone-menu-closed")
    menu.click()
    expect(menu).to_have_attribute("aria-expanded", "true")
    screenshot(page, "13-phone-menu-open")
    page.get_by_role("link", name="Runs").click()
    expect(page.get_by_role("heading", name="My runs")).to_be_visible()

    page.set_viewport_size({"width": 1280, "height": 900})
    expect(page.get_by_role("button", name="Menu")).to_be_hidden()
    expect(page.get_by_role("link", name="Runs")).to_be_visible()


@pytest.mark.parametrize("width", [1280, 390], ids=["wide", "phone"])
def test_compare_two_runs_from_the_run_page(live_server, page: Page, screenshot, width):
    """From a run's page, pick an earlier run and see changed cells, added rows and both figures."""
    from scripts_app.services.pipeline import RunRequest, start_run

    alice = UserFactory(username="alice")
    source = (
        "import matplotlib.pyplot as plt\n\n\ndef grow(k: float = 1.0, more: bool = False):\n"
        "    plt.figure().suptitle(f'k={k}')\n"
        "    rows = [{'id': i, 'value': i * k} for i in range(1, 4)]\n"
        "    return rows + ([{'id': 4, 'value': 4 * k}] if more else [])\n"
    )
    script = make_script(alice, "grow", source)
    start_run(RunRequest(script=script, user=alice, parameters={"k": 1.0}, graphics=True))
    newer = start_run(RunRequest(script=script, user=alice, parameters={"k": 2.0, "more": True}, graphics=True))
    page.set_viewport_size({"width": width, "height": 900})
    sign_in(page, live_server, "alice", PASSWORD)
    page.goto(f"{live_server.url}/runs/{newer.pk}/")
    page.get_by_role("button", name="Compare").click()
    expect(page.get_by_role("heading", name="Compare runs")).to_be_visible()
    expect(page.locator(".compare-summary")).to_have_text("3 rows changed, 1 added, 0 removed, 0 the same.")
    expect(page.locator("td.cell-changed").first).to_have_text("1.0 2.0")
    expect(page.get_by_role("img", name="Before: k=1.0 1")).to_be_visible()
    expect(page.get_by_role("img", name="After: k=2.0 1")).to_be_visible()
    assert page.evaluate("() => document.documentElement.scrollWidth") <= width
    assert_accessible(page, "compare")
    screenshot(page, f"14-compare-{'wide' if width > 800 else 'phone'}")
