"""The main paths in a real browser: write a script, run it, see its figure and table; watch a job."""

from __future__ import annotations

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from scripts_app.models import Run
from scripts_app.services.pipeline import RunRequest, record_run
from tests.e2e.conftest import assert_accessible, sign_in
from tests.factories import PASSWORD, UserFactory, make_script

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

FIGURE_SCRIPT = """import matplotlib.pyplot as plt
import pandas as pd


def dots(count: int = 5, colour: str = "r"):
    fig = plt.figure()
    fig.add_subplot(111).scatter(range(count), range(count), c=colour)
    fig.suptitle("Dots")
    return pd.DataFrame({"id": list(range(1, count + 1)), "val": [i / 10 for i in range(count)]})
"""


def test_write_run_and_see_figure_and_table(live_server, page: Page, screenshot):
    """Sign in, write a script in the editor, run it, and see its image and its table."""
    UserFactory(username="alice")
    sign_in(page, live_server, "alice", PASSWORD)
    expect(page.get_by_role("heading", name="Scripts")).to_be_visible()
    screenshot(page, "01-scripts-empty")

    page.get_by_role("link", name="New script").click()
    page.get_by_label("Name").fill("dots")
    # The code editor replaces the textarea: line numbers and highlighting are its own.
    expect(page.locator(".CodeMirror")).to_be_visible()
    page.evaluate("source => window.omlwebEditor.setValue(source)", FIGURE_SCRIPT)
    expect(page.locator(".CodeMirror-code .CodeMirror-linenumber").first).to_be_visible()
    expect(page.locator(".cm-keyword").first).to_have_text("import")
    screenshot(page, "02-editor")
    assert_accessible(page, "editor")
    page.get_by_role("button", name="Create script").click()

    expect(page.get_by_role("heading", name="dots")).to_be_visible()
    screenshot(page, "03-script-detail")
    page.get_by_role("link", name="Full run form").click()
    expect(page.get_by_label("count")).to_have_value("5")
    page.get_by_label("count").fill("4")
    screenshot(page, "04-run-form")
    assert_accessible(page, "run form")
    page.get_by_role("button", name="Run", exact=True).click()

    expect(page.locator(".status")).to_have_text("Succeeded")
    image = page.get_by_role("img", name="Dots 1")
    expect(image).to_be_visible()
    assert page.evaluate("img => img.naturalWidth", image.element_handle()) > 0
    table = page.locator("table.data")
    expect(table.locator("thead th")).to_have_text(["id", "val"])
    expect(table.locator("tbody tr")).to_have_count(4)
    screenshot(page, "05-run-result")
    assert_accessible(page, "run result")
    run = Run.objects.get()
    assert run.parameters == {"count": 4, "colour": "r"}


def test_a_syntax_error_is_marked_in_the_editor(live_server, page: Page):
    """A syntax error is shown, with its line marked, while typing and after saving."""
    UserFactory(username="alice")
    sign_in(page, live_server, "alice", PASSWORD)
    page.goto(live_server.url + "/scripts/new/")
    page.get_by_label("Name").fill("broken")
    page.evaluate("() => window.omlwebEditor.setValue('def broken():\\n    return (\\n\\nx = 1\\n')")
    # Checked while typing, before any save.
    expect(page.locator("#source-check")).to_contain_text("Line 2")
    expect(page.locator(".cm-error-line")).to_have_count(1)
    page.get_by_role("button", name="Create script").click()
    expect(page.locator(".field-error")).to_contain_text("line 2")
    expect(page.locator(".cm-error-line")).to_have_count(1)


def test_a_queued_run_turns_finished_without_reloading(live_server, page: Page, screenshot):
    """The run page of a queued run polls, and shows the result once the run is finished."""
    alice = UserFactory(username="alice")
    script = make_script(alice, "slow", "def slow():\n    return {'done': True}\n")
    run = record_run(RunRequest(script=script, user=alice, parameters={}, asynchronous=True))
    sign_in(page, live_server, "alice", PASSWORD)
    page.goto(f"{live_server.url}/runs/{run.pk}/")
    expect(page.locator(".status")).to_have_text("Queued")
    page.evaluate("() => { window.notReloaded = true; }")
    screenshot(page, "06-run-queued")
    # What a worker does when it finishes the run.
    Run.objects.filter(pk=run.pk).update(
        status=Run.Status.SUCCEEDED, started_at=timezone.now(), finished_at=timezone.now(), result_json='{"done":true}'
    )
    expect(page.locator(".status")).to_have_text("Succeeded", timeout=10_000)
    expect(page.locator("pre.json")).to_contain_text('"done": true')
    assert page.evaluate("() => window.notReloaded") is True


def test_another_user_cannot_open_a_private_script(live_server, page: Page):
    """Bob gets 'not found' for Alice's private script, and it is not in his list."""
    alice = UserFactory(username="alice")
    UserFactory(username="bob")
    script = make_script(alice, "private_thing", "def private_thing():\n    return 1\n")
    sign_in(page, live_server, "bob", PASSWORD)
    expect(page.get_by_role("heading", name="Scripts")).to_be_visible()
    expect(page.get_by_text("private_thing")).to_have_count(0)
    response = page.goto(f"{live_server.url}/scripts/{script.pk}/")
    assert response.status == 404


def test_everything_works_without_javascript(live_server, browser, screenshot):
    """With JavaScript off: sign in, write a script in the plain textarea, run it, see its table."""
    UserFactory(username="alice")
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    sign_in(page, live_server, "alice", PASSWORD)
    page.goto(live_server.url + "/scripts/new/")
    expect(page.locator(".CodeMirror")).to_have_count(0)
    page.get_by_label("Name").fill("rows")
    page.get_by_label("Source").fill("def rows(n: int = 2):\n    return [{'i': i} for i in range(n)]\n")
    page.get_by_role("button", name="Create script").click()
    page.get_by_role("link", name="Full run form").click()
    page.get_by_label("n", exact=True).fill("3")
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page.locator(".status")).to_have_text("Succeeded")
    expect(page.locator("table.data tbody tr")).to_have_count(3)
    screenshot(page, "07-no-javascript")
    context.close()
