"""Every main page opens in a real browser, on a wide and on a phone-sized screen, without errors."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from scripts_app.services.pipeline import RunRequest, start_run
from scripts_app.services.scripts import script_update
from scripts_app.services.tokens import personal_token_create
from tests.e2e.conftest import assert_accessible, sign_in
from tests.factories import PASSWORD, UserFactory, make_script

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize(
    "viewport", [{"width": 1280, "height": 900}, {"width": 390, "height": 844}], ids=["wide", "phone"]
)
def test_main_pages_open(live_server, page: Page, screenshot, viewport):
    """Scripts, a script, versions with a diff, runs, a run, tokens, users and sign-in all render."""
    root = UserFactory(username="root", is_superuser=True)
    script = make_script(root, "report", "def report(n: int = 3):\n    return [{'i': i} for i in range(n)]\n")
    script_update(script=script, by=root, source=script.source.replace("range(n)", "range(n + 1)"))
    run = start_run(RunRequest(script=script, user=root, parameters={"n": 2}))
    personal_token_create(user=root, name="nightly")
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_viewport_size(viewport)
    suffix = "wide" if viewport["width"] > 800 else "phone"

    page.goto(live_server.url + "/accounts/login/")
    screenshot(page, f"10-login-{suffix}")
    assert_accessible(page, "login")
    sign_in(page, live_server, "root", PASSWORD)
    pages = {
        "scripts": ("/scripts/", "Scripts"),
        "script": (f"/scripts/{script.pk}/", "report"),
        "versions": (f"/scripts/{script.pk}/versions/?a=1&b=2", "Versions of report"),
        "runs": ("/runs/", "All runs"),
        "run": (f"/runs/{run.pk}/", "Run of root/report"),
        "tokens": ("/tokens/", "API tokens"),
        "users": ("/users/", "Users"),
    }
    for name, (path, heading) in pages.items():
        page.goto(live_server.url + path)
        expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
        # Wide content scrolls inside its own box; the page itself never scrolls sideways.
        assert page.evaluate("() => document.documentElement.scrollWidth") <= viewport["width"], name
        assert_accessible(page, name)
        screenshot(page, f"11-{name}-{suffix}")
    assert errors == []


def test_keyboard_only_reaches_the_editor_and_leaves_it(live_server, page: Page):
    """Tab reaches the editor, Tab inside it indents, Esc moves on to the next field."""
    UserFactory(username="alice")
    sign_in(page, live_server, "alice", PASSWORD)
    page.goto(live_server.url + "/scripts/new/")
    page.get_by_label("Name").focus()
    page.keyboard.press("Tab")
    # A new script opens on an example: select it all and write over it.
    page.keyboard.press("Control+a")
    page.keyboard.type("def f():")
    page.keyboard.press("Enter")
    page.keyboard.type("return 1")
    assert page.evaluate("() => window.omlwebEditor.getValue()") == "def f():\n    return 1"
    page.keyboard.press("Escape")
    expect(page.get_by_label("Description")).to_be_focused()
