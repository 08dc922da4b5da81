"""The run form's data modes, the per-piece timings on the run page, and the dataset pages."""

from __future__ import annotations

import pandas as pd
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from scripts_app.models import Dataset, Run
from scripts_app.services.datasets import dataset_grant
from tests.factories import make_dataset, make_script
from tests.web.conftest import logged_in

COUNT = "import pandas as pd\n\ndef count(df):\n    return pd.DataFrame({'N': [len(df)]})\n"


def form_data(**fields):
    data = {"params_mode": "json", "raw_json": "{}", "env_name": "default", "service": "LOW", "execution": "sync"}
    data.update(fields)
    return data


def test_the_run_form_offers_the_modes_and_the_readable_datasets(alice, bob):
    """The form lists the four data modes and a picker of the datasets the user may read, by their SQL name."""
    script = make_script(alice, "count", COUNT)
    make_dataset(alice, "SALES", pd.DataFrame({"a": [1]}))
    dataset_grant(dataset=make_dataset(bob, "shared-one", pd.DataFrame({"a": [1]})), grantee=alice)
    make_dataset(bob, "PRIVATE", pd.DataFrame({"a": [1]}))
    page = logged_in(Client(), alice).get(reverse("web:run_script", args=[script.pk])).content.decode()
    for mode in ("table-apply", "row-apply", "group-apply", "index-apply"):
        assert f'value="{mode}"' in page
    assert '<option value="SALES">' in page
    assert 'value="bob.&quot;shared-one&quot;"' in page
    assert "PRIVATE" not in page


def test_group_apply_from_the_form_records_pieces_and_shows_their_timings(alice):
    """Group-apply from the page: the run has one piece per group, and the run page lists them with timings."""
    script = make_script(alice, "count", COUNT)
    make_dataset(alice, "T", pd.DataFrame({"g": ["x", "y", "x"], "v": [1, 2, 3]}))
    client = logged_in(Client(), alice)
    data = form_data(kind="group-apply", dataset="T", group_by="g", input_type="pandas.DataFrame", parallel="on")
    response = client.post(reverse("web:run_script", args=[script.pk]), data)
    run = Run.objects.get()
    assert response.status_code == 302, response.content.decode()[:2000]
    assert run.kind == Run.Kind.GROUP_APPLY
    assert run.input_query == "select * from T"
    assert run.result == {"x": {"N": {"0": 2}}, "y": {"N": {"0": 1}}}
    page = client.get(reverse("web:run_detail", args=[run.pk])).content.decode()
    assert "Pieces" in page
    assert "group &#x27;x&#x27;" in page
    assert "timeline-bar" in page
    assert "select * from T" in page


def test_the_form_requires_each_modes_fields(alice):
    """row-apply without rows, index-apply without times, table-apply without data: errors on the form."""
    script = make_script(alice, "count", COUNT)
    client = logged_in(Client(), alice)
    url = reverse("web:run_script", args=[script.pk])
    assert client.post(url, form_data(kind="row-apply", input_query="select 1")).status_code == 422
    assert client.post(url, form_data(kind="index-apply")).status_code == 422
    assert client.post(url, form_data(kind="table-apply")).status_code == 422
    assert not Run.objects.exists()


def test_a_bad_query_from_the_form_is_shown_on_it(alice):
    """A query the service refuses comes back as the form's error."""
    script = make_script(alice, "count", COUNT)
    response = logged_in(Client(), alice).post(
        reverse("web:run_script", args=[script.pk]), form_data(kind="table-apply", input_query="drop table T")
    )
    assert response.status_code == 422
    assert "only a SELECT" in response.content.decode()


def test_upload_preview_share_and_delete_a_dataset(alice, bob, django_capture_on_commit_callbacks):
    """Upload a CSV in the browser, see its columns and first rows, share it with bob, then delete it."""
    client = logged_in(Client(), alice)
    upload = SimpleUploadedFile("scores.csv", b"ID,NAME\n1,ann\n2,bo\n")
    response = client.post(reverse("web:dataset_list"), {"name": "SCORES", "file": upload, "description": "d"})
    dataset = Dataset.objects.get()
    assert response.status_code == 302
    assert (dataset.owner, dataset.row_count) == (alice, 2)
    page = client.get(reverse("web:dataset_detail", args=[dataset.pk])).content.decode()
    assert "BIGINT" in page
    assert "ann" in page
    assert logged_in(Client(), bob).get(reverse("web:dataset_detail", args=[dataset.pk])).status_code == 404
    client.post(reverse("web:dataset_grant", args=[dataset.pk]), {"username": "bob"})
    bob_client = logged_in(Client(), bob)
    assert bob_client.get(reverse("web:dataset_detail", args=[dataset.pk])).status_code == 200
    assert "alice.SCORES" in bob_client.get(reverse("web:dataset_list")).content.decode()
    assert bob_client.post(reverse("web:dataset_delete", args=[dataset.pk])).status_code == 403
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(reverse("web:dataset_delete", args=[dataset.pk])).status_code == 302
    assert not Dataset.objects.exists()


def test_a_file_that_cannot_be_read_is_an_error_on_the_upload_form(alice):
    """A broken Parquet file is refused on the form; nothing is stored."""
    upload = SimpleUploadedFile("x.parquet", b"PAR1 nope")
    response = logged_in(Client(), alice).post(reverse("web:dataset_list"), {"name": "X", "file": upload})
    assert response.status_code == 422
    assert "cannot be read as PARQUET" in response.content.decode()
    assert not Dataset.objects.exists()


def test_in_a_data_mode_the_first_parameter_is_the_data(alice):
    """With parameter fields, the first one (the data) may stay empty in a data mode; the others are passed."""
    script = make_script(alice, "scaled", "def scaled(i, factor):\n    return i * factor\n")
    data = {**form_data(kind="index-apply", times="3"), "params_mode": "fields", "p_factor": "10"}
    response = logged_in(Client(), alice).post(reverse("web:run_script", args=[script.pk]), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    run = Run.objects.get()
    assert run.result == [10, 20, 30]
    assert run.parameters == {"factor": 10}


def test_a_data_mode_runs_as_a_job_from_the_form(alice):
    """Mode row-apply with 'Run as a job': an ASYNC run, QUEUED, with its kind, query and options."""
    script = make_script(alice, "count", COUNT)
    make_dataset(alice, "T", pd.DataFrame({"v": [1, 2, 3]}))
    data = form_data(kind="row-apply", dataset="T", rows="2", execution="async", comments="nightly")
    response = logged_in(Client(), alice).post(reverse("web:run_script", args=[script.pk]), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    run = Run.objects.get()
    assert (run.mode, run.status, run.kind) == (Run.Mode.ASYNC, Run.Status.QUEUED, Run.Kind.ROW_APPLY)
    assert run.input_query == "select * from T"
    assert run.apply_options["rows"] == 2
    assert run.comments == "nightly"
