"""Notifications delivered for real: SMTP to an aiosmtpd server, webhooks to a local HTTP server.

The delivery task runs eagerly in this process here (the same task code a worker runs); the worker
tests (tests/worker/test_notifications_on_workers.py) send them through a real broker and worker.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from kombu import pools as kombu_pools

from omlweb.celery import app as celery_app
from scripts_app.models import NotificationDelivery, NotificationRule, Run
from scripts_app.services import notifications
from scripts_app.services.execution import execute_run
from scripts_app.services.pipeline import RunRequest, record_run
from tests.factories import make_script
from tests.notifications.receivers import verifies

FAILING = "def boom(x=1):\n    raise ValueError('bad input %s' % x)\n"
SUCCEEDING = "def fine(x=1):\n    return {'x': x}\n"
SLOW = "import time\ndef slow(seconds=1.2):\n    time.sleep(seconds)\n    return seconds\n"
BASE_URL = "https://omlweb.example.org"
Status = NotificationDelivery.Status


@pytest.fixture
def wired(settings, smtp_server, receiver, alice):
    """SMTP to the test server, webhooks allowed to loopback, short backoff, deliveries run eagerly."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = smtp_server.port
    settings.OMLWEB_WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    settings.OMLWEB_NOTIFY_BACKOFF_SECONDS = 0.05
    settings.OMLWEB_NOTIFY_MAX_ATTEMPTS = 3
    settings.OMLWEB_BASE_URL = BASE_URL
    alice.email = "alice@example.org"
    alice.save()
    saved = celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates
    celery_app.conf.task_always_eager = celery_app.conf.task_eager_propagates = True
    yield
    celery_app.conf.task_always_eager, celery_app.conf.task_eager_propagates = saved


def do_eval(api, name, parameters=None, capture=None):
    with capture(execute=True):
        return api.post(
            f"/oml/api/py-scripts/v1/do-eval/{name}", {"parameters": json.dumps(parameters or {})}, format="json"
        )


def hook(owner, receiver, **fields) -> NotificationRule:
    return notifications.rule_create(owner=owner, name="hook", channel="WEBHOOK", url=receiver.url(), **fields)


def test_a_failing_sync_run_sends_an_email_and_a_signed_webhook(
    wired, alice, alice_api, smtp_server, receiver, django_capture_on_commit_callbacks
):
    """One e-mail to the owner, one webhook whose HMAC the receiver verifies, both recorded SENT."""
    make_script(alice, "boom", FAILING)
    notifications.rule_create(owner=alice, name="mail me", channel="EMAIL")
    rule = hook(alice, receiver)
    response = do_eval(alice_api, "boom", {"x": 7}, django_capture_on_commit_callbacks)
    assert response.status_code == 400
    run = Run.objects.get()
    [mail] = smtp_server.to("alice@example.org")
    assert mail.subject == "[omlweb] boom v1 ended FAILED"
    assert f"{BASE_URL}/runs/{run.pk}/" in mail.text
    assert "bad input 7" in mail.text
    [request] = receiver.received()
    assert verifies(rule.secret, request)
    assert not verifies("another secret", request)
    assert request.headers["X-Omlweb-Signature"].startswith("sha256=")
    assert request.headers["X-Omlweb-Event"] == "failure"
    assert request.headers["Content-Type"] == "application/json"
    body = request.json
    assert body["event"] == "failure"
    assert body["rule"] == {"id": str(rule.pk), "name": "hook"}
    summary = body["run"]
    assert summary["id"] == str(run.pk)
    assert summary["script"] == "boom"
    assert summary["version"] == 1
    assert summary["user"] == "alice"
    assert summary["status"] == "FAILED"
    assert summary["error"]["code"] == 1030
    assert "bad input 7" in summary["error"]["message"]
    assert summary["startedAt"]
    assert summary["finishedAt"]
    assert summary["durationSeconds"] > 0
    assert summary["links"] == {"page": f"{BASE_URL}/runs/{run.pk}/", "api": None}
    deliveries = {d.channel: d for d in NotificationDelivery.objects.all()}
    assert deliveries["EMAIL"].status == Status.SENT
    assert deliveries["EMAIL"].target == "alice@example.org"
    assert deliveries["WEBHOOK"].status == Status.SENT
    assert deliveries["WEBHOOK"].status_code == 200
    assert '"received": true' in deliveries["WEBHOOK"].response_excerpt
    assert deliveries["WEBHOOK"].run_id == run.pk
    assert request.headers["X-Omlweb-Delivery"] == str(deliveries["WEBHOOK"].pk)


