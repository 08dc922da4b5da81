"""The worker health page: every host's processes from their heartbeat rows, queues and their warnings."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from scripts_app.models import Run, WorkerHeartbeat
from scripts_app.services import heartbeats
from tests.factories import make_script
from tests.web.conftest import logged_in

pytestmark = pytest.mark.django_db


@pytest.fixture
def windows(settings):
    settings.OMLWEB_WORKER_GONE_SECONDS = 30
    settings.OMLWEB_QUEUE_WAIT_WARN_SECONDS = 300
    return settings


def beat(host: str, pid: int, name: str, queues: list[str], *, silent: float = 0, **fields) -> WorkerHeartbeat:
    return WorkerHeartbeat.objects.create(
        host=host,
        pid=pid,
        kind="worker",
        name=name,
        queues=queues,
        beat_at=timezone.now() - timedelta(seconds=silent),
        **fields,
    )


def test_processes_of_every_host_alive_or_gone_with_their_runs(client, group_admin, alice, windows):
    beat(
        "host-a",
        101,
        "omlweb-low-1@host-a",
        ["omlweb.low", "omlweb.builds"],
        isolation="bwrap",
        templates=[
            {"python": "/usr/bin/python3", "level": "bwrap", "pid": 7, "alive": True, "runs": 3, "light": False}
        ],
        environments={"science": "built", "stats": "missing"},
    )
    beat("host-b", 202, "omlweb-medium-1@host-b", ["omlweb.medium"], silent=120)
    script = make_script(alice, "crunch", "def crunch():\n    return 1\n")
    Run.objects.create(
        script_version=script.current_version,
        script_name="crunch",
        script_owner="alice",
        user=alice,
        mode=Run.Mode.ASYNC,
        status=Run.Status.RUNNING,
        worker="omlweb-low-1@host-a",
        started_at=timezone.now(),
    )
    page = logged_in(client, group_admin).get("/service/workers/").content.decode()
    assert "Host host-a" in page
    assert "Host host-b" in page
    a, b = page.index("omlweb-low-1@host-a"), page.index("omlweb-medium-1@host-b")
    assert "alive" in page[a:b]
    assert ">gone<" in page[b:]
    assert "crunch" in page[a:b]
    assert "isolation <strong>bwrap</strong>" in page
    assert "warm template, pid 7, 3 runs" in page
    assert "science: built" in page
    assert "stats: missing" in page
    # host-b's only worker is gone: nothing serves MEDIUM (nor HIGH).
    assert "No worker serves queue <code>omlweb.medium</code>" in page
    assert "No worker serves queue <code>omlweb.high</code>" in page
    assert "No worker serves queue <code>omlweb.low</code>" not in page


def test_a_queue_whose_oldest_job_waits_too_long_is_flagged(client, group_admin, alice, windows):
    beat("host-a", 101, "omlweb-low-1@host-a", ["omlweb.low", "omlweb.medium", "omlweb.high"])
    script = make_script(alice, "crunch", "def crunch():\n    return 1\n")
    for minutes, service in ((7, "LOW"), (1, "MEDIUM")):
        Run.objects.create(
            script_version=script.current_version,
            script_name="crunch",
            script_owner="alice",
            user=alice,
            mode=Run.Mode.ASYNC,
            service=service,
            status=Run.Status.QUEUED,
            created_at=timezone.now() - timedelta(minutes=minutes),
        )
    page = logged_in(client, group_admin).get("/service/workers/").content.decode()
    assert "Queue <code>omlweb.low</code>: its oldest job has waited 00:07:0" in page
    assert "longer than 00:05:00" in page
    assert "Queue <code>omlweb.medium</code>: its oldest" not in page
    assert "No worker serves" not in page


def test_htmx_refresh_returns_only_the_health_part(client, group_admin, windows):
    response = logged_in(client, group_admin).get("/service/workers/", HTTP_HX_REQUEST="true")
    body = response.content.decode()
    assert body.lstrip().startswith('<div id="health"')
    assert "<html" not in body
    assert 'hx-trigger="every 5s"' in body


def test_the_service_page_links_to_it(client, group_admin, windows):
    assert 'href="/service/workers/"' in logged_in(client, group_admin).get("/service/").content.decode()


def test_only_admins(client, analyst, auditor, windows):
    assert logged_in(client, analyst).get("/service/workers/").status_code == 403
    assert logged_in(client, auditor).get("/service/workers/").status_code == 403


def test_a_heartbeat_records_this_process_and_its_template_restarts(windows, settings):
    from scripts_app.models import MetricCounter
    from scripts_app.runner import templates

    beater = heartbeats.Beater(kind="worker", name="me@here", queues=["omlweb.low"])
    saved = dict(templates.restarts)
    try:
        templates.restarts["died"] = templates.restarts.get("died", 0) + 2
        heartbeats.beat(beater)
        heartbeats.beat(beater)  # nothing new: nothing added twice
    finally:
        templates.restarts.clear()
        templates.restarts.update(saved)
    row = WorkerHeartbeat.objects.get(name="me@here")
    assert (row.kind, row.queues) == ("worker", ["omlweb.low"])
    restarts = MetricCounter.objects.get(name="omlweb_runner_template_restarts_total")
    assert restarts.value == saved.get("died", 0) + 2


def test_a_restarted_worker_shows_once_with_the_processes_it_replaced(client, group_admin, windows):
    beat("host-a", 101, "omlweb-low-1@host-a", ["omlweb.low"], silent=400)
    beat("host-a", 102, "omlweb-low-1@host-a", ["omlweb.low"], silent=200)
    newest = beat("host-a", 103, "omlweb-low-1@host-a", ["omlweb.low"])
    WorkerHeartbeat.objects.filter(pk=newest.pk).update(started_at=timezone.now() + timedelta(seconds=1))
    page = logged_in(client, group_admin).get("/service/workers/").content.decode()
    assert page.count("<h4>omlweb-low-1@host-a") == 1
    assert "pid 103" in page
    assert "pid 101" not in page
    assert "replaces 2 earlier processes of this worker" in page
    assert ">gone<" not in page
