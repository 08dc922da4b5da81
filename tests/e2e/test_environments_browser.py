"""Environments in a real browser with a real Celery worker: build one, watch its log, run a script in it."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect
from rest_framework.test import APIClient

from scripts_app.models import Environment, Run
from scripts_app.services.tokens import token_issue
from tests.e2e.conftest import sign_in
from tests.environments.conftest import make_wheel
from tests.factories import PASSWORD, UserFactory, make_script
from tests.worker import conftest as worker_conftest
from tests.worker.conftest import Broker, Cluster, publish_on

# The worker tests' fixture: points this process's Celery app at the test broker.
celery_on_broker = worker_conftest.celery_on_broker

pytestmark = [pytest.mark.e2e, pytest.mark.worker, pytest.mark.django_db(transaction=True)]

PROBE = "import omlweb_probe\n\ndef probe():\n    return omlweb_probe.ANSWER\n"


@pytest.fixture(scope="module")
def broker(tmp_path_factory) -> Broker:
    return Broker("filesystem", "filesystem://", tmp_path_factory.mktemp("data-e2e-envs"))


@pytest.fixture
def builder(celery_on_broker, live_server, tmp_path, settings):
    """A real worker on the LOW and builds queues; builds install offline from a wheel the test makes."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels)
    envs = tmp_path / "envs"
    offline = {
        "OMLWEB_ENVS_DIR": str(envs),
        "OMLWEB_ENV_FIND_LINKS": str(wheels),
        "OMLWEB_ENV_NO_INDEX": "true",
        "OMLWEB_ENV_RUNNER_PACKAGES": "",
    }
    settings.OMLWEB_ENVS_DIR = envs
    settings.OMLWEB_ENV_FIND_LINKS = [str(wheels)]
    settings.OMLWEB_ENV_NO_INDEX = True
    settings.OMLWEB_ENV_RUNNER_PACKAGES = []
    # The default prefix: builds are routed to "<prefix>.builds" when settings are first read.
    cluster = Cluster(broker=celery_on_broker, prefix=settings.OMLWEB_QUEUE_PREFIX, folder=tmp_path)
    publish_on(cluster, settings)
    settings.MEDIA_ROOT = celery_on_broker.data_dir / "media"
    try:
        cluster.start("builder", ["LOW", "BUILDS"], **offline)
        yield cluster
    finally:
        cluster.stop_all()


def test_an_admin_builds_an_environment_watches_its_log_and_runs_a_script_in_it(live_server, page: Page, builder):
    """The form queues the build, the page follows the log to READY without a reload, and a script runs there."""
    admin = UserFactory(username="root", is_superuser=True, is_staff=True)
    script = make_script(admin, "probe", PROBE)
    sign_in(page, live_server, "root", PASSWORD)

    page.goto(f"{live_server.url}/environments/")
    page.get_by_label("Name").fill("probe")
    page.get_by_label("Packages").fill("omlweb-probe")
    page.get_by_role("button", name="Build it").click()
    expect(page).to_have_url(f"{live_server.url}/environments/probe/")
    page.evaluate("() => { window.notReloaded = true; }")
    expect(page.locator(".build-log")).to_contain_text("Built probe", timeout=60_000)
    expect(page.locator("#build .status")).to_have_text("Ready")
    assert page.evaluate("() => window.notReloaded") is True
    environment = Environment.objects.get()
    assert "omlweb-probe==1.0" in environment.lock.text

    page.goto(f"{live_server.url}/scripts/{script.pk}/run/")
    page.get_by_label("Environment").select_option("probe")
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page.locator(".status")).to_have_text("Succeeded", timeout=30_000)
    # exact: "42" also appears inside the run's timestamps.
    expect(page.get_by_text("42", exact=True)).to_be_visible()

    raw, _ = token_issue(user=admin)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    response = api.post("/oml/api/py-scripts/v1/do-eval/probe", {"envName": "probe"}, format="json")
    assert response.json() == {"result": 42}
    assert set(Run.objects.values_list("env_name", flat=True)) == {"probe"}