def test_a_receiver_answering_500_then_200_gets_a_retry_and_both_are_recorded(
    wired, alice, alice_api, receiver, django_capture_on_commit_callbacks
):
    receiver.answers = [500]
    make_script(alice, "boom", FAILING)
    rule = hook(alice, receiver)
    do_eval(alice_api, "boom", capture=django_capture_on_commit_callbacks)
    first, second = NotificationDelivery.objects.order_by("attempt")
    assert (first.attempt, first.status, first.status_code) == (1, Status.FAILED, 500)
    assert "HTTP 500" in first.error
    assert (second.attempt, second.status, second.status_code) == (2, Status.SENT, 200)
    assert second.not_before >= first.finished_at + timedelta(seconds=0.05)
    requests = receiver.received()
    assert len(requests) == 2
    assert all(verifies(rule.secret, request) for request in requests)
    assert requests[0].body == requests[1].body
    assert requests[0].headers["X-Omlweb-Delivery"] != requests[1].headers["X-Omlweb-Delivery"]


def test_a_receiver_that_keeps_failing_is_tried_max_attempts_times(
    wired, alice, alice_api, receiver, django_capture_on_commit_callbacks
):
    receiver.answers = [503] * 10
    make_script(alice, "boom", FAILING)
    hook(alice, receiver)
    do_eval(alice_api, "boom", capture=django_capture_on_commit_callbacks)
    rows = list(NotificationDelivery.objects.order_by("attempt").values_list("attempt", "status", "status_code"))
    assert rows == [(1, "FAILED", 503), (2, "FAILED", 503), (3, "FAILED", 503)]
    assert len(receiver.received()) == 3


def test_an_smtp_refusal_is_recorded_with_its_code_and_retried(
    wired, alice, alice_api, smtp_server, django_capture_on_commit_callbacks, settings
):
    settings.OMLWEB_NOTIFY_MAX_ATTEMPTS = 2
    smtp_server.refuse.add("alice@example.org")
    make_script(alice, "boom", FAILING)
    notifications.rule_create(owner=alice, name="mail", channel="EMAIL")
    do_eval(alice_api, "boom", capture=django_capture_on_commit_callbacks)
    rows = list(NotificationDelivery.objects.order_by("attempt"))
    assert [(row.attempt, row.status, row.status_code) for row in rows] == [(1, "FAILED", 550), (2, "FAILED", 550)]
    assert "No such mailbox" in rows[0].error
    assert smtp_server.mails == []


def test_success_rules_fire_on_success_and_failure_rules_do_not(
    wired, alice, alice_api, receiver, django_capture_on_commit_callbacks
):
    make_script(alice, "fine", SUCCEEDING)
    make_script(alice, "boom", FAILING)
    on_success = hook(alice, receiver, on_failure=False, on_success=True)
    on_failure = notifications.rule_create(
        owner=alice, name="failures", channel="WEBHOOK", url=receiver.url("/failures")
    )
    assert do_eval(alice_api, "fine", {"x": 3}, django_capture_on_commit_callbacks).status_code == 200
    [request] = receiver.received()
    assert request.json["event"] == "success"
    assert request.json["run"]["status"] == "SUCCEEDED"
    assert request.json["run"]["error"] is None
    assert receiver.received("/failures") == []
    do_eval(alice_api, "boom", capture=django_capture_on_commit_callbacks)
    assert len(receiver.received()) == 1
    assert len(receiver.received("/failures")) == 1
    assert set(NotificationDelivery.objects.values_list("rule_id", "event")) == {
        (on_success.pk, "success"),
        (on_failure.pk, "failure"),
    }


