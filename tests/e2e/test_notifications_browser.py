"""The notifications pages in a real browser: create a webhook rule, see its secret and deliveries."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from scripts_app.models import NotificationDelivery, NotificationRule
from scripts_app.services import notifications
from tests.e2e.conftest import assert_accessible, sign_in
from tests.factories import PASSWORD, UserFactory, make_script

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def shoot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@pytest.mark.parametrize("width", [1280, 390], ids=["wide", "phone"])
def test_create_a_webhook_rule_and_read_its_deliveries(live_server, page: Page, width):
    alice = UserFactory(username="alice", email="alice@example.org")
    make_script(alice, "nightly_report", "def main():\n    return 1\n")
    mail = notifications.rule_create(owner=alice, name="Mail me failures", channel="EMAIL", longer_than_seconds=600)
    NotificationDelivery.objects.create(
        rule=mail, event="failure", channel="EMAIL", target=alice.email, status="SENT", response_excerpt="Accepted"
    )
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_viewport_size({"width": width, "height": 900})
    suffix = "wide" if width > 800 else "phone"
    sign_in(page, live_server, "alice", PASSWORD)

    page.get_by_role("link", name="Notifications").click() if width > 800 else page.goto(
        live_server.url + "/notifications/"
    )
    expect(page.get_by_role("heading", name="Notifications", exact=True)).to_be_visible()
    page.get_by_label("Name").fill("Report webhook")
    page.get_by_label("Runs of").select_option(label="alice/nightly_report")
    page.get_by_label("When a run succeeds").check()
    page.get_by_label("Webhook", exact=True).check()
    page.get_by_label("Webhook URL").fill("https://hooks.example.org/omlweb")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= width
    assert_accessible(page, "notifications list")
    shoot(page, f"notifications-list-{suffix}")
    page.get_by_role("button", name="Create rule").click()

    expect(page.get_by_role("heading", name="Report webhook")).to_be_visible()
    rule = NotificationRule.objects.get(name="Report webhook")
    assert rule.script.name == "nightly_report"
    assert rule.on_success is True
    expect(page.get_by_label("Secret")).to_have_value(rule.secret)
    NotificationDelivery.objects.create(
        rule=rule,
        event="failure",
        channel="WEBHOOK",
        target=rule.url,
        status="FAILED",
        status_code=500,
        error="The receiver answered HTTP 500.",
        response_excerpt='{"error": "try later"}',
    )
    NotificationDelivery.objects.create(
        rule=rule, event="failure", channel="WEBHOOK", target=rule.url, attempt=2, status="SENT", status_code=200
    )
    page.reload()
    expect(page.get_by_role("cell", name="The receiver answered HTTP 500.")).to_be_visible()
    assert page.evaluate("() => document.documentElement.scrollWidth") <= width
    assert_accessible(page, "notification rule")
    shoot(page, f"notifications-rule-{suffix}")
    assert errors == []
