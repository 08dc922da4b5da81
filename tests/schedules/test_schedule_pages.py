"""The schedule pages: create with the next-five preview, edit, pause, resume, delete; who sees what."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from scripts_app.models import Schedule
from scripts_app.roles import AUDITORS
from scripts_app.services import schedules
from tests.factories import UserFactory, make_script

SOURCE = "def report(day='mon'):\n    return day\n"


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def script(alice):
    return make_script(alice, "report", SOURCE)


FORM = {
    "name": "Morning",
    "parameters": '{"day": "tue"}',
    "cron": "0 7 * * 1-5",
    "time_zone": "Europe/Paris",
    "service": "LOW",
    "missed_policy": "skip",
    "overlap_policy": "queue",
    "max_retries": "2",
    "retry_backoff_seconds": "30",
    "retry_backoff_factor": "2",
    "enabled": "on",
}


def test_the_preview_shows_the_next_five_runs_or_what_is_wrong(alice):
    client = signed_in(alice)
    page = client.get("/schedules/preview/", {"cron": "0 7 * * 1-5", "time_zone": "Europe/Paris"}).content.decode()
    assert "At 07:00 on Monday through Friday" in page
    assert page.count("<li>") == 5
    assert page.count("07:00:00 CET") + page.count("07:00:00 CEST") == 5
    wrong = client.get("/schedules/preview/", {"cron": "0 7 * *", "time_zone": "UTC"}).content.decode()
    assert "does not parse" in wrong
    zone = client.get("/schedules/preview/", {"interval_seconds": "3600", "time_zone": "Mars/Base"}).content.decode()
    assert "Unknown time zone" in zone
    hostile = client.get("/schedules/preview/", {"cron": "<script>alert(1)</script>"}).content.decode()
    assert "<script>alert" not in hostile


def test_an_analyst_creates_a_schedule_from_the_script_page(alice, script):
    client = signed_in(alice)
    assert f"/schedules/new/?script={script.pk}" in client.get(f"/scripts/{script.pk}/").content.decode()
    form = client.get(f"/schedules/new/?script={script.pk}").content.decode()
    assert 'hx-get="/schedules/preview/"' in form
    response = client.post("/schedules/new/", {**FORM, "script": script.pk})
    schedule = Schedule.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/schedules/{schedule.pk}/"
    assert (schedule.parameters, schedule.overlap_policy, schedule.max_retries) == ({"day": "tue"}, "queue", 2)
    page = client.get(f"/schedules/{schedule.pk}/").content.decode()
    assert page.count(":00:00 CET</time>") == 5
    assert "Schedules</a>" in client.get("/scripts/").content.decode()


def test_a_bad_timing_is_shown_on_its_field_and_nothing_is_saved(alice, script):
    response = signed_in(alice).post("/schedules/new/", {**FORM, "script": script.pk, "cron": "99 * * * *"})
    assert response.status_code == 400
    assert "does not parse" in response.content.decode()
    assert not Schedule.objects.exists()


def test_edit_pause_resume_delete(alice, script):
    schedule = schedules.schedule_save(user=alice, script=script, cron="0 7 * * *")
    client = signed_in(alice)
    edited = client.post(f"/schedules/{schedule.pk}/edit/", {**FORM, "script": script.pk, "name": "Renamed"})
    assert edited.status_code == 302
    assert Schedule.objects.get().name == "Renamed"
    client.post(f"/schedules/{schedule.pk}/pause/")
    assert not Schedule.objects.get().enabled
    assert "Paused: no run comes" in client.get(f"/schedules/{schedule.pk}/").content.decode()
    client.post(f"/schedules/{schedule.pk}/resume/")
    assert Schedule.objects.get().enabled
    client.post(f"/schedules/{schedule.pk}/delete/")
    assert not Schedule.objects.exists()


def test_others_see_nothing_of_it_auditors_read_it_and_change_nothing(alice, bob, admin_user, script):
    schedule = schedules.schedule_save(user=alice, script=script, cron="0 7 * * *")
    bob_client = signed_in(bob)
    assert "report" not in bob_client.get("/schedules/").content.decode()
    for path in ("", "edit/", "delete/"):
        assert bob_client.get(f"/schedules/{schedule.pk}/{path}").status_code == 404
    assert bob_client.post(f"/schedules/{schedule.pk}/pause/").status_code == 404
    auditor = UserFactory(username="audrey")
    auditor.groups.add(Group.objects.get_or_create(name=AUDITORS)[0])
    auditor_client = signed_in(auditor)
    assert auditor_client.get(f"/schedules/{schedule.pk}/").status_code == 200
    assert "Edit</a>" not in auditor_client.get(f"/schedules/{schedule.pk}/").content.decode()
    assert auditor_client.get("/schedules/new/").status_code == 403
    for path in ("edit/", "pause/", "delete/"):
        assert auditor_client.post(f"/schedules/{schedule.pk}/{path}", FORM).status_code == 403
    assert Schedule.objects.get().enabled
    admin_page = signed_in(admin_user).get("/schedules/").content.decode()
    assert "alice" in admin_page
