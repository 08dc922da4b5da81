"""POST do-eval: OML's answer shapes, the run it records, and each way a run can fail."""

from __future__ import annotations

import base64
import json

import pytest

from scripts_app.models import Run, RunImage
from scripts_app.services.scripts import script_grant
from tests.factories import make_script

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def do_eval(api, name, body=None, *, owner=None, version="v1"):
    url = f"/oml/api/py-scripts/{version}/do-eval/{name}" + (f"/{owner}" if owner else "")
    return api.post(url, body or {}, format="json")


def test_returns_value_and_records_the_run(alice, alice_api):
    """The result is {"result": value} and a SUCCEEDED run records who, what, and the result."""
    make_script(alice, "add", "def add(a, b=1):\n    return {'sum': a + b}\n")
    response = do_eval(alice_api, "add", {"parameters": json.dumps({"a": 2, "b": 3}), "service": "MEDIUM"})
    assert response.status_code == 200
    assert response.json() == {"result": {"sum": 5}}
    run = Run.objects.get()
    assert run.status == Run.Status.SUCCEEDED
    assert run.user == alice
    assert run.parameters == {"a": 2, "b": 3}
    assert run.service == "MEDIUM"
    assert run.mode == Run.Mode.SYNC
    assert run.env_name == "default"
    assert run.result == {"sum": 5}
    assert run.client_address == "127.0.0.1"
    assert run.started_at <= run.finished_at
    assert run.script_version.number == 1


@pytest.mark.parametrize(
    "body",
    [
        {"parameters": {"a": 2}},
        {"parameter": '{"a": 2}'},
        {"parameters": '{"a": 2}', "unknownField": [1, 2]},
    ],
)
def test_parameters_as_object_misspelled_or_with_unknown_fields(alice, alice_api, body):
    """parameters may be an object, may be spelt 'parameter', and unknown fields are ignored."""
    make_script(alice, "add", "def add(a, b=1):\n    return a + b\n")
    response = do_eval(alice_api, "add", body)
    assert response.json() == {"result": 3}


def test_oml_control_arguments_are_not_passed_to_the_function(alice, alice_api):
    """oml_* keys in parameters are OML control arguments, kept on the run but not passed on."""
    make_script(alice, "f", "def f(**kwargs):\n    return sorted(kwargs)\n")
    response = do_eval(alice_api, "f", {"parameters": '{"x": 1, "oml_input_type": "default"}'})
    assert response.json() == {"result": ["x"]}
    assert Run.objects.get().parameters == {"x": 1, "oml_input_type": "default"}


def test_print_does_not_corrupt_the_result(alice, alice_api):
    """print() goes to the run's stdout, stderr apart, and the result stays clean (no OML 1026)."""
    source = "import sys\ndef noisy():\n    print('{not json')\n    print('oops', file=sys.stderr)\n    return [1]\n"
    make_script(alice, "noisy", source)
    response = do_eval(alice_api, "noisy")
    assert response.json() == {"result": [1]}
    run = Run.objects.get()
    assert run.stdout == "{not json\n"
    assert run.stderr == "oops\n"


def test_dataframe_becomes_records(alice, alice_api):
    """A DataFrame comes back as a list of records, as OML does."""
    source = "import pandas as pd\ndef df():\n    return pd.DataFrame({'id': [1, 2], 'val': [0.5, None]})\n"
    make_script(alice, "df", source)
    assert do_eval(alice_api, "df").json() == {"result": [{"id": 1, "val": 0.5}, {"id": 2, "val": None}]}


def test_numpy_values_and_tuples(alice, alice_api):
    """numpy scalars and arrays and tuples become plain JSON."""
    source = (
        "import numpy as np\n"
        "def values():\n"
        "    return {'i': np.int64(3), 'f': np.float32(0.5), 'a': np.arange(3), 't': (1, 'x'), 'b': np.bool_(True)}\n"
    )
    make_script(alice, "values", source)
    assert do_eval(alice_api, "values").json() == {
        "result": {"i": 3, "f": 0.5, "a": [0, 1, 2], "t": [1, "x"], "b": True}
    }


def test_series_becomes_a_list(alice, alice_api):
    """A pandas Series comes back as JSON."""
    make_script(alice, "s", "import pandas as pd\ndef s():\n    return pd.Series([1, 2, 3])\n")
    assert do_eval(alice_api, "s").json()["result"] in ([1, 2, 3], {"0": 1, "1": 2, "2": 3})


def test_script_that_raises_is_400_with_traceback(alice, alice_api):
    """A raising script is a 400 whose errorMessage holds the traceback; the run is FAILED with it."""
    make_script(alice, "boom", "def boom():\n    x = 1\n    raise ValueError('bad value')\n")
    response = do_eval(alice_api, "boom")
    assert response.status_code == 400
    body = response.json()
    assert body["errorCode"] == 1030
    assert "ValueError: bad value" in body["errorMessage"]
    assert "line 3" in body["errorMessage"]
    run = Run.objects.get()
    assert run.status == Run.Status.FAILED
    assert run.error_code == 1030
    assert "bad value" in run.traceback