def test_a_script_rule_covers_only_that_scripts_runs(
    wired, alice, alice_api, receiver, django_capture_on_commit_callbacks
):
    boom = make_script(alice, "boom", FAILING)
    make_script(alice, "boom2", FAILING)
    hook(alice, receiver, script=boom)
    do_eval(alice_api, "boom2", capture=django_capture_on_commit_callbacks)
    assert receiver.received() == []
    do_eval(alice_api, "boom", capture=django_capture_on_commit_callbacks)
    assert [request.json["run"]["script"] for request in receiver.received()] == ["boom"]


def test_disabled_rules_and_other_users_runs_send_nothing(
    wired, alice, bob, bob_api, receiver, django_capture_on_commit_callbacks
):
    make_script(bob, "boom", FAILING)
    hook(alice, receiver)
    hook(bob, receiver, enabled=False)
    do_eval(bob_api, "boom", capture=django_capture_on_commit_callbacks)
    assert receiver.received() == []
    assert not NotificationDelivery.objects.exists()


def test_a_run_still_running_past_n_seconds_is_reported_once(wired, alice, receiver):
    """The reaper's check reports it while it runs; neither a second check nor its end report it again."""
    script = make_script(alice, "fine", SUCCEEDING)
    rule = hook(alice, receiver, on_failure=False, longer_than_seconds=5)
    run = record_run(RunRequest(script=script, user=alice), started=True)
    Run.objects.filter(pk=run.pk).update(started_at=timezone.now() - timedelta(seconds=12))
    assert notifications.check_long_running() != []
    [request] = receiver.received()
    assert verifies(rule.secret, request)
    assert request.json["event"] == "long-running"
    assert request.json["run"]["status"] == "RUNNING"
    assert request.json["runningSeconds"] >= 12
    assert request.json["longerThanSeconds"] == 5
    assert notifications.check_long_running() == []
    run.refresh_from_db()
    execute_run(run)
    notifications.notify_finished(run_id=run.pk)
    assert len(receiver.received()) == 1
    assert NotificationDelivery.objects.get().event == "long-running"


def test_a_run_that_took_longer_than_n_is_reported_when_it_ends(
    wired, alice, alice_api, receiver, django_capture_on_commit_callbacks
):
    make_script(alice, "slow", SLOW)
    hook(alice, receiver, on_failure=False, longer_than_seconds=1)
    do_eval(alice_api, "slow", {"seconds": 0.1}, django_capture_on_commit_callbacks)
    assert receiver.received() == []
    do_eval(alice_api, "slow", {"seconds": 1.3}, django_capture_on_commit_callbacks)
    [request] = receiver.received()
    assert request.json["event"] == "long-running"
    assert request.json["run"]["durationSeconds"] > 1


def test_a_run_reported_twice_is_notified_once(wired, alice, alice_api, receiver, django_capture_on_commit_callbacks):
    make_script(alice, "boom", FAILING)
    hook(alice, receiver)
    do_eval(alice_api, "boom", capture=django_capture_on_commit_callbacks)
    run = Run.objects.get()
    assert notifications.notify_finished(run_id=run.pk) == []
    assert len(receiver.received()) == 1


def test_webhooks_to_loopback_names_are_refused_at_send_without_the_allow_list(wired, alice, receiver, settings):
    """A name (accepted when saved) resolving to a private address is refused when sending, and not retried."""
    settings.OMLWEB_WEBHOOK_ALLOWED_NETWORKS = []
    rule = notifications.rule_create(
        owner=alice, name="sneaky", channel="WEBHOOK", url=f"http://localhost:{receiver.port}/hook"
    )
    delivery = notifications.rule_test_send(rule=rule)
    delivery.refresh_from_db()
    assert delivery.status == Status.FAILED
    assert "not a public address" in delivery.error
    assert receiver.received() == []
    assert NotificationDelivery.objects.count() == 1


