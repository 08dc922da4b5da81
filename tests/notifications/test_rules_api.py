"""Notification rules over the API: validation, webhook URL refusals (SSRF), and who sees and changes what."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group

from scripts_app.models import NotificationDelivery, NotificationRule
from scripts_app.roles import AUDITORS
from scripts_app.services import notifications
from scripts_app.services.pipeline import RunRequest, record_run
from tests.conftest import client_for
from tests.factories import UserFactory, make_script

RULES = "/oml/api/notifications/rules"
DELIVERIES = "/oml/api/notifications/deliveries"


@pytest.fixture
def auditor_api(db):
    auditor = UserFactory(username="audrey")
    auditor.groups.add(Group.objects.get_or_create(name=AUDITORS)[0])
    return client_for(auditor)


def webhook(api, **fields):
    body = {"name": "hook", "channel": "WEBHOOK", "url": "https://hooks.example.org/omlweb", **fields}
    return api.post(RULES, body, format="json")


def test_a_webhook_rule_is_created_with_a_secret_only_its_owner_reads(alice, alice_api, admin_api):
    """201 with Location and a 64-hex secret; the owner reads it back, an admin sees the rule but not the secret."""
    response = webhook(alice_api, onSuccess=True, longerThanSeconds=60)
    assert response.status_code == 201, response.content
    body = response.json()
    assert response["Location"].endswith(f"{RULES}/{body['id']}")
    assert len(body["secret"]) == 64
    assert body["onFailure"] is True
    assert body["onSuccess"] is True
    assert body["longerThanSeconds"] == 60
    assert body["script"] is None
    rule = NotificationRule.objects.get()
    assert rule.owner == alice
    assert rule.secret == body["secret"]
    assert alice_api.get(f"{RULES}/{rule.pk}").json()["secret"] == rule.secret
    seen_by_admin = admin_api.get(f"{RULES}/{rule.pk}")
    assert seen_by_admin.status_code == 200
    assert seen_by_admin.json()["secret"] is None


def test_an_email_rule_goes_to_the_owners_address_and_needs_one(alice, alice_api):
    """Without an address on the account: 400 with 1082; with one, the rule shows it."""
    response = alice_api.post(RULES, {"name": "mail", "channel": "EMAIL"}, format="json")
    assert response.status_code == 400
    assert response.json()["errorCode"] == 1082
    alice.email = "alice@example.org"
    alice.save()
    response = alice_api.post(RULES, {"name": "mail", "channel": "EMAIL"}, format="json")
    assert response.status_code == 201
    assert response.json()["email"] == "alice@example.org"
    assert response.json()["secret"] is None


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.org/x",
        "gopher://example.org/",
        "javascript:alert(1)",
        "http://",
        "https://user:pass@example.org/hook",
        "http://127.0.0.1:8000/admin/",
        "http://10.0.0.5/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://0.0.0.0/",
        "http://100.64.0.1/",
        "http://example.org/a b",
        "http://example.org:99999/",
        "",
    ],
)
def test_webhook_urls_to_other_schemes_or_private_addresses_are_refused(alice, alice_api, url):
    """Each is a 400 with 1081, and nothing is saved."""
    response = webhook(alice_api, url=url)
    assert response.status_code == 400, response.content
    assert response.json()["errorCode"] == 1081
    assert not NotificationRule.objects.exists()


def test_the_allow_list_lets_an_admin_open_a_private_network(alice_api, settings):
    """OMLWEB_WEBHOOK_ALLOWED_NETWORKS admits that network only."""
    settings.OMLWEB_WEBHOOK_ALLOWED_NETWORKS = ["10.20.0.0/16"]
    assert webhook(alice_api, url="http://10.20.3.4:8080/hook").status_code == 201
    assert webhook(alice_api, url="http://10.21.0.1/hook").json()["errorCode"] == 1081


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"onFailure": False}, 1080),
        ({"onFailure": False, "longerThanSeconds": None}, 1080),
        ({"longerThanSeconds": 0}, 1000),
        ({"longerThanSeconds": "60"}, 1000),
        ({"onSuccess": "yes"}, 1000),
        ({"channel": "SMS"}, 1000),
        ({"name": "   "}, 1000),
        ({"name": "x" * 101}, 1000),
        ({"colour": "red"}, 1000),
    ],
)
def test_invalid_rules_are_refused_naming_the_problem(alice_api, fields, code):
    response = webhook(alice_api, **fields)
    assert response.status_code == 400, response.content
    assert response.json()["errorCode"] == code
    assert not NotificationRule.objects.exists()


def test_a_rule_for_a_script_needs_a_script_its_owner_may_read(alice, bob, alice_api):
    """Bob's private script is a 404 for Alice; her own is accepted and shown."""
    private = make_script(bob, "secret_model", "def f():\n    return 1\n")
    assert webhook(alice_api, scriptId=str(private.pk)).status_code == 404
    own = make_script(alice, "mine", "def f():\n    return 1\n")
    body = webhook(alice_api, scriptId=str(own.pk)).json()
    assert body["script"] == {"id": str(own.pk), "name": "mine", "owner": "alice"}


def test_edit_and_delete_a_rule(alice_api):
    rule_id = webhook(alice_api).json()["id"]
    response = alice_api.patch(f"{RULES}/{rule_id}", {"enabled": False, "onSuccess": True}, format="json")
    assert response.status_code == 200
    rule = NotificationRule.objects.get()
    assert rule.enabled is False
    assert rule.on_success is True
    refused = alice_api.patch(f"{RULES}/{rule_id}", {"url": "http://127.0.0.1/"}, format="json")
    assert refused.status_code == 400
    rule.refresh_from_db()
    assert rule.url == "https://hooks.example.org/omlweb"
    assert alice_api.delete(f"{RULES}/{rule_id}").status_code == 204
    assert not NotificationRule.objects.exists()


