"""The schedules API: create with a preview of the next runs, change, pause, delete; who may do what."""

from __future__ import annotations

from datetime import datetime

import pytest
from django.contrib.auth.models import Group

from scripts_app.models import Schedule, ScriptRetryPolicy
from scripts_app.roles import AUDITORS
from tests.conftest import client_for
from tests.factories import UserFactory, make_script

URL = "/oml/api/py-scripts/v2/schedules"
SOURCE = "def report(day='mon'):\n    return day\n"
MORNING = {"scriptName": "report", "cron": "0 7 * * 1-5", "timeZone": "Europe/Paris", "parameters": {"day": "x"}}


@pytest.fixture(autouse=True)
def scripts(alice, bob):
    make_script(alice, "report", SOURCE)
    make_script(bob, "report", SOURCE)


@pytest.fixture
def auditor_api(db):
    auditor = UserFactory(username="audrey")
    auditor.groups.add(Group.objects.get_or_create(name=AUDITORS)[0])
    return client_for(auditor)


def create(api, **body):
    response = api.post(URL, {**MORNING, **body}, format="json")
    assert response.status_code == 201, response.content
    return response.json()["result"]


def test_an_analyst_schedules_a_script_every_morning_and_sees_its_next_five_runs(alice_api):
    row = create(alice_api, name="Morning report")
    assert row["description"] == "At 07:00 on Monday through Friday (Europe/Paris)"
    assert len(row["nextRuns"]) == 5
    moments = [datetime.fromisoformat(moment.replace("Z", "+00:00")) for moment in row["nextRuns"]]
    assert all(moment.hour in (5, 6) and moment.minute == 0 and moment.weekday() < 5 for moment in moments)
    assert row["nextRunAt"] == row["nextRuns"][0]
    assert row["parameters"] == {"day": "x"}
    assert Schedule.objects.get().owner.username == "alice"


def test_a_dry_run_answers_the_next_runs_and_saves_nothing(alice_api):
    response = alice_api.post(f"{URL}?dryRun=true", {**MORNING}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["dryRun"] is True
    assert len(response.json()["result"]["nextRuns"]) == 5
    assert not Schedule.objects.exists()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"cron": "0 25 * * *"}, 1061),
        ({"cron": "", "intervalSeconds": None}, 1061),
        ({"timeZone": "Nowhere/Land"}, 1061),
        ({"cron": "", "intervalSeconds": 5}, 1061),
        ({"version": 9}, 1061),
        ({"overlap": "sometimes"}, 1000),
        ({"scriptName": "missing"}, 1020),
        ({"parameters": "[1, 2]"}, 1000),
        ({"maxRetries": 99}, 1000),
        ({"retryBackoffFactor": "NaN"}, 1000),
    ],
)
def test_a_schedule_that_cannot_run_is_refused_and_not_saved(alice_api, body, code):
    response = alice_api.post(URL, {**MORNING, **body}, format="json")
    assert response.status_code in (400, 404), response.content
    assert response.json()["errorCode"] == code
    assert not Schedule.objects.exists()


def test_analysts_see_and_change_their_own_only_and_admins_everyone(alice_api, bob_api, admin_api):
    mine = create(alice_api)
    create(bob_api)
    assert [row["owner"] for row in alice_api.get(URL).json()["result"]] == ["alice"]
    assert sorted(row["owner"] for row in admin_api.get(URL).json()["result"]) == ["alice", "bob"]
    # Someone else's is "not found" to an analyst, for reading and for every change.
    assert bob_api.get(f"{URL}/{mine['id']}").status_code == 404
    assert bob_api.patch(f"{URL}/{mine['id']}", {"enabled": False}, format="json").status_code == 404
    assert bob_api.delete(f"{URL}/{mine['id']}").status_code == 404
    assert bob_api.post(f"{URL}/{mine['id']}/pause").status_code == 404
    # An admin changes it; the owner stays alice.
    response = admin_api.patch(f"{URL}/{mine['id']}", {"name": "renamed"}, format="json")
    assert response.status_code == 200
    assert response.json()["result"]["owner"] == "alice"


def test_an_analyst_cannot_schedule_another_users_private_script(bob_api, alice):
    response = bob_api.post(URL, {**MORNING, "scriptOwner": "alice"}, format="json")
    assert response.status_code == 404
    assert not Schedule.objects.filter(owner__username="bob").exists()


def test_an_auditor_reads_every_schedule_and_changes_none(auditor_api, alice_api):
    """403 (code 1013) for create, replace, change, delete, pause and resume; nothing changes."""
    row = create(alice_api)
    listed = auditor_api.get(URL)
    assert listed.status_code == 200
    assert [item["id"] for item in listed.json()["result"]] == [row["id"]]
    assert auditor_api.get(f"{URL}/{row['id']}").status_code == 200
    one = f"{URL}/{row['id']}"
    for method, url, body in (
        ("post", URL, MORNING),
        ("post", f"{URL}?dryRun=true", MORNING),
        ("put", one, MORNING),
        ("patch", one, {"enabled": False}),
        ("delete", one, None),
        ("post", f"{one}/pause", None),
        ("post", f"{one}/resume", None),
        ("put", "/oml/api/py-scripts/v2/scripts/report/retries", {"maxRetries": 2}),
    ):
        response = getattr(auditor_api, method)(url, body, format="json")
        assert response.status_code == 403, (method, url, response.content)
        assert response.json()["errorCode"] == 1013
    schedule = Schedule.objects.get()
    assert schedule.enabled
    assert Schedule.objects.count() == 1
    assert not ScriptRetryPolicy.objects.exists()


def test_pause_and_resume(alice_api):
    row = create(alice_api)
    paused = alice_api.post(f"{URL}/{row['id']}/pause").json()["result"]
    assert paused["enabled"] is False
    assert paused["nextRunAt"] is None
    assert paused["nextRuns"] == []
    resumed = alice_api.post(f"{URL}/{row['id']}/resume").json()["result"]
    assert resumed["enabled"] is True
    assert len(resumed["nextRuns"]) == 5


def test_changing_the_timing_moves_the_next_run_and_delete_keeps_nothing(alice_api, settings):
    settings.OMLWEB_SCHEDULE_MIN_INTERVAL_SECONDS = 60
    row = create(alice_api)
    changed = alice_api.patch(f"{URL}/{row['id']}", {"intervalSeconds": 3600}, format="json").json()["result"]
    assert changed["cron"] == ""
    assert changed["description"] == "Every 1 hour"
    assert changed["nextRunAt"] != row["nextRunAt"]
    assert alice_api.delete(f"{URL}/{row['id']}").status_code == 200
    assert not Schedule.objects.exists()


def test_a_pinned_version_and_a_scripts_retry_policy(alice_api):
    row = create(alice_api, version=1, maxRetries=2, retryBackoffSeconds=5, retryUserErrors=True)
    assert row["version"] == 1
    assert (row["maxRetries"], row["retryBackoffSeconds"], row["retryUserErrors"]) == (2, 5, True)
    url = "/oml/api/py-scripts/v2/scripts/report/retries"
    assert alice_api.get(url).json()["result"]["maxRetries"] == 0
    response = alice_api.put(url, {"maxRetries": 3, "retryBackoffSeconds": 1, "retryBackoffFactor": 3}, format="json")
    assert response.status_code == 200, response.content
    policy = ScriptRetryPolicy.objects.get()
    assert (policy.max_retries, policy.retry_backoff_seconds, policy.retry_backoff_factor) == (3, 1, 3.0)
