"""Apply runs honour envName: every piece runs in the environment's interpreter."""

from __future__ import annotations

from scripts_app.models import Environment
from tests.apply.test_endpoints import apply
from tests.factories import make_dataset, make_script

ENVS = "/oml/api/py-scripts/v2/envs"
PROBE = "def probe(i):\n    import omlweb_probe\n    return omlweb_probe.ANSWER + i\n"


def test_index_apply_runs_every_piece_in_the_environment(
    admin_api, alice, alice_api, build_queued, django_capture_on_commit_callbacks
):
    """index-apply with envName imports the environment's package in each piece; the default cannot."""
    with django_capture_on_commit_callbacks(execute=True):
        admin_api.post(ENVS, {"name": "probe", "packages": "omlweb-probe==1.0"}, format="json")
    build_queued()
    assert Environment.objects.get(name="probe").status == Environment.Status.READY
    make_script(alice, "probe", PROBE)
    body = {"times": 3, "parallelFlag": True, "envName": "probe"}
    assert apply(alice_api, "index-apply", "probe", body).json() == {"result": [43, 44, 45]}
    default = apply(alice_api, "index-apply", "probe", {"times": 1})
    assert "No module named 'omlweb_probe'" in default.json()["errorMessage"]


def test_data_in_an_environment_without_pyarrow_is_a_clear_error(
    admin_api, alice, alice_api, build_queued, django_capture_on_commit_callbacks
):
    """Rows need pyarrow in the environment (OMLWEB_ENV_RUNNER_PACKAGES has it); without it the error says so."""
    import pandas as pd

    with django_capture_on_commit_callbacks(execute=True):
        admin_api.post(ENVS, {"name": "bare", "packages": "omlweb-probe==1.0"}, format="json")
    build_queued()
    make_dataset(alice, "T", pd.DataFrame({"a": [1, 2]}))
    make_script(alice, "n", "def n(df):\n    return len(df)\n")
    response = apply(alice_api, "table-apply", "n", {"input": "select * from T", "envName": "bare"})
    assert response.status_code == 400
    assert "The input data could not be loaded" in response.json()["errorMessage"]
    assert "pyarrow" in response.json()["errorMessage"]
