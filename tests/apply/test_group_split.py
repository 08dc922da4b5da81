"""Group-apply counts its groups and then reads the rows sorted by group, two readings of the query:
these try to make the second reading disagree with the first, and check each group still gets exactly
its own rows, or the run says it cannot split the query. Row-apply reads its query once."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from scripts_app.models import Run
from tests.apply.test_endpoints import apply
from tests.factories import make_dataset, make_script

ROWS = 40_000

EDGES = """
import pandas as pd

def edges(df):
    return pd.DataFrame({"FIRST": [int(df["ID"].iloc[0])], "LAST": [int(df["ID"].iloc[-1])], "N": [len(df)],
                         "KEYS": [int(df["G"].nunique())], "G": [int(df["G"].iloc[0])]})
"""


def numbered(rows: int = ROWS, groups: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame({"ID": np.arange(rows), "G": rng.integers(0, groups, rows)})


def body(query: str, **split) -> dict:
    return {
        "input": query,
        "parameters": json.dumps({"oml_input_type": "pandas.DataFrame"}),
        "parallelFlag": True,
        "service": "MEDIUM",
        **split,
    }


def test_group_apply_gives_each_group_exactly_its_rows(alice, alice_api):
    frame = numbered()
    make_dataset(alice, "NUMBERED", frame)
    make_script(alice, "edges", EDGES)
    response = apply(alice_api, "group-apply", "edges", body("select * from NUMBERED", groupBy="G", orderBy="ID"))
    assert response.status_code == 200, response.json()
    result = response.json()["result"]
    for key, group in frame.groupby("G"):
        assert result[str(key)] == {
            "FIRST": {"0": int(group.ID.min())},
            "LAST": {"0": int(group.ID.max())},
            "N": {"0": len(group)},
            "KEYS": {"0": 1},
            "G": {"0": int(key)},
        }


def test_a_query_that_reads_differently_the_second_time_never_mixes_groups(alice, alice_api):
    """random() in the filter: the groups' counts and their rows come from two readings. Either the run
    says it cannot split such a query, or (readings that happen to agree) each group got only its rows."""
    make_dataset(alice, "NUMBERED", numbered())
    make_script(alice, "edges", EDGES)
    refused = 0
    for _ in range(3):
        response = apply(
            alice_api, "group-apply", "edges", body("select * from NUMBERED where random() < 0.5", groupBy="G")
        )
        run = Run.objects.latest("pk")
        if response.status_code == 200:
            groups = response.json()["result"]
            assert all(value["KEYS"] == {"0": 1} and value["G"] == {"0": int(key)} for key, value in groups.items())
            continue
        refused += 1
        assert response.status_code == 400, response.json()
        assert "gave other rows when read again" in response.json()["errorMessage"]
        assert (run.status, run.error_code) == (Run.Status.FAILED, 1000)
    assert refused, "20,000 random rows of 40,000 read twice should not have agreed three times"


def test_row_apply_reads_its_query_once_so_a_sample_splits(alice, alice_api):
    make_dataset(alice, "NUMBERED", numbered())
    make_script(alice, "edges", EDGES)
    response = apply(alice_api, "row-apply", "edges", body("select * from NUMBERED where random() < 0.5", rows=5000))
    assert response.status_code == 200, response.json()
    chunks = response.json()["result"]
    assert all(chunk["N"] <= 5000 for chunk in chunks)
    assert all(first["LAST"] < second["FIRST"] for first, second in zip(chunks, chunks[1:], strict=False))
