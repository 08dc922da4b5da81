"""Compare two runs: parameters, source, data by key and figures; only runs the user may see."""

from __future__ import annotations

import pytest
from django.urls import reverse

from scripts_app import compare
from scripts_app.results import Table
from scripts_app.services.pipeline import RunRequest, start_run
from scripts_app.services.scripts import script_update
from tests.factories import make_script
from tests.web.conftest import logged_in

SALES = """import pandas as pd
import matplotlib.pyplot as plt


def sales(growth: float = 1.0, region: str = "EU", extra: bool = False):
    frame = pd.DataFrame({"id": [1, 2, 3], "amount": [10.0, 20.0, 30.0]})
    frame["amount"] = frame["amount"] * growth
    if extra:
        frame = pd.concat([frame, pd.DataFrame({"id": [4], "amount": [40.0]})])
    plt.figure().suptitle(f"Sales {region}")
    return frame
"""


@pytest.fixture
def two_runs(alice):
    script = make_script(alice, "sales", SALES)
    old = start_run(RunRequest(script=script, user=alice, parameters={"growth": 1.0}, graphics=True))
    script_update(script=script, by=alice, source=SALES.replace('frame["id"] = 0', "").replace('"EU"', '"US"'))
    new = start_run(RunRequest(script=script, user=alice, parameters={"growth": 2.0, "extra": True}, graphics=True))
    return old, new


def test_it_shows_what_changed_between_two_runs(client, alice, two_runs):
    """Parameter changes, the version diff, changed cells by key, added rows, and both runs' figures."""
    old, new = two_runs
    response = logged_in(client, alice).get(reverse("web:run_compare"), {"a": old.pk, "b": new.pk})
    assert response.status_code == 200
    kinds = {change.name: change.kind for change in response.context["parameters"]}
    assert kinds == {"growth": "changed", "extra": "added"}
    diff = response.context["table_diff"]
    assert diff.key == "id"
    assert diff.counts == {"added": 1, "removed": 0, "changed": 3, "same": 0}
    assert [row.key for row in diff.changed] == [1, 2, 3]
    assert diff.changed[0].cells == [(10.0, 20.0, True)]
    added = [line for kind, line in response.context["source_diff"] if kind == "add"]
    assert added == ['+def sales(growth: float = 1.0, region: str = "US", extra: bool = False):']
    content = response.content.decode()
    assert "<h3>Added rows</h3>" in content
    assert 'class="list data compare-added"' in content
    assert reverse("web:run_image", args=[old.pk, 1]) in content
    assert reverse("web:run_image", args=[new.pk, 1]) in content


def test_the_run_page_offers_the_scripts_other_runs_to_compare_with(client, alice, two_runs):
    """A finished run's page lists the script's other runs in a Compare form."""
    old, new = two_runs
    response = logged_in(client, alice).get(reverse("web:run_detail", args=[new.pk]))
    assert [run.pk for run in response.context["compare_choices"]] == [old.pk]
    assert reverse("web:run_compare").encode() in response.content


def test_a_run_the_user_may_not_see_is_not_found(client, alice, bob, two_runs):
    """Bob cannot compare Alice's runs, nor one of his with one of hers; a malformed id is a 404 too."""
    old, new = two_runs
    mine = start_run(RunRequest(script=make_script(bob, "b", "def b():\n    return 1\n"), user=bob, parameters={}))
    bob_client = logged_in(client, bob)
    assert bob_client.get(reverse("web:run_compare"), {"a": old.pk, "b": new.pk}).status_code == 404
    assert bob_client.get(reverse("web:run_compare"), {"a": mine.pk, "b": new.pk}).status_code == 404
    assert bob_client.get(reverse("web:run_compare"), {"a": mine.pk, "b": "nope"}).status_code == 404
    assert bob_client.get(reverse("web:run_compare"), {"a": mine.pk}).status_code == 404


def test_rows_without_a_key_column_are_matched_by_position():
    """No column unique in both tables: rows pair up by position; lists in cells never break it."""
    old = Table(["g", "v"], [["x", [1]], ["x", [2]]])
    new = Table(["g", "v", "w"], [["x", [1], None], ["y", [2], None], ["z", [3], 0]])
    diff = compare.table_diff(old, new)
    assert diff.key is None
    assert diff.added_columns == ["w"]
    assert diff.counts == {"added": 1, "removed": 0, "changed": 1, "same": 1}
    assert not diff.identical


def test_non_tabular_values_are_compared_as_json(client, alice):
    """Two dict results get a line diff of their JSON."""
    script = make_script(alice, "d", "def d(n: int = 1):\n    return {'n': n, 'same': True}\n")
    old = start_run(RunRequest(script=script, user=alice, parameters={"n": 1}))
    new = start_run(RunRequest(script=script, user=alice, parameters={"n": 2}))
    response = logged_in(client, alice).get(reverse("web:run_compare"), {"a": old.pk, "b": new.pk})
    lines = [line for kind, line in response.context["value_diff"] if kind in ("add", "del")]
    assert lines == ['-  "n": 1,', '+  "n": 2,']
    assert response.context["source_diff"] is None
