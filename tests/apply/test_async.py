"""Apply runs as async jobs: Oracle's group-apply example with asyncFlag, through submit, status and result."""

from __future__ import annotations

import json

from scripts_app.models import Run
from tests.api.test_jobs import job_id_of
from tests.apply.test_endpoints import apply
from tests.factories import make_dataset, make_script

GRADE_COUNT = """
import pandas as pd

def grade_count(dat):
    return pd.DataFrame({"GENDER": [dat["GENDER"].iloc[0]], "N": [len(dat)], "FIRST": [dat["STATUS"].iloc[0]]})
"""


def test_oracle_group_apply_async_example(alice, alice_api, run_job, published):
    """Oracle's async group-apply example (GRADE by GENDER, ordered, timeout 3600): 201, then keyed per group."""
    import pandas as pd

    grade = pd.DataFrame(
        {"GENDER": ["F", "M", "F", "M", "F"], "STATUS": ["b", "a", "a", "c", "c"], "SCORE": [1, 2, 3, 4, 5]}
    )
    make_dataset(alice, "GRADE", grade)
    make_script(alice, "grade_count", GRADE_COUNT)
    body = {
        "input": "select * from GRADE",
        "groupBy": "GENDER",
        "orderBy": "GENDER, STATUS",
        "parameters": '{"oml_input_type":"default"}',
        "parallelFlag": True,
        "asyncFlag": True,
        "timeout": 3600,
    }
    response = apply(alice_api, "group-apply", "grade_count", body)
    assert response.status_code == 201
    assert response.content == b""
    job_id = job_id_of(response)
    run = Run.objects.get(pk=job_id)
    assert (run.mode, run.status, run.kind, run.timeout_seconds) == ("ASYNC", "QUEUED", "group-apply", 3600)
    assert run.apply_options["groupBy"] == ["GENDER"]

    run = run_job(job_id)
    assert run.status == Run.Status.SUCCEEDED, run.error_message
    assert alice_api.get(f"/oml/api/py-scripts/v1/jobs/{job_id}").status_code == 302
    result = alice_api.get(f"/oml/api/py-scripts/v1/jobs/{job_id}/result")
    assert result.status_code == 200
    assert result.json() == {
        "result": {
            "F": {"GENDER": {"0": "F"}, "N": {"0": 3}, "FIRST": {"0": "a"}},
            "M": {"GENDER": {"0": "M"}, "N": {"0": 2}, "FIRST": {"0": "a"}},
        }
    }
    assert len(run.pieces) == 2


def test_async_index_apply_with_graphics(alice, alice_api, run_job, published):
    """An async index-apply with graphicsFlag gives the same image records through jobs/{id}/result."""
    source = "import matplotlib.pyplot as plt\ndef f(i):\n    plt.figure()\n    plt.plot([0, i])\n    return i\n"
    make_script(alice, "f", source)
    body = {"times": 2, "graphicsFlag": True, "asyncFlag": True}
    job_id = job_id_of(apply(alice_api, "index-apply", "f", body))
    run_job(job_id)
    result = alice_api.get(f"/oml/api/py-scripts/v2/jobs/{job_id}/result").json()["result"]
    assert [json.loads(r["DATA"]) for r in result] == [1, 2]
    assert all(r["IMAGE"] for r in result)


def test_async_bad_query_is_400_at_submit(alice, alice_api, published):
    """A bad query is refused when the job is submitted: nothing is queued."""
    make_script(alice, "f", "def f(df):\n    return 1\n")
    response = apply(alice_api, "table-apply", "f", {"input": "drop table X", "asyncFlag": True})
    assert response.status_code == 400
    assert not Run.objects.exists()
    assert published == []


def test_async_failing_piece_result_names_it(alice, alice_api, run_job, published):
    """A failing piece of an async run: its result is the error naming the index."""
    make_script(alice, "f", "def f(i):\n    if i == 2:\n        raise ValueError('two')\n    return i\n")
    job_id = job_id_of(apply(alice_api, "index-apply", "f", {"times": 3, "asyncFlag": True}))
    run = run_job(job_id)
    assert run.status == Run.Status.FAILED
    body = alice_api.get(f"/oml/api/py-scripts/v1/jobs/{job_id}/result").json()
    assert body["errorMessage"].startswith("Index 2 failed: ValueError: two")
