"""A job's submission (pipeline.start_run, asynchronous): recorded in one transaction of its own (the
user's lock, the share's check, the insert, the audit event), then published once committed."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from scripts_app.errors import TooManyRuns
from scripts_app.models import AuditEvent, Run
from scripts_app.services.pipeline import RunRequest, start_run
from tests.factories import UserFactory, make_script


@pytest.fixture
def published(monkeypatch):
    sent: list[tuple[str, bool]] = []
    # What the broker is given, and whether the run was committed by then (no transaction open).
    monkeypatch.setattr(
        "scripts_app.services.jobs.submission.job_enqueue",
        lambda *, run, **kwargs: sent.append((str(run.pk), connection.in_atomic_block)),
    )
    return sent


@pytest.mark.django_db(transaction=True)
def test_a_job_is_recorded_in_one_transaction_without_a_savepoint_and_published_after_it(published, settings):
    settings.OMLWEB_USER_MAX_QUEUED_JOBS = 1
    script = make_script(UserFactory(), "f", "def f():\n    return 1\n")
    request = RunRequest(script=script, user=script.owner, parameters={}, asynchronous=True)
    with CaptureQueriesContext(connection) as queries:
        run = start_run(request)
    assert not [query["sql"] for query in queries if "SAVEPOINT" in query["sql"]]
    assert published == [(str(run.pk), False)]
    assert Run.objects.get(pk=run.pk).status == Run.Status.QUEUED
    assert AuditEvent.objects.filter(action="run.submit", object_id=str(run.pk)).exists()
    # Over the share: refused, nothing recorded, published or audited.
    with pytest.raises(TooManyRuns):
        start_run(request)
    assert Run.objects.count() == 1
    assert published == [(str(run.pk), False)]
    assert AuditEvent.objects.filter(action="run.submit").count() == 1
