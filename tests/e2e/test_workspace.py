"""The script page as a workspace, in a real browser: edit, save with a message, run beside the editor,
presets, keyboard only (issue #13, "Write and run in one place")."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from scripts_app.models import ParameterPreset, Run, Script
from tests.e2e.conftest import assert_accessible, sign_in
from tests.factories import PASSWORD, UserFactory, make_script

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TABLE_SCRIPT = """import pandas as pd


def squares(count: int = 3, label: str = "n"):
    print("making", count)
    return pd.DataFrame({label: list(range(count)), "square": [i * i / 3 for i in range(count)]})
"""


def open_script(page: Page, live_server, script: Script) -> None:
    page.goto(f"{live_server.url}/scripts/{script.pk}/")
    expect(page.locator(".CodeMirror")).to_be_visible()


def test_run_beside_the_editor_shows_the_result_without_leaving_the_page(live_server, page: Page):
    alice = UserFactory(username="alice")
    script = make_script(alice, "squares", TABLE_SCRIPT)
    sign_in(page, live_server, "alice", PASSWORD)
    open_script(page, live_server, script)
    # The run panel is beside the editor at desktop width.
    editor_box = page.locator(".workspace-editor").bounding_box()
    panel_box = page.locator(".workspace-run").bounding_box()
    assert panel_box["x"] > editor_box["x"] + editor_box["width"] - 1
    assert_accessible(page, "script page")

    url = page.url
    page.get_by_label("count").fill("4")
    page.locator("#run-form").get_by_role("button", name="Run", exact=True).click()
    result = page.locator("#run-result")
    expect(result.locator(".status")).to_have_text("Succeeded", timeout=30_000)
    assert page.url == url
    expect(result.locator("table.data thead th")).to_have_text(["n", "square"])
    expect(result.locator("table.data tbody tr")).to_have_count(4)
    # Numbers at a readable precision, right-aligned.
    expect(result.locator("td.num").last).to_have_text("3")
    expect(result.get_by_label("Standard output")).to_contain_text("making 4")
    assert_accessible(page, "script page with a result")
    run = Run.objects.get()
    assert run.parameters == {"count": 4, "label": "n"}
    assert run.mode == Run.Mode.SYNC


def test_a_refused_parameter_shows_beside_its_field_in_the_panel(live_server, page: Page):
    alice = UserFactory(username="alice")
    script = make_script(alice, "squares", TABLE_SCRIPT)
    sign_in(page, live_server, "alice", PASSWORD)
    open_script(page, live_server, script)
    page.get_by_label("count").fill("1.5")
    page.locator("#run-form").get_by_role("button", name="Run", exact=True).click()
    expect(page.locator("#run-fields .field-error").first).to_be_visible()
    assert Run.objects.count() == 0
    assert_accessible(page, "refused run in the panel")
    # The fields still work after being swapped in: fix the value and run.
    page.get_by_label("count").fill("2")
    page.locator("#run-form").get_by_role("button", name="Run", exact=True).click()
    expect(page.locator("#run-result .status")).to_have_text("Succeeded", timeout=30_000)


def test_ctrl_s_saves_a_version_with_its_message_and_ctrl_enter_runs_it(live_server, page: Page):
    alice = UserFactory(username="alice")
    script = make_script(alice, "squares", TABLE_SCRIPT)
    sign_in(page, live_server, "alice", PASSWORD)
    open_script(page, live_server, script)
    page.get_by_label("Version message").fill("Cubes instead of squares")
    page.locator(".CodeMirror").click()
    page.evaluate("() => window.omlwebEditor.setValue(window.omlwebEditor.getValue().replace('i * i / 3', 'i ** 3'))")
    page.keyboard.press("Control+s")
    expect(page.locator("#save-status")).to_contain_text("Saved as version 2: “Cubes instead of squares”")
    expect(page.locator("#current-version")).to_have_text("v2")
    expect(page.locator("#versions-list li").first).to_contain_text("Cubes instead of squares")
    script.refresh_from_db()
    assert script.current_version.number == 2
    assert script.current_version.message == "Cubes instead of squares"
    assert_accessible(page, "saved")

    # An unsaved change is saved first, then run (a version per change, none when nothing changed).
    page.evaluate("() => window.omlwebEditor.setValue(window.omlwebEditor.getValue().replace('i ** 3', 'i ** 3 + 1'))")
    page.evaluate("() => window.omlwebEditor.focus()")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#run-result .status")).to_have_text("Succeeded", timeout=30_000)
    run = Run.objects.get()
    assert run.script_version.number == 3
    expect(page.locator("#run-result td.num").last).to_have_text("9")
    first = page.locator("#run-result").get_attribute("data-run-id")
    page.keyboard.press("Control+Enter")
    expect(page.locator(f"#run-result:not([data-run-id='{first}'])[data-run-status='SUCCEEDED']")).to_have_count(
        1, timeout=30_000
    )
    assert Run.objects.count() == 2
    assert script.versions.count() == 3


def test_a_syntax_error_is_not_saved_and_its_line_is_marked(live_server, page: Page):
    alice = UserFactory(username="alice")
    script = make_script(alice, "squares", TABLE_SCRIPT)
    sign_in(page, live_server, "alice", PASSWORD)
    open_script(page, live_server, script)
    page.evaluate("() => window.omlwebEditor.setValue('def squares(:\\n    return 1\\n')")
    page.keyboard.press("Control+s")
    expect(page.locator("#save-status")).to_contain_text("Not saved")
    expect(page.locator(".cm-error-line")).to_have_count(1)
    assert script.versions.count() == 1
    # Ctrl+Enter with an unsavable source does not run the old version behind the user's back.
    page.keyboard.press("Control+Enter")
    page.wait_for_timeout(500)
    assert Run.objects.count() == 0


def test_a_new_signature_replaces_the_panel_fields(live_server, page: Page):
    alice = UserFactory(username="alice")
    script = make_script(alice, "squares", TABLE_SCRIPT)
    sign_in(page, live_server, "alice", PASSWORD)
    open_script(page, live_server, script)
    page.evaluate(
        "() => window.omlwebEditor.setValue(window.omlwebEditor.getValue()"
        ".replace('label: str = \"n\"', 'label: str = \"n\", power: int = 2'))"
    )
    page.keyboard.press("Control+s")
    expect(page.get_by_label("power")).to_have_value("2")


def test_presets_are_saved_from_the_run_form_and_fill_it(live_server, page: Page):
    alice = UserFactory(username="alice")
    script = make_script(alice, "squares", TABLE_SCRIPT)
    sign_in(page, live_server, "alice", PASSWORD)
    open_script(page, live_server, script)
    page.get_by_label("count").fill("7")
    page.get_by_label("label").fill("seven")
    page.get_by_label("Preset name").fill("Seven rows")
    page.get_by_role("button", name="Save as preset").click()
    expect(page.locator("#presets")).to_contain_text("Preset Seven rows saved.")
    preset = ParameterPreset.objects.get()
    assert (preset.name, preset.parameters, preset.owner) == ("Seven rows", {"count": 7, "label": "seven"}, alice)
    assert_accessible(page, "preset saved")

    page.reload()
    expect(page.get_by_label("count")).to_have_value("3")
    page.get_by_label("Preset", exact=True).select_option("Seven rows")
    expect(page.get_by_label("count")).to_have_value("7")
    expect(page.get_by_label("label")).to_have_value("seven")
    page.locator("#run-form").get_by_role("button", name="Run", exact=True).click()
    expect(page.locator("#run-result tbody tr")).to_have_count(7)
    assert Run.objects.get().parameters == {"count": 7, "label": "seven"}

    # Without the picker: the list's Use link fills the form on the server.
    page.goto(f"{live_server.url}/scripts/{script.pk}/?preset=Seven%20rows")
    expect(page.get_by_label("count")).to_have_value("7")


def test_a_preset_with_invalid_parameters_is_refused(live_server, page: Page):
    alice = UserFactory(username="alice")
    script = make_script(alice, "squares", TABLE_SCRIPT)
    sign_in(page, live_server, "alice", PASSWORD)
    open_script(page, live_server, script)
    page.get_by_label("count").fill("2.5")
    page.get_by_label("Preset name").fill("bad")
    page.get_by_role("button", name="Save as preset").click()
    expect(page.locator("#presets")).to_contain_text("Preset not saved")
    page.get_by_label("count").fill("2")
    page.get_by_label("Preset name").fill("../../etc")
    page.get_by_role("button", name="Save as preset").click()
    expect(page.locator("#presets")).to_contain_text("Preset not saved")
    assert ParameterPreset.objects.count() == 0


def test_keyboard_only_write_run_and_read(live_server, page: Page):
    """New script, write it, create it, run it with Ctrl+Enter, reach the result: no mouse."""
    UserFactory(username="alice")
    sign_in(page, live_server, "alice", PASSWORD)
    page.goto(f"{live_server.url}/scripts/")

    def tab_to(predicate_js: str, limit: int = 80) -> None:
        for _ in range(limit):
            # The editor takes Tab (it indents); Esc is its documented way out.
            in_editor = page.evaluate("() => !!document.activeElement.closest('.CodeMirror')")
            page.keyboard.press("Escape" if in_editor else "Tab")
            if page.evaluate(f"() => {{ const el = document.activeElement; return !!el && ({predicate_js}); }}"):
                return
        raise AssertionError(f"Tab never reached {predicate_js}")

    tab_to("el.textContent.trim() === 'New script'")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="New script")).to_be_visible()
    tab_to("el.name === 'name'")
    page.keyboard.type("kb")
    tab_to("!!el.closest('.CodeMirror')")
    page.keyboard.press("Control+a")
    page.keyboard.press("Delete")
    page.keyboard.type("def kb(n: int = 2):\n")
    page.keyboard.type("return {'twice': n * 2}")
    page.keyboard.press("Escape")  # leaves the editor
    assert page.evaluate("() => !document.activeElement.closest('.CodeMirror')")
    tab_to("el.type === 'submit' && el.textContent.trim() === 'Create script'")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="kb", exact=True)).to_be_visible()
    assert_accessible(page, "new script's page")

    tab_to("el.name === 'p_n'")
    page.keyboard.press("Control+a")
    page.keyboard.type("21")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#run-result .status")).to_have_text("Succeeded", timeout=30_000)
    tab_to("!!el.closest('#run-result')")
    focused = page.evaluate("() => document.activeElement.closest('#run-result').textContent")
    assert '"twice": 42' in focused
    assert_accessible(page, "result read by keyboard")
