"""The datasets API: upload CSV or Parquet, list, preview, replace, share, delete."""

from __future__ import annotations

import io

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from django.core.files.uploadedfile import SimpleUploadedFile

from scripts_app.models import Dataset

BASE = "/oml/api/py-scripts/v1/datasets"
CSV = b"ID,NAME,SCORE\n1,ann,0.5\n2,bo,\n3,cy,2.25\n"


def upload(api, name="SCORES", content=CSV, filename="scores.csv", **fields):
    file = SimpleUploadedFile(filename, content)
    return api.post(BASE, {"name": name, "file": file, **fields}, format="multipart")


def test_upload_csv_stores_parquet_with_its_schema(alice, alice_api):
    """A CSV upload becomes a Parquet dataset with typed columns and counts; 201 with its row."""
    response = upload(alice_api)
    assert response.status_code == 201, response.json()
    row = response.json()["result"]
    assert row["OWNER"] == "alice"
    assert row["NAME"] == "SCORES"
    assert row["ROWS"] == 3
    assert row["FORMAT"] == "csv"
    assert row["COLUMNS"] == [
        {"name": "ID", "type": "BIGINT"},
        {"name": "NAME", "type": "VARCHAR"},
        {"name": "SCORE", "type": "DOUBLE"},
    ]
    dataset = Dataset.objects.get()
    assert dataset.owner == alice
    assert dataset.column_count == 3
    with dataset.file.open("rb") as file:
        table = pq.read_table(file)
    assert table.column("SCORE").to_pylist() == [0.5, None, 2.25]


def test_upload_parquet(alice, alice_api):
    """A Parquet upload keeps its types."""
    buffer = io.BytesIO()
    pq.write_table(pa.table({"t": pd.to_datetime(["2024-01-02", "2024-03-04"]), "n": [1, 2]}), buffer)
    response = upload(alice_api, name="EVENTS", content=buffer.getvalue(), filename="events.parquet")
    assert response.status_code == 201, response.json()
    assert response.json()["result"]["FORMAT"] == "parquet"
    assert [c["type"] for c in response.json()["result"]["COLUMNS"]][1] == "BIGINT"


def test_preview_gives_first_rows_and_column_types(alice, alice_api):
    """GET datasets/{name} answers the schema and the first rows."""
    upload(alice_api)
    response = alice_api.get(f"{BASE}/scores?rows=2")
    assert response.status_code == 200
    result = response.json()["result"]
    assert result["PREVIEW"] == [{"ID": 1, "NAME": "ann", "SCORE": 0.5}, {"ID": 2, "NAME": "bo", "SCORE": None}]
    assert result["COLUMNS"][0] == {"name": "ID", "type": "BIGINT"}


def test_same_name_needs_overwrite_and_names_ignore_case(alice, alice_api):
    """A second upload of a name (in any case) is 409 unless overwrite=true, which replaces the data."""
    upload(alice_api)
    again = upload(alice_api, name="scores", content=b"ID\n7\n")
    assert again.status_code == 409
    replaced = upload(alice_api, name="scores", content=b"ID\n7\n", overwrite="true")
    assert replaced.status_code == 200
    assert replaced.json()["result"]["ROWS"] == 1
    assert Dataset.objects.count() == 1


def test_put_replaces_the_file_and_keeps_the_dataset(alice, alice_api, django_capture_on_commit_callbacks):
    """PUT with a file replaces the data; the dataset's id stays and the old file is gone."""
    upload(alice_api)
    dataset = Dataset.objects.get()
    old_name = dataset.file.name
    file = SimpleUploadedFile("new.csv", b"ID,NAME\n9,zed\n")
    with django_capture_on_commit_callbacks(execute=True):
        response = alice_api.put(f"{BASE}/SCORES", {"file": file}, format="multipart")
    assert response.status_code == 200, response.json()
    dataset.refresh_from_db()
    assert dataset.row_count == 1
    assert dataset.file.name != old_name
    assert not dataset.file.storage.exists(old_name)


def test_list_shows_own_global_and_granted_only(alice, bob, alice_api, bob_api, admin_api):
    """Bob lists his own, global and granted datasets; never Alice's private ones."""
    upload(alice_api, name="PRIVATE")
    upload(alice_api, name="SHARED")
    upload(bob_api, name="MINE")
    upload(admin_api, name="PUBLIC", isGlobal="true")
    assert alice_api.post(f"{BASE}/SHARED/grants", {"user": "bob"}, format="json").status_code == 200
    names = [row["NAME"] for row in bob_api.get(BASE).json()["result"]]
    assert sorted(names) == ["MINE", "PUBLIC", "SHARED"]
    assert bob_api.get(f"{BASE}/PRIVATE?owner=alice").status_code == 404
    assert bob_api.get(f"{BASE}/SHARED?owner=alice").status_code == 200
    alice_api.delete(f"{BASE}/SHARED/grants/bob")
    assert bob_api.get(f"{BASE}/SHARED?owner=alice").status_code == 404


def test_only_admins_make_datasets_global(alice_api):
    """A global dataset needs an admin."""
    assert upload(alice_api, isGlobal="true").status_code == 403


def test_delete_removes_row_and_file(alice, alice_api, bob_api, django_capture_on_commit_callbacks):
    """DELETE removes the caller's own dataset and its file; another user's is not found."""
    upload(alice_api)
    dataset = Dataset.objects.get()
    assert bob_api.delete(f"{BASE}/SCORES").status_code == 404
    with django_capture_on_commit_callbacks(execute=True):
        assert alice_api.delete(f"{BASE}/SCORES").status_code == 200
    assert not Dataset.objects.exists()
    assert not dataset.file.storage.exists(dataset.file.name)


def test_a_file_that_is_not_csv_or_parquet_is_400(alice_api):
    """Bytes that no reader understands are a 400 naming the format."""
    response = upload(alice_api, content=b"PAR1 garbage", filename="x.parquet")
    assert response.status_code == 400
    assert "PARQUET" in response.json()["errorMessage"]
    assert not Dataset.objects.exists()


def test_bad_name_is_400(alice_api):
    """Dataset names follow script names' rules."""
    assert upload(alice_api, name="no spaces").status_code == 400
