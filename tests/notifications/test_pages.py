"""The notifications pages through the test client: create, edit, delete, and who may do what."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from scripts_app.models import NotificationDelivery, NotificationRule
from scripts_app.roles import AUDITORS
from scripts_app.services import notifications
from tests.factories import UserFactory, make_script

FORM = {
    "name": "nightly",
    "on_failure": "on",
    "channel": "WEBHOOK",
    "url": "https://hooks.example.org/x",
    "enabled": "on",
}


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def alice_rule(alice):
    return notifications.rule_create(owner=alice, name="mine", channel="WEBHOOK", url="https://hooks.example.org/a")


def test_a_rule_is_created_from_the_page_and_shows_its_secret(alice):
    client = signed_in(alice)
    response = client.post("/notifications/", FORM)
    rule = NotificationRule.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/notifications/{rule.pk}/"
    page = client.get(response["Location"]).content.decode()
    assert rule.secret in page
    assert "X-Omlweb-Signature" in page
    assert rule.owner == alice


def test_a_refused_url_is_shown_on_its_field_and_nothing_is_saved(alice):
    response = signed_in(alice).post("/notifications/", {**FORM, "url": "file:///etc/passwd"})
    assert response.status_code == 422
    assert "must start with http:// or https://" in response.content.decode()
    assert not NotificationRule.objects.exists()


def test_the_script_choice_offers_only_scripts_the_user_may_read(alice, bob):
    make_script(alice, "mine", "def f():\n    return 1\n")
    theirs = make_script(bob, "theirs", "def f():\n    return 1\n")
    page = signed_in(alice).get("/notifications/").content.decode()
    assert "alice/mine" in page
    assert "bob/theirs" not in page
    response = signed_in(alice).post("/notifications/", {**FORM, "script": str(theirs.pk)})
    assert response.status_code == 422
    assert not NotificationRule.objects.exists()


def test_edit_and_delete_from_the_page(alice, alice_rule):
    client = signed_in(alice)
    response = client.post(f"/notifications/{alice_rule.pk}/", {**FORM, "name": "renamed", "enabled": ""})
    assert response.status_code == 302
    alice_rule.refresh_from_db()
    assert alice_rule.name == "renamed"
    assert alice_rule.enabled is False
    old = alice_rule.secret
    client.post(f"/notifications/{alice_rule.pk}/secret/")
    alice_rule.refresh_from_db()
    assert alice_rule.secret != old
    assert client.post(f"/notifications/{alice_rule.pk}/delete/").status_code == 302
    assert not NotificationRule.objects.exists()


def test_another_users_rule_is_a_404_everywhere(alice_rule, bob):
    client = signed_in(bob)
    for path in ("", "test/", "secret/", "delete/"):
        method = client.get if not path else client.post
        assert method(f"/notifications/{alice_rule.pk}/{path}").status_code == 404
    assert "mine" not in client.get("/notifications/").content.decode()
    assert NotificationRule.objects.count() == 1


def test_an_auditor_reads_the_pages_but_may_not_post(alice_rule, db):
    auditor = UserFactory(username="audrey")
    auditor.groups.add(Group.objects.get_or_create(name=AUDITORS)[0])
    client = signed_in(auditor)
    listing = client.get("/notifications/").content.decode()
    assert "mine" in listing
    assert "New rule" not in listing
    detail = client.get(f"/notifications/{alice_rule.pk}/").content.decode()
    assert alice_rule.secret not in detail
    assert "Change the rule" not in detail
    assert client.post("/notifications/", FORM).status_code == 403
    for path in ("", "test/", "secret/", "delete/"):
        assert client.post(f"/notifications/{alice_rule.pk}/{path}", FORM).status_code == 403
    assert NotificationRule.objects.get().name == "mine"
    assert not NotificationDelivery.objects.exists()


def test_an_admin_sees_every_rule_but_not_its_secret(alice_rule, admin_user):
    client = signed_in(admin_user)
    assert "mine" in client.get("/notifications/").content.decode()
    detail = client.get(f"/notifications/{alice_rule.pk}/").content.decode()
    assert alice_rule.secret not in detail
    assert "Only the rule's owner sees its secret" in detail


def test_the_deliveries_list_polls_while_one_is_open_and_stops_after(alice, alice_rule):
    client = signed_in(alice)
    delivery = NotificationDelivery.objects.create(
        rule=alice_rule, event="test", channel="WEBHOOK", target=alice_rule.url
    )
    htmx = {"HTTP_HX_REQUEST": "true", "HTTP_HX_TARGET": "deliveries"}
    response = client.get(f"/notifications/{alice_rule.pk}/", **htmx)
    assert response.status_code == 200
    assert 'hx-trigger="every 2s"' in response.content.decode()
    NotificationDelivery.objects.filter(pk=delivery.pk).update(status="SENT", status_code=200)
    response = client.get(f"/notifications/{alice_rule.pk}/", **htmx)
    assert response.status_code == 286
    assert "hx-trigger" not in response.content.decode()
