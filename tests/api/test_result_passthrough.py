"""A run's value is encoded once, in the run's process, and passed through as that text: kept as it is
on the run, spliced into the sync answer and the job result, decoded only for the pages."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from django.urls import reverse

from scripts_app.models import Run
from tests.api.test_hostile_values import META, forging
from tests.api.test_jobs import job_id_of, published, run_job, submit  # noqa: F401 - fixtures
from tests.factories import make_script

DO_EVAL = "/oml/api/py-scripts/v1/do-eval"

# Unicode outside the BMP and in it, an int past 64 bits, floats at the edge of their range, and nesting.
SOURCE = """
def value():
    return {
        "text": "h\\u00e9llo \\u2603 \\U0001f600 \\u4e2d\\u6587",
        "big": 2**70,
        "negative_big": -(2**80) + 1,
        "floats": [0.1, 1e308, -1e-308, 5e-324, -0.0, 1.5],
        "nested": [[{"a": [1, {"b": None, "c": [True, False]}]}], {}],
        "\\u00e9t\\u00e9": "key with accents",
    }
"""
EXPECTED = {
    "text": "h\u00e9llo \u2603 \U0001f600 \u4e2d\u6587",
    "big": 2**70,
    "negative_big": -(2**80) + 1,
    "floats": [0.1, 1e308, -1e-308, 5e-324, -0.0, 1.5],
    "nested": [[{"a": [1, {"b": None, "c": [True, False]}]}], {}],
    "\u00e9t\u00e9": "key with accents",
}


def spliced(run: Run, **more: str) -> bytes:
    """The body the API answers for a run: its stored text, as it is, in Oracle's envelope."""
    tail = "".join(f',"{key}":{json.dumps(value, ensure_ascii=False)}' for key, value in more.items())
    return f'{{"result":{run.result_json}{tail}}}'.encode()


def test_the_sync_answer_is_the_stored_text_the_run_wrote(alice, alice_api):
    make_script(alice, "value", SOURCE)
    response = alice_api.post(f"{DO_EVAL}/value", {}, format="json")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    body = json.loads(response.content)
    assert body == {"result": EXPECTED}
    # Floats, big ints and -0.0 come back as the same numbers (== would call 0.0 and -0.0 equal).
    assert [repr(x) for x in body["result"]["floats"]] == [repr(x) for x in EXPECTED["floats"]]
    run = Run.objects.get()
    # Kept once, as the text the run's process wrote (compact, UTF-8), and answered as that same text.
    assert run.result_json == json.dumps(EXPECTED, ensure_ascii=False, separators=(",", ":"))
    assert response.content == spliced(run)
    assert run.result == EXPECTED
    assert run.stored_bytes == len(run.result_json.encode())


def test_the_job_result_is_the_stored_text_too(alice, alice_api, published, run_job):  # noqa: F811
    make_script(alice, "value", SOURCE)
    job_id = job_id_of(submit(alice_api, "value", {"comments": "tag \u2603"}, version="v2"))
    run = run_job(job_id)
    assert run.status == Run.Status.SUCCEEDED
    v1 = alice_api.get(f"/oml/api/py-scripts/v1/jobs/{job_id}/result")
    assert v1.status_code == 200
    assert v1.content == spliced(run)
    assert json.loads(v1.content) == {"result": EXPECTED}
    # v2 adds the job's comments after the value.
    v2 = alice_api.get(f"/oml/api/py-scripts/v2/jobs/{job_id}/result")
    assert v2.content == spliced(run, comments="tag \u2603")
    assert json.loads(v2.content) == {"result": EXPECTED, "comments": "tag \u2603"}


def test_the_run_page_and_its_download_decode_the_same_value(alice, alice_api):
    make_script(alice, "value", SOURCE)
    alice_api.post(f"{DO_EVAL}/value", {}, format="json")
    run = Run.objects.get()
    browser = Client()
    browser.force_login(alice)
    page = browser.get(reverse("web:run_detail", args=[run.pk]))
    assert page.status_code == 200
    assert "h\u00e9llo \u2603 \U0001f600" in page.content.decode()
    assert "1180591620717411303424" in page.content.decode()
    download = browser.get(reverse("web:run_data", args=[run.pk, "json"]))
    assert json.loads(download.content) == EXPECTED


def test_a_graphics_run_carries_the_stored_text_as_data(alice, alice_api):
    make_script(alice, "value", SOURCE)
    response = alice_api.post(f"{DO_EVAL}/value", {"graphicsFlag": True}, format="json")
    assert response.status_code == 200
    run = Run.objects.get()
    [record] = response.json()["result"]
    assert (record["IMAGE"], record["ID"], record["DATA"]) == (None, 1, run.result_json)
    assert json.loads(record["DATA"]) == EXPECTED


def test_a_value_the_child_wrote_its_own_way_is_checked_and_kept_as_written(alice, alice_api):
    """A forged document with JSON the harness would not write (spaces, escapes) but that is valid: its
    text is what was checked, so it is kept and answered as it is, and means the same."""
    text = '{ "k" : "\\u00e9\\ud83d\\ude00" ,"n":[ 1 , 2.50 ] }'
    make_script(alice, "own", forging(f"{META}\n{text}\n[]"))
    response = alice_api.post(f"{DO_EVAL}/own", {}, format="json")
    assert response.status_code == 200
    run = Run.objects.get()
    assert run.result_json == text
    assert response.content == spliced(run)
    assert response.json() == {"result": {"k": "\u00e9\U0001f600", "n": [1, 2.5]}}


@pytest.mark.parametrize(
    "value",
    ['{"a": NaN}', "[1e999]", "[-Infinity]", '{"a": [1, 2]', '{"a": "\\ud800"}'],
    ids=["nan", "overflow", "infinity", "not-json", "lone-surrogate"],
)
def test_a_forged_value_is_refused_or_cleaned_never_passed_through(alice, alice_api, value):
    """What the parent cannot accept is a FAILED run (1039) that keeps no value; text that decodes to
    something unstorable (a lone surrogate) is kept as its cleaned encoding, not as written."""
    make_script(alice, "forged", forging(f"{META}\n{value}\n[]"))
    response = alice_api.post(f"{DO_EVAL}/forged", {}, format="json")
    run = Run.objects.get()
    if value.endswith('"\\ud800"}'):
        assert response.status_code == 200
        assert run.result_json == '{"a":"\ufffd"}'
        assert response.json() == {"result": {"a": "\ufffd"}}
        return
    assert response.status_code == 400
    assert response.json()["errorCode"] == 1039
    assert (run.status, run.error_code, run.result_json) == (Run.Status.FAILED, 1039, None)
