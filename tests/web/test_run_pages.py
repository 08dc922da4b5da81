"""Running a script from its form, the run page, its downloads, and who may see which run."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from scripts_app.models import Run
from scripts_app.services.pipeline import RunRequest, start_run
from scripts_app.services.scripts import script_update
from tests.factories import make_script
from tests.web.conftest import logged_in

TYPED = """
def report(n: int, scale: float = 1.5, label: str = "x", flag: bool = False, ids: list[int] = [1, 2], extra=None):
    return {"n": n, "scale": scale, "label": label, "flag": flag, "ids": ids, "extra": extra}
"""

FIGURE = """
import matplotlib.pyplot as plt
import pandas as pd

def dots(count=3):
    fig = plt.figure()
    fig.add_subplot(111).scatter(range(count), range(count), c="r")
    fig.suptitle("Red dots")
    return pd.DataFrame({"id": list(range(1, count + 1)), "val": [i / 10 for i in range(count)]})
"""


@pytest.fixture
def typed_script(alice):
    return make_script(alice, "report", TYPED)


def run_url(script):
    return reverse("web:run_script", args=[script.pk])


def form_data(**fields):
    data = {"params_mode": "fields", "env_name": "default", "service": "LOW", "execution": "sync"}
    data.update(fields)
    return data


# The form


def test_form_fields_come_from_the_signature(alice_client, typed_script):
    """Each parameter is a field of its type, with its default and whether it is required."""
    form = alice_client.get(run_url(typed_script)).context["form"]
    fields = form.fields
    assert fields["p_n"].required
    assert fields["p_n"].widget.input_type == "number"
    assert fields["p_scale"].initial == 1.5
    assert not fields["p_scale"].required
    assert fields["p_label"].initial == "x"
    assert fields["p_flag"].widget.input_type == "checkbox"
    assert fields["p_ids"].initial == "[1, 2]"
    assert fields["p_extra"].widget.attrs["data-kind"] == "json"


def test_run_from_fields_converts_types_and_records_who(alice_client, alice, typed_script):
    """The fields become typed keyword arguments; the run records the user, address and version."""
    response = alice_client.post(
        run_url(typed_script),
        form_data(p_n="3", p_scale="", p_label="hi", p_flag="on", p_ids="4, 5", p_extra='{"k": 1}', graphics="on"),
        REMOTE_ADDR="10.1.2.3",
    )
    run = Run.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("web:run_detail", args=[run.pk])
    assert run.parameters == {"n": 3, "label": "hi", "flag": True, "ids": [4, 5], "extra": {"k": 1}}
    assert run.status == Run.Status.SUCCEEDED
    assert run.result["scale"] == 1.5
    assert run.user == alice
    assert run.client_address == "10.1.2.3"
    assert run.script_version == typed_script.current_version
    assert run.graphics


def test_a_required_field_left_empty_is_an_error(alice_client, typed_script):
    """A parameter without a default must be given."""
    response = alice_client.post(run_url(typed_script), form_data(p_n=""))
    assert response.status_code == 422
    assert "p_n" in response.context["form"].errors
    assert not Run.objects.exists()


def test_raw_json_mode(alice_client, typed_script):
    """In raw-JSON mode the object is the keyword arguments, whatever the fields say."""
    alice_client.post(run_url(typed_script), form_data(params_mode="json", raw_json='{"n": 7, "label": [1]}', p_n=""))
    assert Run.objects.get().parameters == {"n": 7, "label": [1]}


@pytest.mark.parametrize(("raw", "message"), [("{oops", "Not valid JSON"), ("[1]", "Give a JSON object")])
def test_raw_json_must_be_an_object(alice_client, typed_script, raw, message):
    """Bad JSON or a non-object is shown on the form."""
    response = alice_client.post(run_url(typed_script), form_data(params_mode="json", raw_json=raw))
    assert response.status_code == 422
    assert message in " ".join(response.context["form"].errors["raw_json"])


def test_a_chosen_version_runs(alice_client, alice, typed_script):
    """?version=1 runs version 1 even when version 2 is current."""
    script_update(script=typed_script, by=alice, source=TYPED.replace('"n": n', '"n": -n'))
    alice_client.post(run_url(typed_script) + "?version=1", form_data(p_n="2", version="1"))
    run = Run.objects.get()
    assert run.script_version.number == 1
    assert run.result["n"] == 2


def test_run_again_fills_the_form(alice_client, alice, typed_script):
    """Run again opens the form with the earlier run's parameters."""
    earlier = start_run(RunRequest(script=typed_script, user=alice, parameters={"n": 9, "ids": [3]}, service="HIGH"))
    response = alice_client.get(run_url(typed_script), {"again": str(earlier.pk)})
    form = response.context["form"]
    assert form.initial["p_n"] == "9"
    assert form.initial["p_ids"] == "[3]"
    assert form.initial["service"] == "HIGH"
    assert json.loads(form.initial["raw_json"]) == {"n": 9, "ids": [3]}


