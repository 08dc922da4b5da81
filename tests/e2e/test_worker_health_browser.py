"""The worker health page in a real browser: warnings, processes alive and gone, and its own refresh."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from scripts_app.models import Run, WorkerHeartbeat
from tests.e2e.conftest import assert_accessible, sign_in
from tests.factories import PASSWORD, UserFactory, make_script

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

TEMPLATES = [
    {"python": "/usr/bin/python3", "level": "bwrap", "pid": 4711, "alive": True, "runs": 12, "light": False},
    {"python": "/usr/bin/python3", "level": "bwrap", "pid": 4712, "alive": True, "runs": 2, "light": True},
]


def heartbeat(host: str, pid: int, kind: str, name: str, queues: list[str], *, silent: float = 1, **fields):
    return WorkerHeartbeat.objects.create(
        host=host,
        pid=pid,
        kind=kind,
        name=name,
        queues=queues,
        started_at=timezone.now() - timedelta(hours=2),
        beat_at=timezone.now() - timedelta(seconds=silent),
        **fields,
    )


@pytest.mark.parametrize(
    "viewport", [{"width": 1280, "height": 900}, {"width": 390, "height": 844}], ids=["wide", "phone"]
)
def test_worker_health_page(live_server, page: Page, screenshot, viewport, settings):
    settings.OMLWEB_WORKER_GONE_SECONDS = 30
    settings.OMLWEB_QUEUE_WAIT_WARN_SECONDS = 300
    root = UserFactory(username="root", is_superuser=True)
    script = make_script(root, "forecast", "def forecast():\n    return 1\n")
    environments = {"science": "built", "geo": "missing"}
    heartbeat("worker-1", 2101, "worker", "omlweb-low-1@worker-1", ["omlweb.low", "omlweb.builds"],
              isolation="bwrap", templates=TEMPLATES, environments=environments)  # fmt: skip
    heartbeat("worker-1", 2102, "worker", "omlweb-medium-1@worker-1", ["omlweb.medium", "omlweb.builds"],
              isolation="bwrap", templates=TEMPLATES[:1], environments=environments)  # fmt: skip
    heartbeat("worker-2", 3301, "worker", "omlweb-high-1@worker-2", ["omlweb.high"], silent=600,
              isolation="unshare", environments={"science": "built", "geo": "built"})  # fmt: skip
    heartbeat("web-1", 1201, "web", "web-1201@web-1", [], isolation="bwrap", templates=TEMPLATES[:1])
    common = {"script_version": script.current_version, "script_name": "forecast", "script_owner": "root", "user": root}
    Run.objects.create(**common, mode=Run.Mode.ASYNC, service="LOW", status=Run.Status.RUNNING,
                       worker="omlweb-low-1@worker-1", started_at=timezone.now())  # fmt: skip
    for minutes in (12, 2):
        Run.objects.create(**common, mode=Run.Mode.ASYNC, service="MEDIUM", status=Run.Status.QUEUED,
                           created_at=timezone.now() - timedelta(minutes=minutes))  # fmt: skip
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_viewport_size(viewport)
    suffix = "wide" if viewport["width"] > 800 else "phone"
    sign_in(page, live_server, "root", PASSWORD)

    page.goto(live_server.url + "/service/")
    page.get_by_role("link", name="Worker health").click()
    expect(page.get_by_role("heading", name="Worker health", exact=True)).to_be_visible()
    alerts = page.get_by_role("alert")
    expect(alerts.filter(has_text="No worker serves queue omlweb.high")).to_be_visible()
    expect(alerts.filter(has_text="Queue omlweb.medium: its oldest job has waited 00:12:")).to_be_visible()
    gone = page.get_by_role("listitem").filter(has_text="omlweb-high-1@worker-2")
    expect(gone).to_contain_text("gone")
    low = page.get_by_role("listitem").filter(has_text="omlweb-low-1@worker-1")
    expect(low).to_contain_text("alive")
    expect(low).to_contain_text("forecast")
    expect(low).to_contain_text("science: built")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= viewport["width"]
    assert_accessible(page, "worker health")
    screenshot(page, f"20-worker-health-{suffix}")

    # The page refreshes itself: a worker that stops beating turns gone without a reload.
    WorkerHeartbeat.objects.filter(pid=2102).update(beat_at=timezone.now() - timedelta(minutes=5))
    medium = page.get_by_role("listitem").filter(has_text="omlweb-medium-1@worker-1")
    expect(medium).to_contain_text("gone", timeout=12000)
    expect(alerts.filter(has_text="No worker serves queue omlweb.medium")).to_be_visible()
    assert_accessible(page, "worker health, refreshed")
    assert errors == []