def test_output_over_the_limit_is_error_1024(alice, alice_api, settings):
    """More items than OMLWEB_OUTPUT_SZLIMIT is OML's error 1024, never a silent cut."""
    settings.OMLWEB_OUTPUT_SZLIMIT = 5000
    make_script(alice, "big", "def big():\n    return list(range(5001))\n")
    response = do_eval(alice_api, "big")
    assert response.status_code == 400
    assert response.json() == {"errorMessage": "Output exceeds maximum length 5000", "errorCode": 1024}
    assert Run.objects.get().status == Run.Status.FAILED


def test_output_at_the_limit_succeeds(alice, alice_api, settings):
    """Exactly the limit is fine."""
    settings.OMLWEB_OUTPUT_SZLIMIT = 5000
    make_script(alice, "big", "def big():\n    return list(range(5000))\n")
    assert len(do_eval(alice_api, "big").json()["result"]) == 5000


def test_time_limit_kills_the_run(alice, alice_api, settings):
    """A run past the wall-clock limit is killed: 400 with the timeout code, run TIMED_OUT."""
    settings.OMLWEB_RUN_WALL_SECONDS = 1.0
    make_script(alice, "slow", "import time\ndef slow():\n    time.sleep(60)\n")
    response = do_eval(alice_api, "slow")
    assert response.status_code == 400
    assert response.json()["errorCode"] == 1031
    run = Run.objects.get()
    assert run.status == Run.Status.TIMED_OUT
    assert run.duration_seconds < 30


def test_not_serializable_result_is_a_clear_error(alice, alice_api):
    """A return value JSON cannot hold is a 400 naming its type."""
    make_script(alice, "obj", "def obj():\n    return object()\n")
    response = do_eval(alice_api, "obj")
    assert response.status_code == 400
    assert response.json()["errorCode"] == 1027
    assert "object" in response.json()["errorMessage"]


FIGURES = """
import matplotlib.pyplot as plt

def figures(n=1):
    for i in range(n):
        fig = plt.figure()
        plt.plot([1, 2, 3], [i, 2, 1])
        if i == 0:
            fig.suptitle('first')
        elif i == 1:
            plt.title('second')
    return {'n': n}
"""


@pytest.mark.parametrize("count", [0, 1, 3])
def test_graphics_returns_one_element_per_figure(alice, alice_api, count):
    """With graphicsFlag each figure is an element with a PNG, its title, DATA as a JSON string, and ID from 1."""
    make_script(alice, "figures", FIGURES)
    response = do_eval(alice_api, "figures", {"graphicsFlag": True, "parameters": json.dumps({"n": count})})
    assert response.status_code == 200
    result = response.json()["result"]
    assert len(result) == max(count, 1)
    for element in result:
        assert set(element) == {"IMAGE", "DATA", "TITLE", "ID"}
        assert json.loads(element["DATA"]) == {"n": count}
    if count == 0:
        assert result[0]["IMAGE"] is None
        assert result[0]["ID"] == 1
        return
    assert [element["ID"] for element in result] == list(range(1, count + 1))
    assert [element["TITLE"] for element in result] == ["first", "second", None][:count]
    for element in result:
        assert base64.b64decode(element["IMAGE"]).startswith(PNG_MAGIC)
    images = RunImage.objects.filter(run__user=alice).order_by("position")
    assert [image.title for image in images] == ["first", "second", None][:count]
    assert images[0].image.read().startswith(PNG_MAGIC)


def test_figures_are_not_captured_without_graphics_flag(alice, alice_api):
    """Without graphicsFlag the answer is the bare value and no image is stored."""
    make_script(alice, "figures", FIGURES)
    assert do_eval(alice_api, "figures").json() == {"result": {"n": 1}}
    assert not RunImage.objects.exists()


def test_random_red_dots_example_1(admin_user, alice_api):
    """The seed's Example 1: a global RandomRedDots answers one red-dot PNG with the id/val records."""
    from scripts_app.demo import demo_scripts

    make_script(admin_user, "RandomRedDots", demo_scripts()["RandomRedDots"], is_global=True)
    response = do_eval(alice_api, "RandomRedDots", {"graphicsFlag": True, "service": "LOW"})
    assert response.status_code == 200
    [element] = response.json()["result"]
    assert element["ID"] == 1
    assert element["TITLE"] == "Random Red Dots"
    assert json.loads(element["DATA"]) == [{"id": i, "val": i / 100} for i in range(1, 10)]
    png = base64.b64decode(element["IMAGE"])
    assert png.startswith(PNG_MAGIC)
    assert _has_red_pixels(png)


