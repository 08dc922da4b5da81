"""The audit trail through the front door: each audited action leaves exactly one event with the right
actor and object, in the transaction of the change; the chain shows tampering; prune keeps it verifiable."""

from __future__ import annotations

import contextlib
import io
import json

import pandas as pd
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction
from django.test import Client
from rest_framework.test import APIClient

from scripts_app.models import AccessToken, AuditEvent, Dataset, Environment, GroupLimits, Run, Script
from scripts_app.roles import ANALYSTS, AUDITORS
from scripts_app.services import audit
from scripts_app.services.jobs import submission
from tests.conftest import client_for
from tests.factories import PASSWORD, UserFactory, make_script

SOURCE = "def add(a=1, b=1):\n    return a + b\n"
SOURCE_2 = "def add(a=1, b=2):\n    return a + b\n"


@pytest.fixture
def admin(group_admin):
    """An admin by role (tests/conftest.py's group_admin)."""
    return group_admin


def web(user, **extra) -> Client:
    client = Client(REMOTE_ADDR="10.1.2.3", HTTP_USER_AGENT="audit-test/1.0", **extra)
    client.force_login(user)
    return client


def last_id() -> int:
    return AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0


@contextlib.contextmanager
def one_event(action: str, *, actor, object_type: str, object_id=None):
    """The block leaves exactly one event (sign-ins of the block's own clients aside), as described."""
    mark = last_id()
    found: dict = {}
    yield found
    new = list(AuditEvent.objects.filter(id__gt=mark).exclude(action="auth.sign_in").order_by("id"))
    assert [event.action for event in new] == [action]
    event = new[0]
    assert event.actor_name == (actor.get_username() if actor else "")
    assert event.actor_id == (actor.pk if actor else None)
    assert event.object_type == object_type
    if object_id is not None:
        assert event.object_id == str(object_id)
    found["event"] = event


# Scripts


def test_scripts_create_version_restore_global_grant_revoke_delete(analyst, admin, bob):
    """Each script action through the API and the pages is one event by its actor, on the script."""
    api = client_for(analyst)
    with one_event("script.create", actor=analyst, object_type="script") as found:
        response = api.post(
            "/oml/api/py-scripts/v1/scripts", {"name": "add", "script": SOURCE}, format="json", REMOTE_ADDR="10.9.9.9"
        )
        assert response.status_code == 201, response.content
    script = Script.objects.get(name="add")
    created = found["event"]
    assert created.object_id == str(script.pk)
    assert created.object_name == "alice/add"
    assert created.client_address == "10.9.9.9"
    assert created.after["version"] == 1

    page = web(analyst)
    with one_event("script.new_version", actor=analyst, object_type="script", object_id=script.pk) as found:
        response = page.post(
            f"/scripts/{script.pk}/edit/", {"name": "add", "source": SOURCE_2, "description": "", "env_name": ""}
        )
        assert response.status_code == 302
    assert (found["event"].before["version"], found["event"].after["version"]) == (1, 2)
    assert found["event"].user_agent == "audit-test/1.0"

    with one_event("script.restore", actor=analyst, object_type="script", object_id=script.pk) as found:
        assert page.post(f"/scripts/{script.pk}/versions/1/restore/").status_code == 302
    assert found["event"].after["version"] == 3

    with one_event("script.grant", actor=analyst, object_type="script", object_id=script.pk) as found:
        assert page.post(f"/scripts/{script.pk}/grants/", {"username": "bob"}).status_code == 302
    assert found["event"].after["grantee"] == "bob"

    with one_event("script.revoke", actor=analyst, object_type="script", object_id=script.pk):
        assert page.post(f"/scripts/{script.pk}/grants/{bob.pk}/revoke/").status_code == 302

    with one_event("script.make_global", actor=admin, object_type="script", object_id=script.pk) as found:
        assert web(admin).post(f"/scripts/{script.pk}/global/", {"is_global": "true"}).status_code == 302
    assert (found["event"].before["is_global"], found["event"].after["is_global"]) == (False, True)

    with one_event("script.delete", actor=analyst, object_type="script", object_id=script.pk) as found:
        assert page.post(f"/scripts/{script.pk}/delete/").status_code == 302
    assert found["event"].before["name"] == "add"
    assert audit.verify().ok


