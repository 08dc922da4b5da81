"""Named parameter presets on the full run form (issue #13: "named parameter presets, reusable from the run
form and the API"), in a real browser: pick one and the fields fill, save the current parameters as one,
run with it; axe-core on each state."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from scripts_app.models import ParameterPreset, Run
from scripts_app.services.presets import preset_save
from scripts_app.services.scripts import script_update
from tests.e2e.conftest import assert_accessible, sign_in
from tests.factories import PASSWORD, UserFactory, make_script

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SOURCE = """def squares(count: int = 3, label: str = "n", scales: list[float] = [1.0]):
    return {"label": label, "values": [i * i * scales[0] for i in range(count)]}
"""


def test_a_preset_fills_the_run_form_and_the_form_saves_one(live_server, page: Page):
    alice = UserFactory(username="alice")
    script = make_script(alice, "squares", SOURCE)
    preset_save(script=script, user=alice, name="Five big", parameters={"count": 5, "scales": [2.5]})
    sign_in(page, live_server, "alice", PASSWORD)
    page.goto(f"{live_server.url}/scripts/{script.pk}/run/")
    expect(page.get_by_label("count")).to_have_value("3")
    picker = page.get_by_label("Preset", exact=True)
    expect(picker.locator("option")).to_have_text(["—", "Five big"])
    assert_accessible(page, "run form with a preset picker")

    # Picking fills the fields (those the preset names; the others keep their values).
    picker.select_option("Five big")
    expect(page.get_by_label("count")).to_have_value("5")
    expect(page.get_by_label("scales")).to_have_value("[2.5]")
    expect(page.get_by_label("label")).to_have_value("n")

    # Save what the form holds now as a second preset, without leaving the page.
    page.get_by_label("label").fill("five")
    page.get_by_label("Preset name").fill("Five named")
    page.get_by_role("button", name="Save as preset").click()
    expect(page.locator("#presets")).to_contain_text("Preset Five named saved.")
    assert page.url.endswith(f"/scripts/{script.pk}/run/")
    saved = ParameterPreset.objects.get(name="Five named")
    assert (saved.owner, saved.parameters) == (alice, {"count": 5, "label": "five", "scales": [2.5]})
    # The picker learns it at once.
    expect(picker.locator("option")).to_have_text(["—", "Five big", "Five named"])
    assert_accessible(page, "run form, preset saved")

    picker.select_option("Five big")
    expect(page.get_by_label("label")).to_have_value("five")  # not in that preset: left as typed
    picker.select_option("Five named")
    page.locator("#run-form").get_by_role("button", name="Run", exact=True).click()
    expect(page.locator(".status").first).to_have_text("Succeeded", timeout=30_000)
    run = Run.objects.get()
    assert run.parameters == {"count": 5, "label": "five", "scales": [2.5]}
    assert run.result == {"label": "five", "values": [0.0, 2.5, 10.0, 22.5, 40.0]}


def test_a_refused_preset_says_why_and_a_use_link_fills_the_form_on_the_server(live_server, page: Page):
    alice = UserFactory(username="alice")
    script = make_script(alice, "squares", SOURCE)
    sign_in(page, live_server, "alice", PASSWORD)
    page.goto(f"{live_server.url}/scripts/{script.pk}/run/")
    page.get_by_label("count").fill("2.5")
    page.get_by_label("Preset name").fill("bad")
    page.get_by_role("button", name="Save as preset").click()
    expect(page.locator("#presets")).to_contain_text("Preset not saved")
    assert ParameterPreset.objects.count() == 0
    assert_accessible(page, "run form, preset refused")

    # An older version with another signature: its run form reads the preset against that version.
    preset_save(script=script, user=alice, name="Seven", parameters={"count": 7})
    script_update(script=script, by=alice, source=SOURCE.replace("count: int = 3", "count: int = 4"))
    page.goto(f"{live_server.url}/scripts/{script.pk}/run/?version=1")
    page.get_by_role("link", name="Use preset Seven").click()
    expect(page.get_by_label("count")).to_have_value("7")
    assert "version=1" in page.url
    expect(page.locator("#run-form input[name='version']")).to_have_value("1")
    expect(page.get_by_label("Version")).to_have_value("1")
