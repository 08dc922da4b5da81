"""The service page: admins see the broker's health and the processes `serve` supervises, with their restarts."""

from __future__ import annotations

import pytest

from scripts_app.services import supervision
from tests.web.conftest import logged_in

pytestmark = pytest.mark.django_db


@pytest.fixture
def data_dir(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    return tmp_path


def test_admins_see_each_supervised_process_and_its_crashes(client, group_admin, data_dir):
    """A worker that keeps crashing is shown as crash-looping, with its restarts and last exit."""
    child = {
        "name": "worker-low-1",
        "kind": "worker",
        "node": "omlweb-low-1@host",
        "pid": None,
        "status": "restarting",
        "crashLooping": True,
        "restarts": 4,
        "exitsInLast10Minutes": 4,
        "lastExit": "2026-11-29T21:00:00+00:00: code -9 after 3 s",
        "wedgedKills": 1,
        "lastConsumed": None,
    }
    supervision.write_state({"pid": 4242, "host": "host", "children": [child]})
    page = logged_in(client, group_admin).get("/service/").content.decode()
    assert "manage.py serve on host (pid 4242)" in page
    assert "crash-looping: 4 exits in 10 minutes" in page
    assert "code -9 after 3 s" in page
    assert "filesystem: answers" in page
    supervision.remove_state()
    assert "No <code>manage.py serve</code> runs on this host" in client.get("/service/").content.decode()


def test_the_service_page_is_for_admins_only(client, analyst, data_dir):
    assert logged_in(client, analyst).get("/service/").status_code == 403