def test_a_refused_change_leaves_no_event(analyst, bob):
    """A change that fails (another's script, a bad source) records nothing."""
    script = make_script(bob, "mine", SOURCE)
    mark = last_id()
    page = web(analyst)
    assert page.post(f"/scripts/{script.pk}/delete/").status_code in (403, 404)
    api = client_for(analyst)
    assert (
        api.post("/oml/api/py-scripts/v1/scripts", {"name": "bad", "script": "def ("}, format="json").status_code == 400
    )
    assert not AuditEvent.objects.filter(id__gt=mark).exclude(action__in=("auth.sign_in", "token.issue")).exists()


def test_an_event_rolls_back_with_its_change(analyst):
    """Recorded in the change's transaction: when that rolls back, the event goes too."""
    mark = last_id()
    with contextlib.suppress(RuntimeError), transaction.atomic():
        make_script(analyst, "gone", SOURCE)
        assert AuditEvent.objects.filter(id__gt=mark, action="script.create").exists()
        raise RuntimeError("roll back")
    assert not Script.objects.filter(name="gone").exists()
    assert not AuditEvent.objects.filter(id__gt=mark).exists()
    make_script(analyst, "kept", SOURCE)
    assert audit.verify().ok


# Datasets


def test_datasets_create_replace_grant_revoke_delete(analyst, bob):
    frame = pd.DataFrame({"x": [1, 2, 3]})
    api = client_for(analyst)
    with one_event("dataset.create", actor=analyst, object_type="dataset") as found:
        response = api.post(
            "/oml/api/py-scripts/v1/datasets",
            {"name": "sales", "file": io.BytesIO(frame.to_csv(index=False).encode())},
            format="multipart",
        )
        assert response.status_code == 201, response.content
    dataset = Dataset.objects.get(name="sales")
    assert found["event"].object_id == str(dataset.pk)
    assert found["event"].after["rows"] == 3

    page = web(analyst)
    with one_event("dataset.grant", actor=analyst, object_type="dataset", object_id=dataset.pk):
        assert page.post(f"/datasets/{dataset.pk}/grants/", {"username": "bob"}).status_code == 302
    with one_event("dataset.revoke", actor=analyst, object_type="dataset", object_id=dataset.pk):
        assert page.post(f"/datasets/{dataset.pk}/grants/{bob.pk}/revoke/").status_code == 302
    bigger = pd.DataFrame({"x": [1, 2, 3, 4]}).to_csv(index=False).encode()
    with one_event("dataset.replace", actor=analyst, object_type="dataset", object_id=dataset.pk) as found:
        upload = io.BytesIO(bigger)
        upload.name = "sales.csv"
        assert page.post(f"/datasets/{dataset.pk}/replace/", {"file": upload}).status_code == 302
    assert (found["event"].before["rows"], found["event"].after["rows"]) == (3, 4)
    with one_event("dataset.delete", actor=analyst, object_type="dataset", object_id=dataset.pk):
        assert page.post(f"/datasets/{dataset.pk}/delete/").status_code == 302


# Environments


def test_environments_define_rebuild_delete(admin, monkeypatch, django_capture_on_commit_callbacks):
    """Define, rebuild and delete through the API: one event each, by the admin."""
    monkeypatch.setattr("scripts_app.environments.tasks.build_environment.delay", lambda *args: None)
    api = client_for(admin)
    with one_event("environment.define", actor=admin, object_type="environment") as found:
        with django_capture_on_commit_callbacks(execute=True):
            response = api.post("/oml/api/py-scripts/v1/envs", {"name": "probe", "packages": "six"}, format="json")
        assert response.status_code == 201, response.content
    environment = Environment.objects.get(name="probe")
    assert found["event"].after["packages"] == "six"
    with (
        one_event("environment.rebuild", actor=admin, object_type="environment", object_id=environment.pk) as found,
        django_capture_on_commit_callbacks(execute=True),
    ):
        assert api.post("/oml/api/py-scripts/v1/envs/probe/rebuild").status_code in (200, 202)
    assert (found["event"].before["generation"], found["event"].after["generation"]) == (1, 2)
    with one_event("environment.delete", actor=admin, object_type="environment", object_id=environment.pk):
        assert api.delete("/oml/api/py-scripts/v1/envs/probe").status_code in (200, 204)


