"""The runs history (filters, who sees whose runs, constant queries) and the API tokens page."""

from __future__ import annotations

import datetime as dt

import pytest
from django.urls import reverse
from django.utils import timezone

from scripts_app.models import AccessToken, Run
from tests.factories import UserFactory, make_script
from tests.web.conftest import logged_in


def make_runs(script, user, count, **fields):
    """Run rows straight in the database: the history does not care how they ran."""
    now = timezone.now()
    runs = [
        Run(
            script_version=script.current_version,
            script_name=script.name,
            script_owner=script.owner.username,
            user=user,
            status=fields.get("status", Run.Status.SUCCEEDED),
            created_at=fields.get("created_at", now - dt.timedelta(seconds=i)),
            client_address="10.0.0.1",
            parameters=fields.get("parameters", {}),
        )
        for i in range(count)
    ]
    return Run.objects.bulk_create(runs)


@pytest.fixture
def scripts(alice, bob):
    return (
        make_script(alice, "a", "def a():\n    return 1\n", is_global=False),
        make_script(bob, "b", "def b():\n    return 2\n"),
    )


def names(response):
    return [(run.script_name, run.user.username) for run in response.context["page"].object_list]


def test_an_analyst_sees_only_their_runs(client, alice, bob, scripts):
    """Alice's history has only her runs, newest first."""
    make_runs(scripts[0], alice, 2)
    make_runs(scripts[1], bob, 3)
    response = logged_in(client, alice).get(reverse("web:run_list"))
    assert names(response) == [("a", "alice"), ("a", "alice")]
    assert not response.context["sees_all"]


def test_auditors_and_admins_see_every_run_and_filter_by_user(client, alice, bob, auditor, admin_user, scripts):
    """Auditors and admins see all users' runs and may filter by user."""
    make_runs(scripts[0], alice, 2)
    make_runs(scripts[1], bob, 3)
    for user in (auditor, admin_user):
        client = logged_in(client, user)
        assert len(names(client.get(reverse("web:run_list")))) == 5
        assert names(client.get(reverse("web:run_list"), {"user": "bob"})) == [("b", "bob")] * 3


def test_the_user_filter_is_ignored_for_analysts(client, alice, bob, scripts):
    """An analyst cannot widen the list to another user's runs."""
    make_runs(scripts[1], bob, 3)
    assert names(logged_in(client, alice).get(reverse("web:run_list"), {"user": "bob"})) == []


def test_filters_by_script_status_and_date(client, admin_user, alice, scripts):
    """Script, status and date range filters narrow the list."""
    make_runs(scripts[0], alice, 2)
    make_runs(scripts[0], alice, 1, status=Run.Status.FAILED)
    old = timezone.now() - dt.timedelta(days=10)
    make_runs(scripts[1], alice, 1, created_at=old)
    client = logged_in(client, admin_user)
    url = reverse("web:run_list")
    assert len(names(client.get(url, {"script": "a"}))) == 3
    assert len(names(client.get(url, {"status": "FAILED"}))) == 1
    since = (timezone.now() - dt.timedelta(days=1)).date().isoformat()
    assert len(names(client.get(url, {"since": since}))) == 3
    until = (old + dt.timedelta(days=1)).date().isoformat()
    assert names(client.get(url, {"until": until})) == [("b", "alice")]


def test_it_finds_runs_by_part_of_a_name_or_a_parameter_value(client, alice):
    """The script filter matches part of a name; the parameter search matches a value or a key: value."""
    sales = make_script(alice, "monthly_sales", "def monthly_sales(region='EU', year=2024):\n    return 1\n")
    other = make_script(alice, "costs", "def costs():\n    return 1\n")
    make_runs(sales, alice, 2, parameters={"region": "EU", "year": 2024})
    make_runs(sales, alice, 1, parameters={"region": "US", "filters": {"year": 2023}})
    make_runs(other, alice, 1)
    client = logged_in(client, alice)
    url = reverse("web:run_list")
    assert len(names(client.get(url, {"script": "SALES"}))) == 3
    assert len(names(client.get(url, {"params": "2023"}))) == 1
    assert len(names(client.get(url, {"params": '"region": "EU"'}))) == 2
    assert len(names(client.get(url, {"params": "eu", "script": "monthly"}))) == 2
    assert names(client.get(url, {"params": "nowhere"})) == []


