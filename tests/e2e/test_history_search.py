"""The history's parameter search in a real browser: typed into the field, the list follows (htmx), and a
value of one or two characters says how it matches (docs/ui.md, "History"). Writes the searched page's
screenshots to docs/screenshots/history-search-<width>.png."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from scripts_app.models import Run
from tests.e2e.conftest import assert_accessible, sign_in
from tests.factories import PASSWORD, UserFactory, make_script

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def test_a_short_parameter_search_finds_whole_values_and_says_so(live_server, page: Page):
    alice = UserFactory(username="alice")
    script = make_script(alice, "report", "def report(rows: int = 12, region: str = 'EU'):\n    return rows\n")
    now = timezone.now()
    for i, parameters in enumerate(
        [{"rows": 96, "region": "EU"}, {"rows": 196, "region": "US"}, {"rows": 12, "region": "EU"}] * 3
    ):
        Run.objects.create(
            script_version=script.current_version,
            script_name=script.name,
            script_owner="alice",
            user=alice,
            status=Run.Status.SUCCEEDED,
            created_at=now - dt.timedelta(minutes=i),
            started_at=now - dt.timedelta(minutes=i),
            finished_at=now - dt.timedelta(minutes=i) + dt.timedelta(seconds=2),
            client_address="10.0.0.1",
            parameters=parameters,
        )
    sign_in(page, live_server, "alice", PASSWORD)
    SHOTS.mkdir(parents=True, exist_ok=True)
    for width, height in ((1280, 900), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        page.goto(f"{live_server.url}/runs/")
        page.get_by_label("Parameters contain").fill("96")
        note = page.locator("#params-whole-word")
        expect(note).to_contain_text("“96” has fewer than three characters")
        expect(page.locator("#results tbody tr")).to_have_count(3)
        expect(page.get_by_text("3 runs match these filters.")).to_be_visible()
        assert "params=96" in page.url
        assert_accessible(page, f"history with a short search at {width} px")
        wide, inner = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        assert wide <= inner
        page.screenshot(path=str(SHOTS / f"history-search-{width}.png"), full_page=True)
        # Three characters: a part of a value again (196), and the note is gone.
        page.get_by_label("Parameters contain").fill("196")
        expect(page.locator("#results tbody tr")).to_have_count(3)
        expect(note).to_have_count(0)