# Users, roles, groups and admin settings


def test_users_created_given_a_role_and_deactivated(admin):
    page = web(admin)
    with one_event("user.create", actor=admin, object_type="user") as found:
        response = page.post("/users/", {"username": "carol", "password": "long enough pw", "role": ANALYSTS})
        assert response.status_code == 302
    carol = get_user_model().objects.get(username="carol")
    assert found["event"].after["groups"] == [ANALYSTS]
    with one_event("user.role", actor=admin, object_type="user", object_id=carol.pk) as found:
        assert page.post(f"/users/{carol.pk}/", {"role": AUDITORS, "is_active": "on"}).status_code == 302
    assert (found["event"].before["groups"], found["event"].after["groups"]) == ([ANALYSTS], [AUDITORS])
    with one_event("user.deactivate", actor=admin, object_type="user", object_id=carol.pk):
        assert page.post(f"/users/{carol.pk}/", {"role": AUDITORS}).status_code == 302


def test_group_limits_changed_in_djangos_admin(db):
    """A setting an admin changes in Django's admin (a group's limits) is one event with the new values."""
    root = UserFactory(username="root", is_superuser=True, is_staff=True)
    group = Group.objects.create(name="analysts")
    page = web(root)
    form = {
        "name": "analysts",
        "omlweb_limits-TOTAL_FORMS": "1",
        "omlweb_limits-INITIAL_FORMS": "0",
        "omlweb_limits-MIN_NUM_FORMS": "0",
        "omlweb_limits-MAX_NUM_FORMS": "1",
        "omlweb_limits-0-max_sync_runs": "7",
        "omlweb_limits-0-quota_mb": "",
        "omlweb_limits-0-group": str(group.pk),
    }
    with one_event("admin.change", actor=root, object_type="group", object_id=group.pk) as found:
        response = page.post(f"/admin/auth/group/{group.pk}/change/", form)
        assert response.status_code == 302, response.content[:2000]
    assert GroupLimits.objects.get(group=group).max_sync_runs == 7
    assert found["event"].after["admin_object"]["limits"]["max_sync_runs"] == 7
    assert "Group limits" in json.dumps(found["event"].after["change"]) or found["event"].after["change"]


# Tokens and sign-ins


def test_tokens_issue_refresh_revoke_and_personal(analyst):
    anonymous = APIClient(REMOTE_ADDR="10.7.7.7")
    with one_event("token.issue", actor=analyst, object_type="token") as found:
        response = anonymous.post(
            "/omlusers/api/oauth2/v1/token",
            {"grant_type": "password", "username": "alice", "password": PASSWORD},
            format="json",
        )
        assert response.status_code == 200
    assert found["event"].client_address == "10.7.7.7"
    raw = response.json()["accessToken"]
    assert raw[:12] not in json.dumps(found["event"].after)  # the token itself is never in the trail
    with one_event("token.refresh", actor=analyst, object_type="token"):
        response = anonymous.post(
            "/omlusers/api/oauth2/v1/token", {"grant_type": "refresh_token", "refresh_token": raw}, format="json"
        )
        assert response.status_code == 200
    fresh = response.json()["accessToken"]
    with one_event("token.revoke", actor=analyst, object_type="token"):
        anonymous.credentials(HTTP_AUTHORIZATION=f"Bearer {fresh}")
        assert anonymous.post("/omlusers/api/oauth2/v1/token/revoke").status_code == 200
    page = web(analyst)
    with one_event("token.personal_create", actor=analyst, object_type="token"):
        assert page.post("/tokens/", {"name": "nightly"}).status_code == 200
    token = AccessToken.objects.get(kind=AccessToken.Kind.PERSONAL)
    with one_event("token.revoke", actor=analyst, object_type="token", object_id=token.pk):
        assert page.post(f"/tokens/{token.pk}/revoke/").status_code == 302