def test_a_value_of_one_or_two_characters_matches_whole_values_and_names(client, alice):
    """A short search matches a whole value or name, at any depth, ignoring case, and the page says so;
    a value that merely contains it does not match (no index finds two characters inside a text)."""
    script = make_script(alice, "tally", "def tally():\n    return 1\n")
    shapes = {
        "number": {"n": 96},
        "float": {"deep": {"x": 96.0}},
        "in a list": {"ids": [1, "96"]},
        "longer number": {"n": 196},
        "inside a text": {"note": "96 apples"},
        "upper": {"region": "EU"},
        "key": {"Eu": 1},
        "negative": {"t": -5},
        "accent": {"city": "É"},
        "quote": {"q": '"'},
        "percent": {"p": "%"},
        "apostrophe": {"a": "'"},
        "backslash": {"b": "\\"},
        "true": {"flag": True},
        "leading zero": {"code": "05"},
    }
    for label, parameters in shapes.items():
        make_runs(script, alice, 1, parameters={"label": label, **parameters})
    client = logged_in(client, alice)

    def found(value):
        response = client.get(reverse("web:run_list"), {"params": value})
        assert response.status_code == 200
        return sorted(run.parameters["label"] for run in response.context["page"].object_list)

    assert found("96") == ["float", "in a list", "number"]
    assert found("eu") == ["key", "upper"]
    assert found("-5") == ["negative"]
    assert found("é") == ["accent"]
    assert found('"') == ["quote"]
    assert found("%") == ["percent"]
    assert found("_") == []
    assert found("'") == ["apostrophe"]
    assert found("\\") == ["backslash"]
    assert found("tr") == []
    assert found("05") == ["leading zero"]
    assert found("5") == []
    assert found("x") == ["float"]  # a key deep inside
    response = client.get(reverse("web:run_list"), {"params": "96"})
    assert b'id="params-whole-word"' in response.content
    assert "“96” has fewer than three characters" in response.content.decode()
    # Three characters: a part of a value again, and no such note.
    response = client.get(reverse("web:run_list"), {"params": "96 "})  # stripped: still short
    assert b'id="params-whole-word"' in response.content
    response = client.get(reverse("web:run_list"), {"params": "196"})
    assert [run.parameters["label"] for run in response.context["page"].object_list] == ["longer number"]
    assert b'id="params-whole-word"' not in response.content
    # With nothing found the page still says why.
    response = client.get(reverse("web:run_list"), {"params": "zz"})
    assert b"No runs match these filters." in response.content
    assert b'id="params-whole-word"' in response.content


def test_a_short_search_keeps_visibility_keyset_and_the_capped_count(client, alice, bob, auditor, scripts, monkeypatch):
    """A short search sees only what the caller may see, walks its pages by keyset, and when its count
    hits the cap the page says so, while every match is still found page by page."""
    from scripts_app.views import history

    monkeypatch.setattr(history, "SEARCH_COUNT_CAP", 40)
    start = timezone.now()
    # 60 of Alice's runs hold 96, interleaved with 60 that hold 196; Bob's 96 is not hers to see.
    for i in range(120):
        make_runs(
            scripts[0], alice, 1, parameters={"n": 96 if i % 2 else 196}, created_at=start - dt.timedelta(seconds=i)
        )
    make_runs(scripts[1], bob, 3, parameters={"n": 96})
    client = logged_in(client, alice)
    url = reverse("web:run_list")
    first = client.get(url, {"params": "96"})
    assert b"More than 40 runs match these filters." in first.content
    page = first.context["page"]
    pages = [page]
    while page.has_next:
        page = client.get(url, {"params": "96", "after": page.next_cursor}).context["page"]
        pages.append(page)
    assert [len(page.object_list) for page in pages] == [50, 10]
    runs = [run for page in pages for run in page.object_list]
    assert {run.user_id for run in runs} == {alice.pk}
    assert all(run.parameters == {"n": 96} for run in runs)
    assert [run.created_at for run in runs] == sorted((run.created_at for run in runs), reverse=True)
    back = client.get(url, {"params": "96", "before": pages[1].previous_cursor}).context["page"]
    assert [run.pk for run in back.object_list] == [run.pk for run in pages[0].object_list]
    # An auditor sees everyone's (Bob's three too); the user filter narrows them.
    client = logged_in(client, auditor)
    assert b"More than 40 runs match these filters." in client.get(url, {"params": "96"}).content
    assert b"3 runs match these filters." in client.get(url, {"params": "96", "user": "bob"}).content


