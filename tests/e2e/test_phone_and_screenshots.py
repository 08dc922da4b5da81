"""The main pages at phone width (nothing wider than the screen, scroll hints on wide tables) and the
screenshots in docs/screenshots/ at 1280 and 390 px (issue #13, "Phone" and "Screenshots").

The screenshots are written by the test itself, so they show the pages as the code draws them;
docs/ui.md links them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from scripts_app.models import Run, Script
from scripts_app.services.presets import preset_save
from scripts_app.services.scripts import script_update
from tests.e2e.conftest import assert_accessible, sign_in
from tests.factories import PASSWORD, UserFactory, make_script

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"

REPORT = '''import matplotlib.pyplot as plt
import pandas as pd


def report(rows: int = 12, region: str = "EU"):
    """Monthly sales of one region: a figure and a table."""
    frame = pd.DataFrame({
        "month": [f"2026-{m:02d}" for m in range(1, rows + 1)],
        "region": [region] * rows,
        "units": [120 + 17 * m for m in range(rows)],
        "revenue_eur": [1234.5678 * (m + 1) for m in range(rows)],
        "margin_pct": [0.1 + m / 97 for m in range(rows)],
        "returns": [m % 4 for m in range(rows)],
        "channel": ["online" if m % 2 else "retail" for m in range(rows)],
        "forecast_units": [118.25 + 16.5 * m for m in range(rows)],
    })
    ax = frame.plot(x="month", y=["units", "forecast_units"], title=f"Units sold, {region}")
    ax.set_ylabel("units")
    print(f"{rows} months of {region}")
    return frame
'''


def run_from_panel(page: Page, rows: str, region: str) -> None:
    page.get_by_label("rows", exact=True).fill(rows)
    page.get_by_label("region", exact=True).fill(region)
    shown = page.locator("#run-result")
    before = shown.get_attribute("data-run-id") if shown.count() else ""
    page.locator("#run-form").get_by_role("button", name="Run", exact=True).click()
    # A new run's result, not the last one still on the page.
    fresh = page.locator(f"#run-result:not([data-run-id='{before}'])[data-run-status='SUCCEEDED']")
    expect(fresh).to_have_count(1, timeout=60_000)


@pytest.fixture
def workspace(live_server, page: Page):
    """alice's report script with two versions (with messages) and two runs made from its page."""
    alice = UserFactory(username="alice")
    script = make_script(alice, "report", REPORT.replace("rows: int = 12", "rows: int = 6"), message="First cut")
    script_update(script=script, by=alice, source=REPORT, message="A year of months by default")
    make_script(alice, "cleanup", "def cleanup():\n    return 'ok'\n", description="Tidies the staging tables.")
    make_script(alice, "forecast", "def forecast(h: int = 3):\n    return list(range(h))\n")
    preset_save(script=script, user=alice, name="APAC half year", parameters={"rows": 6, "region": "APAC"})
    sign_in(page, live_server, "alice", PASSWORD)
    page.goto(f"{live_server.url}/scripts/{script.pk}/")
    run_from_panel(page, "12", "EU")
    run_from_panel(page, "12", "US")
    return script


def main_pages(live_server, script: Script) -> dict[str, str]:
    old, new = Run.objects.order_by("created_at")
    return {
        "scripts": f"{live_server.url}/scripts/",
        "script": f"{live_server.url}/scripts/{script.pk}/",
        "run": f"{live_server.url}/runs/{new.pk}/",
        "history": f"{live_server.url}/runs/",
        "compare": f"{live_server.url}/runs/compare/?a={old.pk}&b={new.pk}",
        "versions": f"{live_server.url}/scripts/{script.pk}/versions/?a=1&b=2",
        "run-form": f"{live_server.url}/scripts/{script.pk}/run/",
        "new-script": f"{live_server.url}/scripts/new/",
        "datasets": f"{live_server.url}/datasets/",
        "tokens": f"{live_server.url}/tokens/",
    }


def test_nothing_is_wider_than_a_phone_screen(live_server, page: Page, workspace):
    page.set_viewport_size({"width": 390, "height": 844})
    for name, url in main_pages(live_server, workspace).items():
        page.goto(url)
        page.wait_for_load_state("load")
        width, inner = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        assert width <= inner, f"{name}: the page is {width} px wide on a {inner} px screen"
        assert_accessible(page, f"{name} at 390 px")


def test_wide_tables_say_they_scroll_on_a_phone(live_server, page: Page, workspace):
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{live_server.url}/runs/")
    wrap = page.locator(".table-wrap").first
    expect(wrap).to_have_class("table-wrap is-overflowing")
    expect(page.get_by_text("Scroll sideways for more →").first).to_be_visible()
    # At desktop width the same table fits: no hint.
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"{live_server.url}/scripts/")
    expect(page.locator(".scroll-hint.shown")).to_have_count(0)


def test_on_a_phone_the_run_panel_is_below_the_editor(live_server, page: Page, workspace):
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{live_server.url}/scripts/{workspace.pk}/")
    editor = page.locator(".workspace-editor").bounding_box()
    panel = page.locator(".workspace-run").bounding_box()
    assert panel["y"] >= editor["y"] + editor["height"] - 1
    assert panel["x"] + panel["width"] <= 390


def test_screenshots_of_the_main_pages(live_server, page: Page, workspace):
    """docs/screenshots/<page>-<width>.png for the main pages, desktop and phone."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    pages = main_pages(live_server, workspace)
    for width, height in ((1280, 900), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        for name in ("scripts", "run", "history", "compare", "versions"):
            page.goto(pages[name])
            page.wait_for_load_state("load")
            page.screenshot(path=str(SHOTS / f"{name}-{width}.png"), full_page=True)
        # The run form with a preset picked: the fields it filled.
        page.goto(pages["run-form"])
        page.get_by_label("Preset", exact=True).select_option("APAC half year")
        expect(page.get_by_label("region", exact=True)).to_have_value("APAC")
        assert_accessible(page, f"run form with a preset at {width} px")
        page.screenshot(path=str(SHOTS / f"run-form-{width}.png"), full_page=True)
        # The script page as it is used: a result under the editor and the run panel.
        page.goto(pages["script"])
        run_from_panel(page, "12", "APAC")
        page.screenshot(path=str(SHOTS / f"script-{width}.png"), full_page=True)
    assert len(list(SHOTS.glob("*-1280.png"))) >= 6