def test_sign_in_and_failed_sign_in_on_the_page_and_the_api(analyst):
    """Both ways in record success and failure; a failure names the username tried, not a user."""
    browser = Client(REMOTE_ADDR="10.5.5.5")
    mark = last_id()
    assert browser.post("/accounts/login/", {"username": "alice", "password": "wrong"}).status_code == 200
    assert browser.post("/accounts/login/", {"username": "alice", "password": PASSWORD}).status_code == 302
    response = APIClient().post(
        "/omlusers/api/oauth2/v1/token",
        {"grant_type": "password", "username": "nobody", "password": "x"},
        format="json",
    )
    assert response.status_code == 401
    events = list(AuditEvent.objects.filter(id__gt=mark).order_by("id"))
    assert [event.action for event in events] == ["auth.sign_in_failed", "auth.sign_in", "auth.sign_in_failed"]
    failed, signed_in, unknown = events
    assert (failed.actor_id, failed.actor_name, failed.object_id) == (None, "alice", str(analyst.pk))
    assert failed.client_address == "10.5.5.5"
    assert (signed_in.actor_id, signed_in.object_id) == (analyst.pk, str(analyst.pk))
    assert (unknown.object_name, unknown.object_id, unknown.after["known_user"]) == ("nobody", "", False)


# Runs


def test_a_run_submission_and_a_cancellation(analyst, monkeypatch):
    """A sync run and an async job are one run.submit each; cancelling the job is one run.cancel."""
    make_script(analyst, "add", SOURCE)
    api = client_for(analyst)
    with one_event("run.submit", actor=analyst, object_type="run") as found:
        response = api.post("/oml/api/py-scripts/v1/do-eval/add", {"parameters": '{"a": 2}'}, format="json")
        assert response.status_code == 200
    run = Run.objects.get()
    assert found["event"].object_id == str(run.pk)
    assert found["event"].after["parameters"] == {"a": 2}

    monkeypatch.setattr(submission, "job_enqueue", lambda *, run, countdown=None: None)
    with one_event("run.submit", actor=analyst, object_type="run"):
        response = api.post("/oml/api/py-scripts/v2/do-eval/add", {"asyncFlag": True}, format="json")
        assert response.status_code == 201
    job = Run.objects.get(mode=Run.Mode.ASYNC)
    with one_event("run.cancel", actor=analyst, object_type="run", object_id=job.pk) as found:
        assert api.post(f"/oml/api/py-scripts/v2/jobs/{job.pk}/cancel").status_code == 200
    assert found["event"].after["status"] == Run.Status.CANCELLED


# Schedules and notification rules


