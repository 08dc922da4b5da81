"""The four apply endpoints: Oracle's result shapes, equal to pandas computing the same directly."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from scripts_app.models import Run
from tests.factories import make_script


def apply(api, endpoint, name, body, *, owner=None, version="v1"):
    url = f"/oml/api/py-scripts/{version}/{endpoint}/{name}" + (f"/{owner}" if owner else "")
    return api.post(url, body, format="json")


SUMMARY = """
import pandas as pd

def summary(df):
    return pd.DataFrame({"ROWS": [len(df)], "MEAN_SEPAL": [df["SEPAL_LENGTH"].mean()]})
"""


def test_table_apply_passes_the_whole_query_result(alice, alice_api, alice_iris, iris):
    """table-apply calls the function once with every row of the query; a DataFrame comes back as records."""
    make_script(alice, "summary", SUMMARY)
    body = {"input": "select * from IRIS", "parameters": json.dumps({"oml_input_type": "pandas.DataFrame"})}
    response = apply(alice_api, "table-apply", "summary", body)
    assert response.status_code == 200, response.json()
    assert response.json() == {"result": [{"ROWS": len(iris), "MEAN_SEPAL": pytest.approx(iris.SEPAL_LENGTH.mean())}]}
    run = Run.objects.get()
    assert run.kind == Run.Kind.TABLE_APPLY
    assert run.input_query == "select * from IRIS"
    assert [piece["label"] for piece in run.pieces] == ["table"]
    assert run.pieces[0]["rows"] == len(iris)


def test_table_apply_query_filters(alice, alice_api, alice_iris, iris):
    """The input query runs as SQL: a WHERE clause reaches the function already applied."""
    make_script(alice, "summary", SUMMARY)
    body = {
        "input": "select * from iris where species = 'setosa'",
        "parameters": '{"oml_input_type":"pandas.DataFrame"}',
    }
    [row] = apply(alice_api, "table-apply", "summary", body).json()["result"]
    assert row["ROWS"] == (iris.SPECIES == "setosa").sum()


PREDICT = """
import pandas as pd

def predict(df, scale=1):
    return pd.DataFrame({"SPECIES": df["SPECIES"], "PRED": df["SEPAL_LENGTH"] * scale, "N": len(df)})
"""


def test_row_apply_concatenates_chunks_in_order(alice, alice_api, alice_iris, iris):
    """row-apply calls the function on chunks of at most `rows` rows; the records come back concatenated in order."""
    make_script(alice, "predict", PREDICT)
    body = {
        "input": "select * from IRIS",
        "parameters": json.dumps({"oml_input_type": "pandas.DataFrame", "scale": 2}),
        "rows": 4,
        "parallelFlag": True,
        "service": "LOW",
    }
    response = apply(alice_api, "row-apply", "predict", body)
    assert response.status_code == 200, response.json()
    expected = pd.DataFrame({"SPECIES": iris.SPECIES, "PRED": iris.SEPAL_LENGTH * 2})
    expected["N"] = [min(4, len(iris) - (i // 4) * 4) for i in range(len(iris))]
    assert response.json()["result"] == json.loads(expected.to_json(orient="records"))
    run = Run.objects.get()
    assert [piece["label"] for piece in run.pieces][:2] == ["chunk 1 (rows 1-4)", "chunk 2 (rows 5-8)"]
    assert len(run.pieces) == 6
    assert run.apply_options["degree"] == 2


COUNT = """
import pandas as pd

def group_count(df):
    return pd.DataFrame({"SPECIES": [df["SPECIES"].iloc[0]], "COUNT": [len(df)], "FIRST": [df["SEPAL_LENGTH"].iloc[0]]})
"""


def test_group_apply_answers_an_object_keyed_per_group(alice, alice_api, alice_iris, iris):
    """group-apply calls the function once per group, rows ordered by orderBy; each DataFrame in columns orientation."""
    make_script(alice, "group_count", COUNT)
    body = {
        "input": "select * from IRIS",
        "parameters": json.dumps({"oml_input_type": "pandas.DataFrame"}),
        "groupBy": "SPECIES",
        "orderBy": "SEPAL_LENGTH",
        "parallelFlag": True,
    }
    response = apply(alice_api, "group-apply", "group_count", body)
    assert response.status_code == 200, response.json()
    expected = {
        species: {"SPECIES": {"0": species}, "COUNT": {"0": len(group)}, "FIRST": {"0": group.SEPAL_LENGTH.min()}}
        for species, group in iris.groupby("SPECIES")
    }
    assert response.json() == {"result": expected}


def test_group_apply_by_two_columns_with_descending_order(alice, alice_api, iris):
    """Several groupBy columns make one group per combination, keyed 'A_B'; orderBy may say DESC."""
    from tests.factories import make_dataset

    iris["BIG"] = iris.SEPAL_LENGTH > 6
    make_dataset(alice, "IRIS2", iris)
    make_script(alice, "first", "def first(df):\n    return float(df['SEPAL_LENGTH'].iloc[0])\n")
    body = {
        "input": "select * from IRIS2",
        "parameters": '{"oml_input_type":"pandas.DataFrame"}',
        "groupBy": "SPECIES, BIG",
        "orderBy": "SEPAL_LENGTH DESC",
    }
    response = apply(alice_api, "group-apply", "first", body)
    assert response.status_code == 200, response.json()
    expected = {f"{s}_{b}": g.SEPAL_LENGTH.max() for (s, b), g in iris.groupby(["SPECIES", "BIG"])}
    assert response.json()["result"] == expected


def test_index_apply_calls_with_1_to_times_in_order(alice, alice_api):
    """index-apply calls the function with 1..times, results in index order."""
    make_script(alice, "square", "def square(i, plus=0):\n    return i * i + plus\n")
    body = {"times": 5, "parallelFlag": True, "service": "MEDIUM", "parameters": '{"plus": 1}'}
    response = apply(alice_api, "index-apply", "square", body)
    assert response.status_code == 200, response.json()
    assert response.json() == {"result": [2, 5, 10, 17, 26]}
    run = Run.objects.get()
    assert [piece["key"] for piece in run.pieces] == [1, 2, 3, 4, 5]
    assert run.apply_options["degree"] == 4


def test_v2_serves_the_same(alice, alice_api):
    """The endpoints answer under v2 too."""
    make_script(alice, "square", "def square(i):\n    return i * i\n")
    assert apply(alice_api, "index-apply", "square", {"times": 2}, version="v2").json() == {"result": [1, 4]}