def _has_red_pixels(png: bytes) -> bool:
    import io

    import matplotlib.image

    pixels = matplotlib.image.imread(io.BytesIO(png))
    red = (pixels[..., 0] > 0.8) & (pixels[..., 1] < 0.3) & (pixels[..., 2] < 0.3)
    return int(red.sum()) > 100


def test_own_script_is_found_before_a_global_one(alice, admin_user, alice_api):
    """Without an owner, the caller's own script wins over a global one of the same name."""
    make_script(admin_user, "which", "def which():\n    return 'global'\n", is_global=True)
    assert do_eval(alice_api, "which").json() == {"result": "global"}
    make_script(alice, "which", "def which():\n    return 'mine'\n")
    assert do_eval(alice_api, "which").json() == {"result": "mine"}


def test_with_owner_runs_that_owners_global_or_granted_script(alice, bob, alice_api):
    """do-eval/{name}/{owner} runs the owner's script if it is global or granted to the caller."""
    script = make_script(bob, "greet", "def greet():\n    return 'bob says hi'\n")
    assert do_eval(alice_api, "greet", owner="bob").status_code == 404
    script_grant(script=script, grantee=alice)
    assert do_eval(alice_api, "greet", owner="bob").json() == {"result": "bob says hi"}


def test_private_script_is_invisible_to_another_user(bob, alice_api):
    """Another user's private script is a 404, with or without the owner, and no run is recorded."""
    make_script(bob, "secret", "def secret():\n    return 42\n")
    for owner in (None, "bob"):
        response = do_eval(alice_api, "secret", owner=owner)
        assert response.status_code == 404
        assert response.json()["errorCode"] == 1020
    assert not Run.objects.exists()


def test_unknown_script_and_owner_are_404(alice_api):
    """Unknown names and owners are 404s with the OML error body."""
    assert do_eval(alice_api, "nothing").json()["errorCode"] == 1020
    response = do_eval(alice_api, "nothing", owner="nobody")
    assert response.status_code == 404
    assert "nobody" in response.json()["errorMessage"]


def test_unknown_environment_is_400(alice, alice_api):
    """An envName that names no environment is a 400 (1003) naming it; "default" always exists."""
    make_script(alice, "f", "def f():\n    return 1\n")
    response = do_eval(alice_api, "f", {"envName": "seaborn"})
    assert response.status_code == 400
    assert response.json()["errorCode"] == 1003
    assert "seaborn" in response.json()["errorMessage"]
    assert do_eval(alice_api, "f", {"envName": "default"}).json() == {"result": 1}


def test_v2_do_eval(alice, alice_api):
    """v2 runs scripts like v1."""
    make_script(alice, "f", "def f():\n    return 1\n")
    assert do_eval(alice_api, "f", version="v2").json() == {"result": 1}


def test_a_global_set_by_one_run_is_gone_in_the_next(alice, alice_api):
    """Every run starts fresh: module state does not leak from one run to the next."""
    source = (
        "import json\ndef f():\n    seen = hasattr(json, 'omlweb_mark')\n    json.omlweb_mark = 1\n    return seen\n"
    )
    make_script(alice, "f", source)
    assert do_eval(alice_api, "f").json() == {"result": False}
    assert do_eval(alice_api, "f").json() == {"result": False}


def test_a_trivial_sync_run_reads_few_statements(alice, alice_api, django_capture_on_commit_callbacks):
    """A trivial sync do-eval keeps its promises in at most 14 SQL statements, what reacts after its
    commit included (was 26 before issue #11's sync path work): the token, the script, the user's groups
    with their limits (once a run), the user's lock with their storage counter (before the run and when
    recording it), the share count under that lock, the environment's lock, the Run row, the audit chain
    (three statements; two on PostgreSQL), the finishing UPDATE with the counter's, and the
    notifications check. None reads the user's history (issue #11's 100,000-run measure). The
    transaction's own savepoints (the test's wrapping) are not counted."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from scripts_app.models import AuditEvent

    make_script(alice, "trivial", "def trivial():\n    return {'a': 1}\n")
    assert do_eval(alice_api, "trivial").json() == {"result": {"a": 1}}
    with CaptureQueriesContext(connection) as queries, django_capture_on_commit_callbacks(execute=True):
        response = do_eval(alice_api, "trivial")
    assert response.json() == {"result": {"a": 1}}
    statements = [query["sql"] for query in queries.captured_queries if "SAVEPOINT" not in query["sql"]]
    assert len(statements) <= 14, "\n".join(statements)
    assert Run.objects.filter(status=Run.Status.SUCCEEDED).count() == 2
    assert AuditEvent.objects.filter(action="run.submit").count() == 2
