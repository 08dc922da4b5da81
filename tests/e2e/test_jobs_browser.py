"""Jobs in a real browser with a real Celery worker: watch a job finish, cancel a running one."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from scripts_app.models import Run
from tests.e2e.conftest import sign_in
from tests.factories import PASSWORD, UserFactory, make_script
from tests.worker import conftest as worker_conftest
from tests.worker.conftest import Broker, _cluster, publish_on

# The worker tests' fixture: points this process's Celery app at the test broker.
celery_on_broker = worker_conftest.celery_on_broker

pytestmark = [pytest.mark.e2e, pytest.mark.worker, pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def broker(tmp_path_factory) -> Broker:
    """The embedded broker only: the worker tests cover the others."""
    return Broker("filesystem", "filesystem://", tmp_path_factory.mktemp("data-e2e"))


@pytest.fixture
def worker(celery_on_broker, live_server, tmp_path, settings):
    """A real `celery worker` process on this test's database; jobs the live server submits reach it."""
    for cluster in _cluster(celery_on_broker, tmp_path):
        publish_on(cluster, settings)
        settings.MEDIA_ROOT = celery_on_broker.data_dir / "media"
        cluster.start("e2e", ["LOW", "MEDIUM", "HIGH"])
        yield cluster


def submit_job(page: Page, live_server, script, **fields) -> None:
    page.goto(f"{live_server.url}/scripts/{script.pk}/run/")
    for label, value in fields.items():
        page.get_by_label(label, exact=True).fill(value)
    page.get_by_label("Run as a job").check()
    page.get_by_role("button", name="Run", exact=True).click()


def test_a_job_turns_finished_without_reloading(live_server, page: Page, worker, screenshot):
    """Start a job; its page shows it queued or running, then its result, with no reload."""
    alice = UserFactory(username="alice")
    source = "import time\n\ndef nap(seconds: float = 1.5):\n    time.sleep(seconds)\n    return [{'slept': seconds}]\n"
    script = make_script(alice, "nap", source)
    sign_in(page, live_server, "alice", PASSWORD)
    submit_job(page, live_server, script, seconds="1.5")
    expect(page.locator(".status")).to_have_text(re.compile("Queued|Running"))
    page.evaluate("() => { window.notReloaded = true; }")
    screenshot(page, "20-job-live")
    expect(page.locator(".status")).to_have_text("Succeeded", timeout=60_000)
    expect(page.locator("table.data tbody tr")).to_have_count(1)
    assert page.evaluate("() => window.notReloaded") is True
    run = Run.objects.get()
    assert run.mode == Run.Mode.ASYNC
    assert run.parameters == {"seconds": 1.5}


def test_cancel_a_running_job(live_server, page: Page, worker):
    """Cancel on a running job's page ends it CANCELLED."""
    alice = UserFactory(username="alice")
    script = make_script(alice, "forever", "import time\n\ndef forever():\n    time.sleep(120)\n")
    sign_in(page, live_server, "alice", PASSWORD)
    submit_job(page, live_server, script)
    expect(page.locator(".status")).to_have_text("Running", timeout=60_000)
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator(".status")).to_have_text("Cancelled", timeout=30_000)
    assert Run.objects.get().status == Run.Status.CANCELLED