def test_run_again_ignores_someone_elses_run(client, alice, bob):
    """Another user's run id does not leak its parameters."""
    script = make_script(alice, "g", "def g(secret='x'):\n    return secret\n", is_global=False)
    script.grants.create(grantee=bob)
    alices = start_run(RunRequest(script=script, user=alice, parameters={"secret": "hunter2"}))
    response = logged_in(client, bob).get(run_url(script), {"again": str(alices.pk)})
    assert b"hunter2" not in response.content


def test_a_failing_script_shows_its_traceback(alice_client, alice):
    """A script that raises gives a FAILED run whose page shows the error and traceback."""
    script = make_script(alice, "boom", "def boom():\n    raise ValueError('no <good>')\n")
    alice_client.post(run_url(script), form_data())
    run = Run.objects.get()
    assert run.status == Run.Status.FAILED
    content = alice_client.get(reverse("web:run_detail", args=[run.pk])).content
    assert b"Traceback" in content
    assert b"ValueError: no &lt;good&gt;" in content


def test_a_sync_run_cut_by_its_time_limit_suggests_a_job(alice_client, alice, settings):
    """A sync run that timed out says a job may run longer, with a link to run it again."""
    settings.OMLWEB_RUN_WALL_SECONDS = 1.0
    script = make_script(alice, "slow", "import time\n\ndef slow():\n    time.sleep(30)\n")
    alice_client.post(run_url(script), form_data())
    run = Run.objects.get()
    assert run.status == Run.Status.TIMED_OUT
    content = alice_client.get(reverse("web:run_detail", args=[run.pk])).content.decode()
    assert "A job may run much longer" in content
    assert f"again={run.pk}" in content


# The run page


@pytest.fixture
def figure_run(alice):
    script = make_script(alice, "dots", FIGURE)
    return start_run(RunRequest(script=script, user=alice, parameters={"count": 3}, graphics=True))


def test_run_page_shows_image_table_and_facts(alice_client, figure_run):
    """The run page shows status, version, parameters, each image and the data as a table."""
    response = alice_client.get(reverse("web:run_detail", args=[figure_run.pk]))
    content = response.content.decode()
    assert "status-succeeded" in content
    assert reverse("web:run_image", args=[figure_run.pk, 1]) in content
    assert "Red dots" in content
    assert response.context["table"].columns == ["id", "val"]
    # Column headers sort the table; the numbers column is right-aligned.
    assert '<th scope="col" class="num" aria-sort="none">' in content
    assert ">val</a></th>" in content
    assert "Download CSV" in content
    assert "v1" in content


def test_image_is_served_to_the_owner_only(client, alice_client, bob, auditor, figure_run):
    """The image is a PNG for the run's user and auditors, a 404 for anyone else."""
    url = reverse("web:run_image", args=[figure_run.pk, 1])
    response = alice_client.get(url)
    assert response["Content-Type"] == "image/png"
    assert b"".join(response.streaming_content).startswith(b"\x89PNG")
    assert "attachment" in alice_client.get(url + "?download=1")["Content-Disposition"]
    assert logged_in(client, bob).get(url).status_code == 404
    assert logged_in(client, auditor).get(url).status_code == 200


def test_data_downloads(alice_client, figure_run):
    """The data downloads as CSV and as JSON."""
    csv = alice_client.get(reverse("web:run_data", args=[figure_run.pk, "csv"]))
    assert csv.content.decode().splitlines() == ["id,val", "1,0.0", "2,0.1", "3,0.2"]
    assert "attachment" in csv["Content-Disposition"]
    data = alice_client.get(reverse("web:run_data", args=[figure_run.pk, "json"]))
    assert json.loads(data.content) == [{"id": 1, "val": 0.0}, {"id": 2, "val": 0.1}, {"id": 3, "val": 0.2}]


def test_non_tabular_data_is_json_and_has_no_csv(alice_client, alice):
    """A value that is not a table is shown as formatted JSON; CSV is a 404."""
    script = make_script(alice, "d", "def d():\n    return {'a': 1, 'b': [1, 2]}\n")
    run = start_run(RunRequest(script=script, user=alice, parameters={}))
    response = alice_client.get(reverse("web:run_detail", args=[run.pk]))
    assert response.context["table"] is None
    assert '"a": 1' in response.context["result_json"]
    assert alice_client.get(reverse("web:run_data", args=[run.pk, "csv"])).status_code == 404


