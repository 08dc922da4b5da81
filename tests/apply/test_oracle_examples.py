"""Oracle's own example requests (reference §2.4) against the demo IRIS dataset that bootstrap loads."""

from __future__ import annotations

import base64
import json
from io import StringIO

import pandas as pd
import pytest
from django.core.management import call_command

from scripts_app.demo import demo_datasets
from scripts_app.models import Dataset
from tests.apply.test_endpoints import apply
from tests.factories import make_script

MY_PREDICT = """
import pandas as pd

def my_predict(dat):
    # Oracle's row-apply example answers Pred_Petal_Width, Species and Petal_Width per row.
    pred = dat["Sepal_Length"] * 1.3 - 1
    return pd.DataFrame({"Pred_Petal_Width": pred, "Species": dat["Species"], "Petal_Width": dat["Petal_Width"]})
"""

GROUP_COUNT = """
import pandas as pd

def group_count(dat):
    return pd.DataFrame({"Species": [dat["Species"].iloc[0]], "COUNT": [len(dat)]})
"""


@pytest.fixture
def demo_iris(db, admin_user):
    call_command("bootstrap", stdout=StringIO())
    return pd.read_csv(demo_datasets()["IRIS"])


def test_bootstrap_loads_iris_as_a_global_dataset(demo_iris):
    """bootstrap loads IRIS (150 rows, OML's column names) as a global dataset, once."""
    dataset = Dataset.objects.get(name="IRIS")
    assert dataset.is_global
    assert dataset.row_count == 150
    assert [c["name"] for c in dataset.schema] == list(demo_iris.columns)
    call_command("bootstrap", stdout=StringIO())
    assert Dataset.objects.count() == 1


def test_table_apply_example(alice, alice_api, demo_iris):
    """{"input":"select * from IRIS","parameters":"{\\"oml_input_type\\":\\"pandas.DataFrame\\"}"}"""
    make_script(alice, "my_predict", MY_PREDICT)
    body = {"input": "select * from IRIS", "parameters": '{"oml_input_type":"pandas.DataFrame"}'}
    response = apply(alice_api, "table-apply", "my_predict", body)
    assert response.status_code == 200
    expected = pd.DataFrame(
        {
            "Pred_Petal_Width": demo_iris.Sepal_Length * 1.3 - 1,
            "Species": demo_iris.Species,
            "Petal_Width": demo_iris.Petal_Width,
        }
    )
    assert response.json() == {"result": json.loads(expected.to_json(orient="records", double_precision=15))}


def test_row_apply_example(alice, alice_api, demo_iris):
    """Oracle's row-apply example (rows 4, parallel, LOW): every row's record, in order."""
    make_script(alice, "my_predict", MY_PREDICT)
    body = {
        "input": "select * from IRIS",
        "parameters": '{"oml_input_type":"pandas.DataFrame"}',
        "rows": 4,
        "parallelFlag": True,
        "service": "LOW",
    }
    result = apply(alice_api, "row-apply", "my_predict", body).json()["result"]
    assert len(result) == 150
    assert [row["Species"] for row in result] == list(demo_iris.Species)
    assert result[0] == {"Pred_Petal_Width": pytest.approx(5.1 * 1.3 - 1), "Species": "setosa", "Petal_Width": 0.2}


def test_demo_group_count_answers_the_group_apply_example(alice_api, demo_iris):
    """The demo script group_count (global, from bootstrap) answers Oracle's group-apply example as it is."""
    body = {
        "input": "select * from IRIS",
        "parameters": '{"oml_input_type":"pandas.DataFrame"}',
        "groupBy": "Species",
        "orderBy": "Sepal_Length",
        "parallelFlag": True,
    }
    result = apply(alice_api, "group-apply", "group_count", body).json()["result"]
    assert result["versicolor"] == {"Species": {"0": "versicolor"}, "COUNT": {"0": 50}}


def test_group_apply_example(alice, alice_api, demo_iris):
    """Oracle's group-apply example (groupBy Species, orderBy Sepal_Length): an object keyed per group."""
    make_script(alice, "group_count", GROUP_COUNT)
    body = {
        "input": "select * from IRIS",
        "parameters": '{"oml_input_type":"pandas.DataFrame"}',
        "groupBy": "Species",
        "orderBy": "Sepal_Length",
        "parallelFlag": True,
    }
    response = apply(alice_api, "group-apply", "group_count", body)
    assert response.json() == {
        "result": {name: {"Species": {"0": name}, "COUNT": {"0": 50}} for name in ("setosa", "versicolor", "virginica")}
    }


def test_index_apply_example_with_graphics(alice, alice_api):
    """{"times":3,"parallelFlag":true,"graphicsFlag":true,"service":"MEDIUM"}: one image record per index."""
    source = (
        "import matplotlib.pyplot as plt\n"
        "def dots(index):\n"
        "    plt.figure()\n"
        "    plt.scatter(range(index), range(index), color='red')\n"
        "    return index * 2.5\n"
    )
    make_script(alice, "dots", source)
    body = {"times": 3, "parallelFlag": True, "graphicsFlag": True, "service": "MEDIUM"}
    result = apply(alice_api, "index-apply", "dots", body).json()["result"]
    assert [json.loads(r["DATA"]) for r in result] == [2.5, 5.0, 7.5]
    assert [r["ID"] for r in result] == [1, 2, 3]
    assert all(base64.b64decode(r["IMAGE"]).startswith(b"\x89PNG") for r in result)