def test_redirects_are_not_followed(wired, alice, receiver, settings):
    settings.OMLWEB_NOTIFY_MAX_ATTEMPTS = 1
    receiver.answers = [302]
    receiver.redirect_to = receiver.url("/elsewhere")
    delivery = notifications.rule_test_send(rule=hook(alice, receiver))
    delivery.refresh_from_db()
    assert (delivery.status, delivery.status_code) == (Status.FAILED, 302)
    assert receiver.received("/elsewhere") == []


def test_a_receiver_that_hangs_times_out(wired, alice, receiver, settings):
    settings.OMLWEB_NOTIFY_MAX_ATTEMPTS = 1
    settings.OMLWEB_WEBHOOK_TIMEOUT_SECONDS = 0.5
    receiver.delay = 3
    started = time.monotonic()
    delivery = notifications.rule_test_send(rule=hook(alice, receiver))
    delivery.refresh_from_db()
    assert time.monotonic() - started < 3
    assert delivery.status == Status.FAILED
    assert "timed out" in delivery.error


def test_a_test_send_says_so_and_has_no_run(wired, alice, alice_api, receiver, smtp_server):
    rule = hook(alice, receiver)
    response = alice_api.post(f"/oml/api/notifications/rules/{rule.pk}/test")
    assert response.status_code == 202
    assert response.json()["event"] == "test"
    [request] = receiver.received()
    assert request.json["event"] == "test"
    assert request.json["run"] is None
    assert verifies(rule.secret, request)
    listed = alice_api.get(f"/oml/api/notifications/deliveries?rule={rule.pk}").json()["items"]
    assert [(item["status"], item["statusCode"]) for item in listed] == [("SENT", 200)]


def test_a_replayed_or_altered_request_does_not_verify(wired, alice, receiver):
    rule = hook(alice, receiver)
    notifications.rule_test_send(rule=rule)
    [request] = receiver.received()
    assert notifications.verify(
        rule.secret, request.headers["X-Omlweb-Timestamp"], request.body, request.headers["X-Omlweb-Signature"]
    )
    later = time.time() + 3600
    assert not notifications.verify(
        rule.secret,
        request.headers["X-Omlweb-Timestamp"],
        request.body,
        request.headers["X-Omlweb-Signature"],
        now=later,
    )
    altered = request.body.replace(b'"test"', b'"failure"')
    assert not notifications.verify(
        rule.secret, request.headers["X-Omlweb-Timestamp"], altered, request.headers["X-Omlweb-Signature"]
    )


def _point_celery_at(url: str) -> None:
    if celery_app._pool is not None:
        celery_app._pool.force_close_all()
        celery_app._pool = None
    celery_app.amqp._producer_pool = None
    kombu_pools.reset()
    celery_app.conf.broker_url = url


def test_a_broker_that_is_down_never_fails_the_run_and_the_sweep_sends_later(
    wired, alice, alice_api, receiver, django_capture_on_commit_callbacks
):
    """The run answers as usual; the delivery waits PENDING; the reaper's sweep publishes it once it can."""
    make_script(alice, "boom", FAILING)
    hook(alice, receiver)
    saved = celery_app.conf.broker_url
    celery_app.conf.task_always_eager = False
    _point_celery_at("amqp://guest:guest@127.0.0.1:1//")
    try:
        response = do_eval(alice_api, "boom", capture=django_capture_on_commit_callbacks)
    finally:
        _point_celery_at(saved)
        celery_app.conf.task_always_eager = True
    assert response.status_code == 400
    assert response.json()["errorCode"] == 1030
    delivery = NotificationDelivery.objects.get()
    assert delivery.status == Status.PENDING
    assert receiver.received() == []
    NotificationDelivery.objects.update(not_before=timezone.now() - timedelta(minutes=5))
    assert notifications.sweep() == [str(delivery.pk)]
    delivery.refresh_from_db()
    assert delivery.status == Status.SENT
    assert len(receiver.received()) == 1