def test_on_sqlite_a_parameter_search_reads_a_window_and_says_so(client, alice, scripts, monkeypatch):
    """SQLite has no index of the parameters: a search reads the newest SQLITE_SEARCH_WINDOW runs the other
    filters leave, finds what they hold, and says where it stopped; narrowing by date moves the window."""
    from django.db import connection

    from scripts_app.views import history

    if connection.vendor != "sqlite":
        pytest.skip("PostgreSQL finds the runs by its indexes and reads no window")
    monkeypatch.setattr(history, "SQLITE_SEARCH_WINDOW", 5)
    now = timezone.now()
    for i in range(6):  # the newest: 96 in every other one
        make_runs(
            scripts[0], alice, 1, parameters={"n": 96 if i % 2 == 0 else 196}, created_at=now - dt.timedelta(seconds=i)
        )
    old = now - dt.timedelta(days=10)
    make_runs(scripts[0], alice, 3, parameters={"n": 96, "old": True}, created_at=old)
    client = logged_in(client, alice)
    url = reverse("web:run_list")
    for value in ("96", "n"):  # a whole word and a part of the text alike
        response = client.get(url, {"params": value})
        runs = response.context["page"].object_list
        assert len(runs) == (3 if value == "96" else 5)
        assert all("old" not in run.parameters for run in runs)
        assert b"Searched the parameters of the newest 5 runs, back to" in response.content
    assert b"3 runs match these filters." in client.get(url, {"params": "96"}).content
    # The older runs, once a date leaves fewer than the window: all found, nothing to say.
    until = (old + dt.timedelta(days=1)).date().isoformat()
    response = client.get(url, {"params": "96", "until": until})
    assert [run.parameters for run in response.context["page"].object_list] == [{"n": 96, "old": True}] * 3
    assert b'id="search-window"' not in response.content
    # Without a parameter search there is no window.
    assert len(client.get(url).context["page"].object_list) == 9