def test_schedule_and_notification_rule_changes(analyst):
    """Creating, changing, pausing, resuming and deleting a schedule, and a notification rule's life,
    are one event each by their actor; a rule's webhook secret never enters the trail."""
    make_script(analyst, "add", SOURCE)
    api = client_for(analyst)
    schedules = "/oml/api/py-scripts/v2/schedules"
    with one_event("schedule.create", actor=analyst, object_type="schedule") as found:
        response = api.post(schedules, {"scriptName": "add", "cron": "0 7 * * *"}, format="json")
        assert response.status_code == 201, response.content
    schedule_id = response.json()["result"]["id"]
    assert found["event"].after["cron"] == "0 7 * * *"
    with one_event("schedule.update", actor=analyst, object_type="schedule", object_id=schedule_id) as found:
        assert api.patch(f"{schedules}/{schedule_id}", {"cron": "0 8 * * *"}, format="json").status_code == 200
    assert (found["event"].before["cron"], found["event"].after["cron"]) == ("0 7 * * *", "0 8 * * *")
    for action in ("pause", "resume"):
        with one_event(f"schedule.{action}", actor=analyst, object_type="schedule", object_id=schedule_id):
            assert api.post(f"{schedules}/{schedule_id}/{action}").status_code == 200
    with one_event("schedule.delete", actor=analyst, object_type="schedule", object_id=schedule_id):
        assert api.delete(f"{schedules}/{schedule_id}").status_code in (200, 204)

    rules = "/oml/api/notifications/rules"
    body = {"name": "hook", "channel": "WEBHOOK", "url": "https://hooks.example.org/omlweb"}
    with one_event("notification_rule.create", actor=analyst, object_type="notification_rule") as found:
        response = api.post(rules, body, format="json")
        assert response.status_code == 201, response.content
    rule_id, secret = response.json()["id"], response.json()["secret"]
    with one_event("notification_rule.update", actor=analyst, object_type="notification_rule", object_id=rule_id):
        assert api.patch(f"{rules}/{rule_id}", {"onSuccess": True}, format="json").status_code == 200
    with one_event("notification_rule.new_secret", actor=analyst, object_type="notification_rule"):
        assert api.post(f"{rules}/{rule_id}/secret").status_code == 200
    with one_event("notification_rule.delete", actor=analyst, object_type="notification_rule", object_id=rule_id):
        assert api.delete(f"{rules}/{rule_id}").status_code in (200, 204)
    trail = "".join(str(row) for row in AuditEvent.objects.values_list("before", "after"))
    assert secret not in trail


# The chain


def test_a_deleted_user_stays_named_and_the_chain_holds(analyst, admin):
    make_script(analyst, "add", SOURCE)
    event = AuditEvent.objects.get(action="script.create")
    Script.objects.all().delete()
    alice_id = analyst.pk
    analyst.delete()
    event = AuditEvent.objects.get(pk=event.pk)
    assert (event.actor_id, event.actor_name) == (alice_id, "alice")
    assert audit.verify().ok


def test_an_edited_event_is_found_by_audit_verify(analyst):
    for name in ("a", "b", "c"):
        make_script(analyst, name, SOURCE)
    call_command("audit_verify", stdout=io.StringIO())
    middle = AuditEvent.objects.get(object_name="alice/b")
    with connection.cursor() as cursor:
        cursor.execute("UPDATE scripts_app_auditevent SET actor_name = %s WHERE id = %s", ["mallory", middle.pk])
    with pytest.raises(CommandError, match=rf"broken at event #{middle.pk}: its content does not match"):
        call_command("audit_verify", stdout=io.StringIO())


def test_a_removed_event_is_found(analyst):
    for name in ("a", "b", "c"):
        make_script(analyst, name, SOURCE)
    b, c = (AuditEvent.objects.get(object_name=f"alice/{name}") for name in "bc")
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM scripts_app_auditevent WHERE id = %s", [b.pk])
    result = audit.verify()
    assert (result.broken_id, result.reason) == (c.pk, f"event #{b.pk} is missing before it")


def test_a_forged_event_with_a_recomputed_hash_is_found(analyst):
    """Rewriting an event and its own hash does not help: the next event points at the old hash."""
    for name in ("a", "b", "c"):
        make_script(analyst, name, SOURCE)
    b, c = (AuditEvent.objects.get(object_name=f"alice/{name}") for name in "bc")
    b.actor_name = "mallory"
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE scripts_app_auditevent SET actor_name = 'mallory', hash = %s WHERE id = %s",
            [audit.event_hash(b), b.pk],
        )
    result = audit.verify()
    assert (result.broken_id, result.reason) == (c.pk, "its previous hash is not the hash of the event before")


def test_a_removed_tail_is_found(analyst):
    make_script(analyst, "a", SOURCE)
    make_script(analyst, "b", SOURCE)
    last = AuditEvent.objects.order_by("-id").first()
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM scripts_app_auditevent WHERE id = %s", [last.pk])
    result = audit.verify()
    assert not result.ok
    assert "missing" in result.reason