def test_big_tables_are_paginated(alice_client, alice):
    """A table of 120 rows shows 50 per page; the htmx page request gets only the table."""
    script = make_script(alice, "big", "def big():\n    return [{'i': i} for i in range(120)]\n")
    run = start_run(RunRequest(script=script, user=alice, parameters={}))
    url = reverse("web:run_detail", args=[run.pk])
    page3 = alice_client.get(url, {"page": 3})
    assert [row[0] for row in page3.context["table_page"].object_list] == list(range(100, 120))
    partial = alice_client.get(url, {"page": 2}, headers={"HX-Request": "true", "HX-Target": "result-table"})
    assert b'id="result-table"' in partial.content
    assert b"<html" not in partial.content


def test_stdout_and_stderr_are_shown(alice_client, alice):
    """What the script printed is on the run page, apart from the result."""
    source = "import sys\ndef p():\n    print('to out')\n    print('to err', file=sys.stderr)\n    return 1\n"
    run = start_run(RunRequest(script=make_script(alice, "p", source), user=alice, parameters={}))
    content = alice_client.get(reverse("web:run_detail", args=[run.pk])).content
    assert b"to out" in content
    assert b"to err" in content


def test_another_users_run_is_not_found(client, bob, figure_run):
    """Bob cannot open Alice's run, its image or its data."""
    client = logged_in(client, bob)
    for url in (
        reverse("web:run_detail", args=[figure_run.pk]),
        reverse("web:run_data", args=[figure_run.pk, "json"]),
        reverse("web:run_image", args=[figure_run.pk, 1]),
    ):
        assert client.get(url).status_code == 404


def test_polling_a_finished_run_stops_the_poll(alice_client, figure_run):
    """The htmx poll of a finished run answers 286 with the final content, without a poll trigger."""
    response = alice_client.get(
        reverse("web:run_detail", args=[figure_run.pk]), headers={"HX-Request": "true", "HX-Target": "run-live"}
    )
    assert response.status_code == 286
    # The live region comes back without its poll (the data grid's own find form may have triggers).
    assert b'<div id="run-live">' in response.content
    assert b"every 2s" not in response.content


def test_polling_a_queued_run_keeps_polling(alice_client, alice, typed_script):
    """A queued run's live section polls its live output every OMLWEB_LIVE_POLL_SECONDS (views.live)."""
    from scripts_app.services.pipeline import RunRequest, record_run

    run = record_run(RunRequest(script=typed_script, user=alice, parameters={"n": 1}, asynchronous=True))
    response = alice_client.get(
        reverse("web:run_detail", args=[run.pk]), headers={"HX-Request": "true", "HX-Target": "run-live"}
    )
    assert response.status_code == 200
    assert b'hx-trigger="every 1.0s"' in response.content
    assert reverse("web:run_live", args=[run.pk]).encode() + b"?after=0&amp;attempt=0" in response.content


# Jobs (the async services)


def test_run_as_a_job_queues_the_chosen_version(alice_client, alice, typed_script, django_capture_on_commit_callbacks):
    """'Run as a job' records a QUEUED async run of the chosen version and publishes it on commit."""
    from scripts_app.services.jobs import submission

    script_update(script=typed_script, by=alice, source=TYPED.replace('"n": n', '"n": -n'))
    published = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(submission, "job_enqueue", lambda *, run: published.append(run.pk))
        with django_capture_on_commit_callbacks(execute=True):
            response = alice_client.post(
                run_url(typed_script) + "?version=1",
                form_data(p_n="2", version="1", execution="async", job_timeout="3600", comments="nightly"),
                REMOTE_ADDR="10.9.8.7",
            )
    run = Run.objects.get()
    assert response["Location"] == reverse("web:run_detail", args=[run.pk])
    assert run.mode == Run.Mode.ASYNC
    assert run.status == Run.Status.QUEUED
    assert run.script_version.number == 1
    assert run.client_address == "10.9.8.7"
    assert run.timeout_seconds == 3600
    assert run.comments == "nightly"
    assert published == [run.pk]
    page = alice_client.get(reverse("web:run_detail", args=[run.pk]))
    assert page.context["may_cancel"]
    assert b'hx-trigger="every 1.0s"' in page.content