def test_a_search_whose_first_page_holds_every_match_is_counted_from_it(client, alice, scripts):
    """A rare value's count would read again every run the page read: a lone first page is the total;
    past one page the capped count runs as before."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    make_runs(scripts[0], alice, 3, parameters={"n": 96})
    make_runs(scripts[0], alice, 60, parameters={"n": 7})
    client = logged_in(client, alice)
    for value, total, counted in (("96", b"3 runs match", False), ("7", b"60 runs match", True), ("zz", b"", False)):
        with CaptureQueriesContext(connection) as queries:
            response = client.get(reverse("web:run_list"), {"params": value})
        assert total in response.content
        assert any("COUNT(" in query["sql"].upper() for query in queries.captured_queries) == counted, value


def test_a_short_search_is_answered_by_its_index_on_postgresql(alice, admin_user, scripts):
    """The query's expression is the one migration 0017 indexes, so PostgreSQL can take the index (were
    they to differ, a short search would read every run again)."""
    from django.db import connection

    from scripts_app.services import exports

    if connection.vendor != "postgresql":
        pytest.skip("the index of parameter words is PostgreSQL's (SQLite reads the runs)")
    make_runs(scripts[0], alice, 3, parameters={"n": 96})
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_indexscan = off")
    for value in ("96", "eu"):
        # Every run (an admin's view): no other index narrows them, so the plan names the words' index.
        plan = exports.runs_for(user=admin_user, filters={"params": value}).explain()
        assert "run_parameter_words" in plan, plan
    assert exports.runs_for(user=alice, filters={"params": "96"}).count() == 3


def test_it_shows_the_total_and_links_each_run_to_its_script(client, alice, scripts):
    """The list says how many runs match and links each row's script name to the script's page."""
    make_runs(scripts[0], alice, 3)
    response = logged_in(client, alice).get(reverse("web:run_list"))
    assert b"3 runs." in response.content
    assert reverse("web:script_detail", args=[scripts[0].pk]).encode() in response.content


def test_the_list_is_paginated_by_keyset(client, alice, scripts):
    """50 runs a page, cut by the last row shown (?after=), never by OFFSET; ?before= walks back."""
    make_runs(scripts[0], alice, 120)
    client = logged_in(client, alice)
    url = reverse("web:run_list")
    seen, page = [], client.get(url).context["page"]
    pages = [page]
    while page.has_next:
        page = client.get(url, {"after": page.next_cursor}).context["page"]
        pages.append(page)
    seen = [run.pk for page in pages for run in page.object_list]
    assert [len(page.object_list) for page in pages] == [50, 50, 20]
    assert len(set(seen)) == 120
    assert seen == list(Run.objects.order_by("-created_at", "-id").values_list("pk", flat=True))
    assert pages[0].total == 120
    assert not pages[0].has_previous
    # Back from the last page: the middle page again, with links both ways.
    back = client.get(url, {"before": pages[2].previous_cursor}).context["page"]
    assert [run.pk for run in back.object_list] == [run.pk for run in pages[1].object_list]
    assert back.has_previous
    assert back.has_next
    response = client.get(url, {"after": pages[0].next_cursor})
    assert b'rel="prev"' in response.content
    assert b'rel="next"' in response.content
    assert b"page=" not in response.content


def test_keyset_pages_are_stable_under_inserts_and_ties(client, alice, scripts):
    """Runs added while a reader walks the pages neither repeat nor skip a row; equal times are ordered by id."""
    same_moment = timezone.now() - dt.timedelta(hours=1)
    make_runs(scripts[0], alice, 70, created_at=same_moment)
    client = logged_in(client, alice)
    url = reverse("web:run_list")
    first = client.get(url).context["page"]
    make_runs(scripts[0], alice, 30)  # newer than everything
    second = client.get(url, {"after": first.next_cursor}).context["page"]
    walked = [run.pk for run in first.object_list + second.object_list]
    assert len(walked) == len(set(walked)) == 70
    assert not second.has_next


@pytest.mark.parametrize("cursor", ["x", "1_zz", "99999999999999999999_" + "0" * 32, "-5_abc", "1_" + "f" * 40])
def test_a_crafted_cursor_is_a_first_page_not_an_error(client, alice, scripts, cursor):
    make_runs(scripts[0], alice, 3)
    client = logged_in(client, alice)
    for key in ("after", "before"):
        response = client.get(reverse("web:run_list"), {key: cursor})
        assert response.status_code == 200


def test_the_total_is_capped(client, alice, scripts, monkeypatch):
    """Past the cap the page says "more than", so a million runs cost no full count."""
    from scripts_app.views import history

    monkeypatch.setattr(history, "COUNT_CAP", 10)
    make_runs(scripts[0], alice, 12)
    response = logged_in(client, alice).get(reverse("web:run_list"))
    assert b"More than 10 runs." in response.content


def test_queries_do_not_grow_with_runs_or_users(client, admin_user, scripts, django_assert_num_queries):
    """The list takes the same few queries for 5 runs or 100 runs of many users (no N+1)."""
    users = [UserFactory() for _ in range(10)]
    for user in users:
        make_runs(scripts[0], user, 10)
    client = logged_in(client, admin_user)
    # session, user, groups, count, page, usernames for the filter; the caller's group limits and the
    # sum of their storage (runs and datasets in one statement)
    with django_assert_num_queries(8):
        response = client.get(reverse("web:run_list"))
    assert len(response.context["page"].object_list) == 50
    with django_assert_num_queries(5):
        client.get(reverse("web:run_list"), {"user": users[0].username}, headers={"HX-Request": "true"})


# API tokens


def test_it_creates_a_token_shown_once(alice_client, alice):
    """A new token is shown once; only its hash is stored, and it works on the API."""
    response = alice_client.post(reverse("web:token_list"), {"name": "nightly"})
    raw = response.context["new_token"]
    assert raw.encode() in response.content
    token = AccessToken.objects.get(user=alice, name="nightly")
    assert token.kind == AccessToken.Kind.PERSONAL
    assert raw not in token.token_hash
    assert raw.encode() not in alice_client.get(reverse("web:token_list")).content
    api = alice_client.__class__()
    answer = api.get("/oml/api/py-scripts/v1/scripts", headers={"Authorization": f"Bearer {raw}"})
    assert answer.status_code == 200
    token.refresh_from_db()
    assert token.last_used_at is not None
    assert b"never" not in alice_client.get(reverse("web:token_list")).content


def test_it_revokes_a_token(alice_client, alice):
    """A revoked token no longer authenticates."""
    alice_client.post(reverse("web:token_list"), {"name": "t"})
    token = AccessToken.objects.get(user=alice)
    alice_client.post(reverse("web:token_revoke", args=[token.pk]))
    token.refresh_from_db()
    assert token.revoked_at is not None


def test_a_user_cannot_revoke_another_users_token(client, alice, bob):
    """Bob's revoke of Alice's token is a 404, and the token still works."""
    from scripts_app.services.tokens import personal_token_create

    _, token = personal_token_create(user=alice, name="mine")
    response = logged_in(client, bob).post(reverse("web:token_revoke", args=[token.pk]))
    assert response.status_code == 404
    token.refresh_from_db()
    assert token.revoked_at is None


def test_tokens_page_lists_only_own_personal_tokens(client, alice, bob):
    """OML tokens and other users' tokens are not listed."""
    from scripts_app.services.tokens import personal_token_create, token_issue

    personal_token_create(user=alice, name="alices")
    personal_token_create(user=bob, name="bobs")
    token_issue(user=alice)
    response = logged_in(client, alice).get(reverse("web:token_list"))
    assert [t.name for t in response.context["tokens"]] == ["alices"]


