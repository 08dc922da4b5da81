"""A finished run's DATA table is converted once per process: sorting and paging it reuse it (results.run_table)."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from scripts_app import results
from scripts_app.models import Run
from tests.factories import make_script
from tests.web.conftest import logged_in


@pytest.fixture(autouse=True)
def no_tables_kept():
    results._tables.clear()
    yield
    results._tables.clear()


def finished_run(user, rows, *, status=Run.Status.SUCCEEDED):
    script = make_script(user, f"t{rows}x{status}".lower(), "def f():\n    return 1\n")
    now = timezone.now()
    return Run.objects.create(
        script_version=script.current_version,
        script_name=script.name,
        script_owner=user.username,
        user=user,
        status=status,
        created_at=now,
        started_at=now,
        finished_at=now,
        result=[{"i": i, "name": f"row {i}"} for i in range(rows)],
    )


def test_the_same_finished_run_loaded_again_reuses_its_table(alice):
    run = finished_run(alice, 30)
    first = results.run_table(Run.objects.get(pk=run.pk))
    again = results.run_table(Run.objects.get(pk=run.pk))
    assert first is not None
    assert first.columns == ["i", "name"]
    assert len(first.rows) == 30
    assert again is first


def test_only_the_last_few_tables_are_kept(alice):
    runs = [finished_run(alice, rows) for rows in range(1, results.TABLES_KEPT + 2)]
    tables = [results.run_table(run) for run in runs]
    assert len(results._tables) == results.TABLES_KEPT
    # The first was dropped: loading it again builds a new table with the same rows.
    rebuilt = results.run_table(Run.objects.get(pk=runs[0].pk))
    assert rebuilt is not tables[0]
    assert rebuilt == tables[0]


def test_a_run_that_did_not_succeed_has_no_table(alice):
    run = finished_run(alice, 5, status=Run.Status.FAILED)
    assert results.run_table(run) is None
    assert not results._tables


def test_sorting_a_kept_table_on_the_page_gives_the_sorted_rows(client, alice):
    run = finished_run(alice, 60)
    logged_in(client, alice)
    url = reverse("web:run_detail", args=[run.pk])
    assert client.get(url).status_code == 200
    response = client.get(url, {"sort": "i", "desc": "1"}, HTTP_HX_REQUEST="true", HTTP_HX_TARGET="result-table")
    rows = response.context["grid"]["rows"]
    assert [cells[0][0] for cells in rows[:3]] == [59, 58, 57]
    assert len(results._tables) == 1


def test_the_grid_escapes_what_a_run_returned(client, alice):
    script = make_script(alice, "hostile", "def hostile():\n    return 1\n")
    now = timezone.now()
    run = Run.objects.create(
        script_version=script.current_version,
        script_name=script.name,
        script_owner="alice",
        user=alice,
        status=Run.Status.SUCCEEDED,
        created_at=now,
        started_at=now,
        finished_at=now,
        result=[{"n": 1.5, "text": '<script>alert("x")</script>', "nested": {"a": "<b>"}}],
    )
    logged_in(client, alice)
    html = client.get(reverse("web:run_detail", args=[run.pk])).content.decode()
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
    assert "&lt;b&gt;" in html
    assert '<td class="num" title="1.5">1.5</td>' in html