def test_the_application_never_changes_or_deletes_an_event(analyst):
    make_script(analyst, "a", SOURCE)
    event = AuditEvent.objects.get()
    event.actor_name = "mallory"
    with pytest.raises(ValueError, match="never changed"):
        event.save()
    with pytest.raises(ValueError, match="audit_prune"):
        event.delete()
    with pytest.raises(ValueError, match="never changed"):
        AuditEvent.objects.filter(pk=event.pk).update(actor_name="mallory")
    with pytest.raises(ValueError, match="audit_prune"):
        AuditEvent.objects.all().delete()
    assert AuditEvent.objects.get().actor_name == "alice"


def test_prune_leaves_an_anchor_and_a_chain_that_verifies(analyst):
    for name in ("a", "b", "c"):
        make_script(analyst, name, SOURCE)
    old = list(AuditEvent.objects.order_by("id"))
    cut = AuditEvent.objects.get(object_name="alice/c").created_at
    make_script(analyst, "d", SOURCE)
    out = io.StringIO()
    call_command("audit_prune", "--before", cut.isoformat(), stdout=out)
    assert "Removed 2 audit events" in out.getvalue()
    kept = list(AuditEvent.objects.order_by("id").values_list("action", "object_name"))
    assert kept == [("script.create", "alice/c"), ("script.create", "alice/d"), ("audit.prune", "events up to #2")]
    result = audit.verify()
    assert result.ok
    assert (result.anchor_id, result.checked) == (old[1].id, 3)
    make_script(analyst, "e", SOURCE)
    call_command("audit_verify", stdout=out)
    assert "verified: 4 events from the anchor after event #2" in out.getvalue()
    # The anchor is what the kept chain hangs on: a forged anchor breaks it.
    with connection.cursor() as cursor:
        cursor.execute("UPDATE scripts_app_auditanchor SET last_removed_hash = %s", ["f" * 64])
    assert audit.verify().broken_id == AuditEvent.objects.order_by("id").first().id


def test_prune_refuses_bad_dates(db):
    with pytest.raises(CommandError, match="not a date"):
        call_command("audit_prune", "--before", "yesterday")
    with pytest.raises(CommandError, match="future"):
        call_command("audit_prune", "--before", "2999-01-01")
    out = io.StringIO()
    call_command("audit_prune", "--before", "2000-01-01", stdout=out)
    assert "No audit events" in out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_make_one_chain(analyst):
    """Eight threads recording at once (each its own connection): the chain head's lock keeps one chain."""
    import threading

    from django.db import connections

    if connection.vendor != "postgresql":
        pytest.skip("SQLite serialises every writer by itself; the row lock matters on PostgreSQL")
    errors: list[BaseException] = []

    def write(number: int) -> None:
        try:
            for i in range(10):
                with transaction.atomic():
                    audit.record("script.update", object_type="script", object_id=f"{number}-{i}", actor=analyst)
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=write, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert AuditEvent.objects.filter(action="script.update").count() == 80
    result = audit.verify()
    assert result.ok, result


def test_hostile_text_is_stored_as_it_can_be_and_still_verifies(analyst):
    """NUL characters, a literal backslash-u0000, control characters in the user agent: the event is
    written on every database and its hash still matches what reads back."""
    audit.record(
        "script.update",
        object_type="script",
        object_name="evil\x00name",
        actor=analyst,
        before={"text": "a\\u0000b", "nul\x00key": ["x\x00y", 1.5, None]},
        after={"emoji": "\u2603", "deep": {"list": [{"a": "\x00"}]}},
    )
    # (A NUL in the User-Agent itself makes django-axes fail on PostgreSQL before the trail sees it.)
    Client(HTTP_USER_AGENT="agent\x07\n", HTTP_X_REQUEST_ID="id\x00-1").post(
        "/accounts/login/", {"username": "alice", "password": "wrong"}
    )
    event = AuditEvent.objects.get(action="script.update")
    assert event.object_name == "evilname"
    assert event.before == {"text": "a\\u0000b", "nulkey": ["xy", 1.5, None]}
    failed = AuditEvent.objects.get(action="auth.sign_in_failed")
    assert (failed.user_agent, failed.request_id) == ("agent", "id-1")
    assert audit.verify().ok
