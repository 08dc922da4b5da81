"""Notifications through the real service: a run fails (sync in the web process, or an async job on a real
worker), a real worker takes the delivery from the notifications queue and sends it to a real SMTP server
and a real HTTP receiver, which verifies the signature."""

from __future__ import annotations

import json
import re
import time

import pytest
from django.core.management import call_command
from kombu import Queue

from omlweb.celery import app as celery_app
from scripts_app.models import NotificationDelivery, Run
from scripts_app.services import notifications
from tests.conftest import client_for
from tests.factories import UserFactory, make_script
from tests.notifications.receivers import SMTPServer, WebhookReceiver, verifies
from tests.worker.conftest import _cluster, publish_on, wait_for, wait_status

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

BASE_URL = "https://omlweb.example.org"
SCRIPT = (
    "import time\n"
    "def job(seconds=0, fail=True):\n"
    "    time.sleep(seconds)\n"
    "    if fail:\n"
    "        raise RuntimeError('the model diverged')\n"
    "    return 'ok'\n"
)


@pytest.fixture(scope="module")
def servers():
    smtp, receiver = SMTPServer().start(), WebhookReceiver().start()
    yield smtp, receiver
    smtp.stop()
    receiver.stop()


@pytest.fixture(scope="module")
def notify_cluster(celery_on_broker, django_db_setup, django_db_blocker, tmp_path_factory, servers):
    """One worker for the service levels' queues, one for the notifications' queue (as `serve` gives each both)."""
    smtp, _ = servers
    env = {
        "OMLWEB_SMTP_HOST": "127.0.0.1",
        "OMLWEB_SMTP_PORT": str(smtp.port),
        "OMLWEB_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
        "OMLWEB_NOTIFY_BACKOFF_SECONDS": "0.3",
        "OMLWEB_NOTIFY_MAX_ATTEMPTS": "3",
        "OMLWEB_BASE_URL": BASE_URL,
    }
    with django_db_blocker.unblock():
        clusters = _cluster(celery_on_broker, tmp_path_factory.mktemp("notify-cluster"))
        cluster = next(clusters)
        cluster.start("jobs", ["LOW", "MEDIUM", "HIGH"], **env)
        cluster.start("notify", ["NOTIFICATIONS"], **env)
    yield cluster
    with django_db_blocker.unblock():
        if celery_on_broker.name != "filesystem":
            with celery_app.connection_for_write() as conn, conn.channel() as channel:
                Queue(f"{cluster.prefix}.notifications", channel=channel).delete()
        next(clusters, None)


@pytest.fixture
def wired(notify_cluster, transactional_db, settings, servers):
    publish_on(notify_cluster, settings)
    # This process saves the rules: webhooks to the local receiver must pass its check too.
    settings.OMLWEB_WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    # The summary (with its links) is written where the run ends, here for a sync run.
    settings.OMLWEB_BASE_URL = BASE_URL
    smtp, receiver = servers
    smtp.mails.clear()
    receiver.requests.clear()
    receiver.answers.clear()
    return notify_cluster


@pytest.fixture
def alice(transactional_db):
    return UserFactory(username="alice", email="alice@example.org")


@pytest.fixture
def rules(alice, servers):
    _, receiver = servers
    make_script(alice, "job", SCRIPT)
    notifications.rule_create(owner=alice, name="mail", channel="EMAIL")
    return notifications.rule_create(owner=alice, name="hook", channel="WEBHOOK", url=receiver.url())


def delivered(servers, cluster):
    smtp, receiver = servers
    mail = wait_for(lambda: smtp.to("alice@example.org"), timeout=30, what="the e-mail", on=cluster)
    request = wait_for(lambda: receiver.received(), timeout=30, what="the webhook", on=cluster)
    return mail[0], request[0]


def test_a_failing_sync_run_is_notified_by_a_worker(wired, alice, rules, servers):
    response = client_for(alice).post("/oml/api/py-scripts/v2/do-eval/job", {}, format="json")
    assert response.status_code == 400
    run = Run.objects.get()
    mail, request = delivered(servers, wired)
    assert mail.subject == "[omlweb] job v1 ended FAILED"
    assert "the model diverged" in mail.text
    assert f"{BASE_URL}/runs/{run.pk}/" in mail.text
    assert verifies(rules.secret, request)
    assert request.json["run"]["id"] == str(run.pk)
    assert request.json["run"]["mode"] == "SYNC"
    wait_for(
        lambda: NotificationDelivery.objects.filter(status="SENT").count() == 2, timeout=10, what="both recorded SENT"
    )


def test_a_failing_async_job_on_a_worker_is_notified(wired, alice, rules, servers):
    response = client_for(alice).post(
        "/oml/api/py-scripts/v2/do-eval/job", {"asyncFlag": True, "parameters": json.dumps({})}, format="json"
    )
    assert response.status_code == 201
    job_id = re.search(r"jobs/([0-9a-f-]{36})$", response["Location"]).group(1)
    wait_status(job_id, "FAILED", timeout=60, on=wired)
    mail, request = delivered(servers, wired)
    assert "the model diverged" in mail.text
    assert verifies(rules.secret, request)
    summary = request.json["run"]
    assert summary["id"] == job_id
    assert summary["mode"] == "ASYNC"
    assert summary["attempts"] == 1
    assert summary["links"]["api"] == f"{BASE_URL}/oml/api/py-scripts/v2/jobs/{job_id}"


def test_a_receiver_answering_500_then_200_is_retried_by_the_worker(wired, alice, rules, servers):
    _, receiver = servers
    receiver.answers.append(500)
    client_for(alice).post("/oml/api/py-scripts/v2/do-eval/job", {}, format="json")
    wait_for(lambda: len(receiver.received()) == 2, timeout=30, what="the webhook's second attempt", on=wired)
    first, second = receiver.received()
    assert verifies(rules.secret, first)
    assert verifies(rules.secret, second)
    assert second.received_at - first.received_at >= 0.3
    wait_for(
        lambda: NotificationDelivery.objects.filter(channel="WEBHOOK", status="SENT").exists(),
        timeout=10,
        what="the retry recorded SENT",
    )
    rows = list(
        NotificationDelivery.objects.filter(channel="WEBHOOK").order_by("attempt").values_list("attempt", "status_code")
    )
    assert rows == [(1, 500), (2, 200)]


def test_a_job_running_past_n_seconds_is_notified_while_it_runs(wired, alice, servers):
    """The reaper's pass (reap_runs) finds it; the notification arrives before the job ends."""
    _, receiver = servers
    make_script(alice, "job", SCRIPT)
    rule = notifications.rule_create(
        owner=alice, name="slow", channel="WEBHOOK", url=receiver.url(), on_failure=False, longer_than_seconds=1
    )
    response = client_for(alice).post(
        "/oml/api/py-scripts/v2/do-eval/job",
        {"asyncFlag": True, "parameters": json.dumps({"seconds": 6, "fail": False})},
        format="json",
    )
    job_id = re.search(r"jobs/([0-9a-f-]{36})$", response["Location"]).group(1)
    wait_status(job_id, "RUNNING", timeout=60, on=wired)
    time.sleep(1.2)
    call_command("reap_runs")
    [request] = wait_for(lambda: receiver.received(), timeout=20, what="the long-running webhook", on=wired)
    assert verifies(rule.secret, request)
    assert request.json["event"] == "long-running"
    assert Run.objects.get(pk=job_id).status == Run.Status.RUNNING
    wait_status(job_id, "SUCCEEDED", timeout=60, on=wired)
    call_command("reap_runs")
    time.sleep(1)
    assert len(receiver.received()) == 1