def test_cancel_a_queued_job(client, alice, bob, auditor, typed_script):
    """The job's owner cancels it; another user gets 404, an auditor 403."""
    from scripts_app.services.pipeline import RunRequest, record_run

    run = record_run(RunRequest(script=typed_script, user=alice, parameters={"n": 1}, asynchronous=True))
    url = reverse("web:run_cancel", args=[run.pk])
    assert logged_in(client, bob).post(url).status_code == 404
    assert logged_in(client, auditor).post(url).status_code == 403
    run.refresh_from_db()
    assert run.status == Run.Status.QUEUED
    response = logged_in(client, alice).post(url, follow=True)
    run.refresh_from_db()
    assert run.status == Run.Status.CANCELLED
    assert b"Cancel requested" in response.content


def test_csv_quotes_cells_a_spreadsheet_would_run(alice_client, alice):
    """Text starting with =, +, - or @ is prefixed with a quote in the CSV; numbers are left alone."""
    source = "def f():\n    return [{'a': '=HYPERLINK(\"x\")', 'b': -1}]\n"
    run = start_run(RunRequest(script=make_script(alice, "f", source), user=alice, parameters={}))
    csv = alice_client.get(reverse("web:run_data", args=[run.pk, "csv"])).content.decode()
    assert csv.splitlines()[1] == '"\'=HYPERLINK(""x"")",-1'


def test_the_environment_picker_offers_ready_environments(alice_client, typed_script):
    """The picker lists the default environment and the READY ones, not those building or failed."""
    from scripts_app.models import Environment

    Environment.objects.create(name="ready", python="/usr/bin/python3", status=Environment.Status.READY)
    Environment.objects.create(name="building", python="/usr/bin/python3", status=Environment.Status.BUILDING)
    form = alice_client.get(run_url(typed_script)).context["form"]
    assert [name for name, _ in form.fields["env_name"].choices] == ["default", "ready"]


def test_a_sync_run_has_no_cancel(alice_client, alice, typed_script):
    """Only jobs can be cancelled: a sync run's cancel is refused and changes nothing."""
    from scripts_app.services.pipeline import RunRequest, record_run

    run = record_run(RunRequest(script=typed_script, user=alice, parameters={"n": 1}))
    assert not alice_client.get(reverse("web:run_detail", args=[run.pk])).context["may_cancel"]
    response = alice_client.post(reverse("web:run_cancel", args=[run.pk]), follow=True)
    assert b"Only jobs can be cancelled" in response.content
    run.refresh_from_db()
    assert run.status == Run.Status.QUEUED
    assert run.cancel_requested_at is None


def test_an_apply_run_shows_its_input_and_pieces(alice_client, alice, typed_script):
    """A row-apply run's page shows its kind, input query, options and each piece."""
    from scripts_app.services.pipeline import RunRequest, record_run

    run = record_run(RunRequest(script=typed_script, user=alice, parameters={}))
    Run.objects.filter(pk=run.pk).update(
        kind=Run.Kind.ROW_APPLY,
        input_query="SELECT * FROM iris",
        apply_options={"rows": 50},
        status=Run.Status.SUCCEEDED,
        result_json='[{"n":1}]',
        pieces=[
            {"label": "rows 1-50", "rows": 50, "status": "SUCCEEDED", "seconds": 0.12, "figures": []},
            {"label": "rows 51-<100>", "rows": 50, "status": "SUCCEEDED", "seconds": 0.1, "figures": [1]},
        ],
    )
    response = alice_client.get(reverse("web:run_detail", args=[run.pk]))
    content = response.content.decode()
    assert "SELECT * FROM iris" in content
    assert "50 rows per chunk" in content
    assert content.count('id="pieces-heading"') == 1
    assert "rows 51-&lt;100&gt;" in content
    listing = alice_client.get(reverse("web:run_list")).content.decode()
    assert "row-apply" in listing


def test_a_pruned_image_file_is_a_404(alice_client, figure_run):
    """An image whose file is gone from disk answers 404, not a server error."""
    image = figure_run.images.get()
    image.image.storage.delete(image.image.name)
    assert alice_client.get(reverse("web:run_image", args=[figure_run.pk, 1])).status_code == 404


def test_run_again_of_an_apply_run_fills_its_mode_query_and_options(alice_client, alice, typed_script):
    """Run again of a group-apply run opens the form in that mode with its query, columns and input type."""
    from scripts_app.services.pipeline import RunRequest, record_run

    run = record_run(
        RunRequest(script=typed_script, user=alice, parameters={"n": 4, "oml_input_type": "pandas.DataFrame"})
    )
    Run.objects.filter(pk=run.pk).update(
        kind=Run.Kind.GROUP_APPLY,
        input_query="SELECT * FROM iris",
        apply_options={"groupBy": ["Species"], "orderBy": ["Petal_Width DESC"], "parallelFlag": True},
        status=Run.Status.SUCCEEDED,
    )
    assert alice_client.get(reverse("web:run_detail", args=[run.pk])).context["may_run_again"]
    form = alice_client.get(run_url(typed_script), {"again": str(run.pk)}).context["form"]
    assert form.initial["kind"] == Run.Kind.GROUP_APPLY
    assert form.initial["input_query"] == "SELECT * FROM iris"
    assert form.initial["group_by"] == "Species"
    assert form.initial["order_by"] == "Petal_Width DESC"
    assert form.initial["parallel"] is True
    assert form.initial["input_type"] == "pandas.DataFrame"
    assert form.initial["p_n"] == "4"
    assert form.initial.get("params_mode") != "json"