def test_forms_need_csrf(alice, scripts):
    """A POST without the CSRF token is refused."""
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert client.post(reverse("web:token_list"), {"name": "x"}).status_code == 403
    assert client.post(reverse("web:script_create"), {"name": "x", "source": "def x(): pass"}).status_code == 403


def test_the_list_refreshes_itself_while_runs_are_active(client, alice, scripts):
    """A page with a queued run polls; a page of finished runs does not."""
    make_runs(scripts[0], alice, 2)
    client = logged_in(client, alice)
    assert b'hx-trigger="every 3s"' not in client.get(reverse("web:run_list")).content
    make_runs(scripts[0], alice, 1, status=Run.Status.QUEUED)
    assert b'hx-trigger="every 3s"' in client.get(reverse("web:run_list")).content


def test_a_parameter_search_counts_up_to_a_lower_cap(client, alice, scripts, monkeypatch):
    """ "Parameters contain" reads each matching run's parameters to count: it stops at SEARCH_COUNT_CAP."""
    from scripts_app.views import history

    monkeypatch.setattr(history, "SEARCH_COUNT_CAP", 4)
    make_runs(scripts[0], alice, 6, parameters={"region": "EU"})
    client = logged_in(client, alice)
    assert b"More than 4 runs match these filters." in client.get(reverse("web:run_list"), {"params": "region"}).content
    assert b"6 runs match these filters." in client.get(reverse("web:run_list"), {"script": scripts[0].name}).content


@pytest.mark.django_db(transaction=True)
def test_a_count_that_takes_too_long_is_not_shown(alice):
    """On PostgreSQL the history's count stops after COUNT_TIMEOUT_MS and the page says it did not count;
    the connection is usable afterwards, with its own statement timeout back."""
    from django.db import connection
    from django.db.models.expressions import RawSQL

    from scripts_app.views import history

    if connection.vendor != "postgresql":
        pytest.skip("statement_timeout is PostgreSQL's; SQLite counts in full (docs/ui.md, Numbers)")
    sleepy = "SELECT id FROM scripts_app_run WHERE (SELECT true FROM pg_sleep(0.5))"
    slow = Run.objects.filter(pk__in=RawSQL(sleepy, []))
    assert history.bounded_count(slow) is None
    assert history.bounded_count(Run.objects.all()) == 0
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] == "0"
    page = history.KeysetPage([], has_next=False, has_previous=False, total=None)
    assert page.total is None
    assert not page.total_capped
