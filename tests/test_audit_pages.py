"""Reading the audit trail: who may, the filters, an event as it was, and the streamed exports (pages
and API), plus the run history export."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import tracemalloc

import pytest
from django.http import StreamingHttpResponse
from django.test import Client
from django.utils import timezone

from scripts_app.models import AuditEvent, Run
from scripts_app.services import audit, exports
from scripts_app.services.pipeline import RunRequest, record_run
from tests.conftest import client_for
from tests.factories import UserFactory, make_script

SOURCE = "def add(a=1, b=1):\n    return a + b\n"


@pytest.fixture
def admin(group_admin):
    """An admin by role (tests/conftest.py's group_admin)."""
    return group_admin


def web(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def synthetic(count: int, *, start: dt.datetime | None = None, actors=("alice", "bob", "carol")):
    """`count` chained events, one a second from `start`, through audit.record_many."""
    start = start or timezone.now() - dt.timedelta(seconds=count)
    audit.record_many(
        {
            "created_at": start + dt.timedelta(seconds=i),
            "actor_name": actors[i % len(actors)],
            "action": ("script.create", "dataset.delete", "run.submit")[i % 3],
            "object_type": ("script", "dataset", "run")[i % 3],
            "object_id": str(i),
            "object_name": f"thing-{i}",
            "client_address": "10.0.0.1",
            "after": {"i": i, "text": "x" * 40},
        }
        for i in range(count)
    )


def body_of(response) -> str:
    assert isinstance(response, StreamingHttpResponse)
    return b"".join(response.streaming_content).decode()


# Who may read


def test_an_auditor_reads_the_trail_and_an_event(analyst, auditor):
    script = make_script(analyst, "add", SOURCE)
    event = AuditEvent.objects.get(action="script.create")
    page = web(auditor)
    listing = page.get("/audit/")
    assert listing.status_code == 200
    assert b"script.create" in listing.content
    assert b"alice/add" in listing.content
    detail = page.get(f"/audit/{event.pk}/")
    assert detail.status_code == 200
    text = detail.content.decode()
    assert event.hash in text
    assert f"/scripts/{script.pk}/versions/1/" in text  # the object as it was: the version it made
    assert "Open it as it is now" in text
    assert b"Audit" in page.get("/scripts/").content  # the navigation links it


def test_an_auditor_changes_nothing(analyst, auditor):
    make_script(analyst, "add", SOURCE)
    event = AuditEvent.objects.get()
    page = web(auditor)
    for url in ("/audit/", f"/audit/{event.pk}/", "/audit/export.csv"):
        assert page.post(url).status_code == 405
        assert page.delete(url).status_code == 405
    api = client_for(auditor)
    assert api.post("/oml/api/audit/events", {}, format="json").status_code == 405
    assert api.delete("/oml/api/audit/events").status_code == 405
    # Not even a superuser changes an event in Django's admin.
    root = UserFactory(username="root", is_superuser=True, is_staff=True)
    admin_page = web(root)
    assert admin_page.get(f"/admin/scripts_app/auditevent/{event.pk}/change/").status_code == 200
    assert admin_page.post(f"/admin/scripts_app/auditevent/{event.pk}/change/", {"action": "x"}).status_code == 403
    assert admin_page.post(f"/admin/scripts_app/auditevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert AuditEvent.objects.get(pk=event.pk).action == "script.create"
    assert audit.verify().ok


def test_an_analyst_cannot_see_the_trail(analyst):
    make_script(analyst, "add", SOURCE)
    event = AuditEvent.objects.get()
    page = web(analyst)
    for url in ("/audit/", f"/audit/{event.pk}/", "/audit/export.csv", "/audit/export.jsonl"):
        assert page.get(url).status_code == 403
    assert b'href="/audit/"' not in page.get("/scripts/").content
    api = client_for(analyst)
    assert api.get("/oml/api/audit/events").status_code == 403
    assert api.get("/oml/api/audit/events/export.csv").status_code == 403
    assert Client().get("/audit/").status_code == 302  # to the sign-in page
    assert Client().get("/oml/api/audit/events").status_code == 401


# Filters


def test_filters_by_actor_action_object_and_time(admin):
    start = timezone.now() - dt.timedelta(days=10)
    synthetic(30, start=start)
    api = client_for(admin)

    def ids(**params):
        response = api.get("/oml/api/audit/events", {"limit": 1000, **params})
        assert response.status_code == 200, response.content
        return [item["id"] for item in response.json()["items"] if item["action"] != "token.issue"]

    assert len(ids()) == 30
    assert len(ids(actor="bob")) == 10
    assert len(ids(action="dataset.delete")) == 10
    assert len(ids(action="script.")) == 10
    assert ids(object_type="run", object_id="5") == [6]
    assert ids(since=(start + dt.timedelta(seconds=25)).isoformat()) == [30, 29, 28, 27, 26]
    assert ids(until=(start + dt.timedelta(seconds=2)).isoformat()) == [2, 1]
    assert len(ids(actor="bob", action="dataset.delete")) == 10  # every second event of three is bob's deletion
    assert ids(actor="bob", action="script.create") == []
    assert api.get("/oml/api/audit/events", {"since": "last week"}).status_code == 400
    assert api.get("/oml/api/audit/events", {"limit": 0}).status_code == 400
    assert api.get("/oml/api/audit/events", {"cursor": "abc"}).status_code == 400
    assert web(admin).get("/audit/", {"since": "2026-13-45"}).status_code == 400
    assert web(admin).get("/audit/", {"actor": "x" * 500}).status_code == 400


def test_the_api_pages_with_a_cursor_to_the_end(admin):
    synthetic(25)
    api = client_for(admin)
    seen = []
    url = "/oml/api/audit/events?limit=10&action=script."
    while url:
        body = api.get(url).json()
        seen += [item["id"] for item in body["items"]]
        url = body["next"]
    assert seen == sorted(seen, reverse=True)
    assert len(seen) == len(set(seen)) == 9
    first = api.get("/oml/api/audit/events", {"limit": 3}).json()
    assert first["items"][0]["hash"] == AuditEvent.objects.order_by("-id").first().hash
    assert set(first["items"][0]) == set(audit.EXPORT_FIELDS)


def test_the_page_walks_older_events(admin):
    synthetic(120)
    page = web(admin)
    first = page.get("/audit/", {"action": "script."})
    assert first.content.count(b"<tr>") == 41  # the header and the 40 script events
    first = page.get("/audit/")
    assert first.content.count(b"<tr>") == 51  # the header and 50 events
    assert b"Older" in first.content
    older = page.get("/audit/", {"before": first.context["next_before"]})
    assert older.context["events"][0].id < first.context["events"][-1].id


# Exports


def test_exports_stream_every_matching_event_as_csv_and_jsonl(auditor):
    synthetic(4500)
    page = web(auditor)
    response = page.get("/audit/export.csv", {"actor": "alice"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(body_of(response))))
    assert len(rows) == 1500
    assert {row["actor_name"] for row in rows} == {"alice"}
    assert json.loads(rows[0]["after"])["text"] == "x" * 40
    ids = [int(row["id"]) for row in rows]
    assert ids == sorted(ids, reverse=True)

    response = page.get("/audit/export.jsonl")
    lines = body_of(response).splitlines()
    assert len(lines) == 4501  # and the auditor's own sign-in
    last = json.loads(lines[0])
    assert last["hash"] == AuditEvent.objects.order_by("-id").first().hash

    api = client_for(auditor)
    streamed = api.get("/oml/api/audit/events/export.jsonl", {"action": "run.submit"})
    assert len(body_of(streamed).splitlines()) == 1500
    assert api.get("/oml/api/audit/events/export.xml").status_code == 400


def test_an_export_reads_in_keyset_chunks(auditor, django_assert_max_num_queries):
    """The query count grows with rows / chunk, not with rows: 4,500 events are 3 reads of 2,000."""
    synthetic(4500)
    response = web(auditor).get("/audit/export.csv")
    with django_assert_max_num_queries(3):
        assert len(body_of(response).splitlines()) == 1 + 4500 + 1  # the header, the events, the sign-in


def test_export_memory_stays_flat(db):
    """Peak memory of exporting 50,000 events is about that of 5,000: nothing holds the whole result."""
    synthetic(50_000)

    def peak(limit: int) -> int:
        tracemalloc.start()
        for count, _lines in enumerate(audit.export_lines(filters=audit.Filters(), fmt="csv"), start=1):
            if count * 2000 >= limit:
                break
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, large = peak(5_000), peak(50_000)
    assert large < small * 1.5 + 512 * 1024, (small, large)


def test_a_csv_cell_never_starts_a_formula(admin):
    audit.record("script.create", object_type="script", object_name="=HYPERLINK(1)", actor=None)
    rows = list(csv.DictReader(io.StringIO(body_of(web(admin).get("/audit/export.csv", {"action": "script.create"})))))
    assert rows[0]["object_name"] == "'=HYPERLINK(1)"


# The run history export


def test_run_history_exports_what_the_user_may_see(analyst, bob, auditor):
    script = make_script(analyst, "add", SOURCE)
    record_run(RunRequest(script=script, user=analyst, parameters={"a": 2}))
    record_run(RunRequest(script=script, user=analyst, parameters={"a": 3}))
    other = make_script(bob, "other", SOURCE)
    record_run(RunRequest(script=other, user=bob, parameters={"a": 9}))
    mine = list(csv.DictReader(io.StringIO(body_of(web(analyst).get("/runs/export.csv")))))
    assert [row["script_name"] for row in mine] == ["add", "add"]
    assert {json.loads(row["parameters"])["a"] for row in mine} == {2, 3}
    assert set(mine[0]) == set(exports.RUN_FIELDS)
    assert mine[0]["script_version"] == "1"
    assert mine[0]["env_name"] == "default"
    assert mine[0]["status"] == Run.Status.QUEUED

    every = body_of(web(auditor).get("/runs/export.jsonl")).splitlines()
    assert len(every) == 3
    filtered = body_of(web(auditor).get("/runs/export.jsonl", {"user": "bob"})).splitlines()
    assert [json.loads(line)["user"] for line in filtered] == ["bob"]
    api = client_for(analyst)
    assert len(body_of(api.get("/oml/api/runs/export.jsonl")).splitlines()) == 2
    assert b"/runs/export.csv" in web(analyst).get("/runs/").content


def test_run_history_export_pages_through_equal_timestamps(analyst):
    """Keyset on (created_at, id): runs made in the same instant are neither lost nor repeated."""
    script = make_script(analyst, "add", SOURCE)
    moment = timezone.now()
    Run.objects.bulk_create(
        [
            Run(
                script_version=script.current_version,
                script_name="add",
                script_owner="alice",
                user=analyst,
                created_at=moment,
                parameters={"i": i},
            )
            for i in range(2500)
        ]
    )
    rows = list(exports.iter_runs(exports.runs_for(user=analyst, filters={}), chunk=1000))
    assert len({row["id"] for row in rows}) == 2500