def test_the_data_grid_sorts_finds_and_pages(alice_client, alice):
    """?sort= orders by a column (numbers by value, nulls last), ?desc=1 reverses, ?find= keeps matching rows."""
    source = (
        "def t():\n"
        "    names = ['kiwi', 'apple', 'fig'] * 40\n"
        "    prices = [(i * 7) % 11 + 0.123456789 if i % 5 else None for i in range(120)]\n"
        "    return [{'name': n, 'price': p} for n, p in zip(names, prices)]\n"
    )
    run = start_run(RunRequest(script=make_script(alice, "t", source), user=alice, parameters={}))
    url = reverse("web:run_detail", args=[run.pk])
    grid = alice_client.get(url, {"sort": "price"}).context["grid"]
    prices = [row[1][0] for row in grid["rows"]]
    assert prices == sorted(prices)
    last_page = alice_client.get(url, {"sort": "price", "page": 3}).context["grid"]
    assert [row[1][0] for row in last_page["rows"]][-1] is None
    descending = alice_client.get(url, {"sort": "price", "desc": "1"}).context["grid"]
    assert descending["rows"][0][1][0] == max(row["price"] for row in run.result if row["price"] is not None)
    found = alice_client.get(url, {"find": "KIW"})
    assert found.context["grid"]["matching"] == 40
    assert {row[0][0] for row in found.context["grid"]["rows"]} == {"kiwi"}
    content = alice_client.get(url).content.decode()
    assert 'title="0.123456789">0.1235</td>' in content
    assert 'aria-label="Page 3"' in content


def test_a_group_apply_result_is_one_table_keyed_by_group(alice_client, alice):
    """{group: records} shows as one table with a group column, and downloads as CSV and Parquet."""
    import io

    import pyarrow.parquet as pq

    from scripts_app.models import Run

    script = make_script(alice, "g", "def g():\n    return 1\n")
    run = start_run(RunRequest(script=script, user=alice, parameters={}))
    result = {"setosa": [{"n": 50}], "virginica": [{"n": 49}, {"n": 1}]}
    Run.objects.filter(pk=run.pk).update(kind=Run.Kind.GROUP_APPLY, result_json=json.dumps(result))
    response = alice_client.get(reverse("web:run_detail", args=[run.pk]))
    assert response.context["table"].columns == ["group", "n"]
    assert response.context["table"].rows == [["setosa", 50], ["virginica", 49], ["virginica", 1]]
    csv = alice_client.get(reverse("web:run_data", args=[run.pk, "csv"])).content.decode()
    assert csv.splitlines() == ["group,n", "setosa,50", "virginica,49", "virginica,1"]
    parquet = alice_client.get(reverse("web:run_data", args=[run.pk, "parquet"]))
    table = pq.read_table(io.BytesIO(b"".join(parquet.streaming_content) if parquet.streaming else parquet.content))
    assert table.to_pydict() == {"group": ["setosa", "virginica", "virginica"], "n": [50, 49, 1]}


def test_a_queued_job_shows_its_place_in_the_queue_and_a_running_one_its_time(alice_client, alice, typed_script):
    """Queued: waiting time and position among its service level's queued jobs. Running: time so far."""
    from django.utils import timezone

    from scripts_app.services.pipeline import RunRequest, record_run

    first = record_run(RunRequest(script=typed_script, user=alice, parameters={}, asynchronous=True))
    second = record_run(RunRequest(script=typed_script, user=alice, parameters={}, asynchronous=True))
    content = alice_client.get(reverse("web:run_detail", args=[second.pk])).content.decode()
    assert "number 2 in the LOW queue" in content
    Run.objects.filter(pk=first.pk).update(status=Run.Status.RUNNING, started_at=timezone.now())
    assert "number 1 in the LOW queue" in alice_client.get(reverse("web:run_detail", args=[second.pk])).content.decode()
    running = alice_client.get(reverse("web:run_detail", args=[first.pk])).content.decode()
    assert 'running for <span class="clock">0:00</span>' in running