def test_another_users_rules_and_deliveries_are_invisible(alice, alice_api, bob_api):
    """Bob's list is empty; Alice's rule is a 404 to read, change, delete or test; her deliveries don't show."""
    rule_id = webhook(alice_api).json()["id"]
    rule = NotificationRule.objects.get()
    NotificationDelivery.objects.create(rule=rule, event="test", channel=rule.channel, target=rule.url)
    assert bob_api.get(RULES).json() == {"items": []}
    assert bob_api.get(DELIVERIES).json() == {"items": []}
    assert bob_api.get(f"{DELIVERIES}?rule={rule_id}").status_code == 404
    assert bob_api.get(f"{RULES}/{rule_id}").status_code == 404
    assert bob_api.patch(f"{RULES}/{rule_id}", {"enabled": False}, format="json").status_code == 404
    assert bob_api.delete(f"{RULES}/{rule_id}").status_code == 404
    assert bob_api.post(f"{RULES}/{rule_id}/test").status_code == 404
    assert bob_api.post(f"{RULES}/{rule_id}/secret").status_code == 404
    assert NotificationRule.objects.get().enabled is True
    assert NotificationDelivery.objects.count() == 1
    assert len(alice_api.get(DELIVERIES).json()["items"]) == 1


def test_an_auditor_reads_every_rule_but_changes_nothing(alice_api, auditor_api):
    """Lists and reads work (secret withheld); create, change, delete, test and new secret are 403."""
    rule_id = webhook(alice_api).json()["id"]
    listed = auditor_api.get(RULES).json()["items"]
    assert [item["id"] for item in listed] == [rule_id]
    assert listed[0]["secret"] is None
    assert auditor_api.get(DELIVERIES).status_code == 200
    assert webhook(auditor_api).status_code == 403
    assert auditor_api.patch(f"{RULES}/{rule_id}", {"enabled": False}, format="json").status_code == 403
    assert auditor_api.delete(f"{RULES}/{rule_id}").status_code == 403
    assert auditor_api.post(f"{RULES}/{rule_id}/test").status_code == 403
    assert auditor_api.post(f"{RULES}/{rule_id}/secret").status_code == 403
    assert NotificationRule.objects.count() == 1
    assert NotificationRule.objects.get().enabled is True
    assert not NotificationDelivery.objects.exists()


def test_an_admin_sees_and_changes_every_rule_but_never_rotates_anothers_secret(alice_api, admin_api):
    rule_id = webhook(alice_api).json()["id"]
    secret = NotificationRule.objects.get().secret
    assert [item["id"] for item in admin_api.get(RULES).json()["items"]] == [rule_id]
    assert admin_api.patch(f"{RULES}/{rule_id}", {"enabled": False}, format="json").status_code == 200
    assert admin_api.post(f"{RULES}/{rule_id}/secret").status_code == 400
    assert NotificationRule.objects.get().secret == secret


def test_the_owner_replaces_the_secret(alice_api):
    created = webhook(alice_api).json()
    rotated = alice_api.post(f"{RULES}/{created['id']}/secret").json()
    assert rotated["secret"] != created["secret"]
    assert NotificationRule.objects.get().secret == rotated["secret"]


def test_a_users_rules_match_only_their_own_runs(alice, bob, admin_user):
    """A rule on a global script reports its owner's runs of it, never another user's."""
    script = make_script(admin_user, "shared", "def f():\n    return 1\n", is_global=True)
    rule = notifications.rule_create(owner=alice, name="r", channel="WEBHOOK", url="https://e.org/", script=script)
    theirs = record_run(RunRequest(script=script, user=bob))
    mine = record_run(RunRequest(script=script, user=alice))
    assert list(notifications.rules_for_run(theirs)) == []
    assert list(notifications.rules_for_run(mine)) == [rule]


def test_a_schedule_rule_reports_only_the_runs_that_schedule_starts(alice, alice_api, bob):
    """scheduleId narrows a rule to one of the owner's schedules; another user's schedule is a 404."""
    from datetime import UTC, datetime

    from scripts_app.services.schedules import schedule_save

    script = make_script(alice, "nightly", "def nightly():\n    return 1\n")
    nightly = schedule_save(user=alice, script=script, cron="0 7 * * *")
    other = schedule_save(user=alice, script=script, interval_seconds=3600)
    response = webhook(alice_api, scheduleId=str(nightly.pk))
    assert response.status_code == 201, response.content
    assert response.json()["schedule"] == {"id": str(nightly.pk), "name": nightly.name}
    rule = NotificationRule.objects.get()
    at = datetime(2026, 11, 30, 7, tzinfo=UTC)
    by_nightly = record_run(
        RunRequest(script=script, user=alice, asynchronous=True, schedule=nightly, scheduled_for=at)
    )
    by_other = record_run(RunRequest(script=script, user=alice, asynchronous=True, schedule=other, scheduled_for=at))
    by_hand = record_run(RunRequest(script=script, user=alice, asynchronous=True))
    assert list(notifications.rules_for_run(by_nightly)) == [rule]
    assert list(notifications.rules_for_run(by_other)) == []
    assert list(notifications.rules_for_run(by_hand)) == []
    bobs = schedule_save(user=bob, script=make_script(bob, "his", "def his():\n    return 2\n"), cron="0 8 * * *")
    refused = webhook(alice_api, scheduleId=str(bobs.pk))
    assert refused.status_code == 404, refused.content
