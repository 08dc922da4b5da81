"""The audit trail in a real browser: an auditor finds who changed a script, opens the event, exports."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Group
from playwright.sync_api import Page, expect

from scripts_app.roles import ANALYSTS, AUDITORS
from scripts_app.services.scripts import script_grant, script_update
from tests.e2e.conftest import assert_accessible, sign_in
from tests.factories import PASSWORD, UserFactory, make_script

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.mark.parametrize(
    "viewport", [{"width": 1280, "height": 900}, {"width": 390, "height": 844}], ids=["wide", "phone"]
)
def test_an_auditor_finds_a_change_and_opens_it(live_server, page: Page, screenshot, viewport):
    alice = UserFactory(username="alice")
    alice.groups.add(Group.objects.get_or_create(name=ANALYSTS)[0])
    bob = UserFactory(username="bob")
    audrey = UserFactory(username="audrey")
    audrey.groups.add(Group.objects.get_or_create(name=AUDITORS)[0])
    script = make_script(alice, "quarterly_report", "def quarterly_report(q=1):\n    return q\n")
    script_update(script=script, by=alice, source="def quarterly_report(q=2):\n    return q\n", description="Q2")
    script_grant(script=script, grantee=bob)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_viewport_size(viewport)
    suffix = "wide" if viewport["width"] > 800 else "phone"

    sign_in(page, live_server, "audrey", PASSWORD)
    if viewport["width"] < 800:
        page.get_by_role("button", name="Menu").click()
    page.get_by_role("link", name="Audit", exact=True).click()
    expect(page.get_by_role("heading", name="Audit trail")).to_be_visible()
    expect(page.get_by_role("cell", name="script.grant")).to_be_visible()
    assert page.evaluate("() => document.documentElement.scrollWidth") <= viewport["width"]
    assert_accessible(page, "audit trail")
    screenshot(page, f"audit-list-{suffix}")

    page.get_by_label("Action").select_option("script.new_version")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_role("cell", name="script.new_version")).to_be_visible()
    expect(page.get_by_role("cell", name="script.grant")).to_have_count(0)
    page.get_by_role("link", name="script.new_version").first.click()
    expect(page.get_by_role("heading", name="What changed")).to_be_visible()
    expect(page.get_by_role("rowheader", name="description")).to_be_visible()
    assert page.evaluate("() => document.documentElement.scrollWidth") <= viewport["width"]
    assert_accessible(page, "audit event")
    screenshot(page, f"audit-event-{suffix}")
    page.get_by_role("link", name="Open it as it is now").click()
    expect(page).to_have_url(re.compile(rf"/scripts/{script.pk}/versions/2/$"))
    assert errors == []
