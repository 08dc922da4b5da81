"""Hostile values, from a run or in a request: each gets its own clear error (or is stored made safe), never a
500 and never a Run left RUNNING; another user's next run succeeds on the same template.

Run on SQLite and on PostgreSQL (`DATABASE_URL=postgres://... pytest tests/api`): PostgreSQL refuses NUL
in text and in jsonb, and every driver refuses a lone surrogate.
"""

from __future__ import annotations

import io
import json

import pytest

from scripts_app.models import Dataset, Run, Script, ScriptVersion
from scripts_app.runner.templates import registry
from tests.factories import make_script

DO_EVAL = "/oml/api/py-scripts/v1/do-eval"
SCRIPTS = "/oml/api/py-scripts/v1/scripts"
HEALTHY = "def healthy(n=1):\n    return ['still here'] * n\n"
META = '{"outcome": "SUCCEEDED", "failure": null, "error_message": "", "traceback": ""}'


def forging(document: str) -> str:
    """A script that writes its own result document on the result pipe, then exits at once."""
    return (
        "import os, sys\n"
        "def attack():\n"
        "    fd = sys._getframe(2).f_locals['result_fd']\n"
        f"    os.write(fd, {document.encode('utf-8', 'surrogatepass')!r})\n"
        "    os._exit(0)\n"
    )


def template_pids() -> dict:
    return {key: template.process.pid for key, template in registry.templates.items() if template.process}


def bob_still_runs(bob, bob_api) -> None:
    """Another user's normal run succeeds."""
    if not Script.objects.filter(owner=bob, name="healthy").exists():
        make_script(bob, "healthy", HEALTHY)
    response = bob_api.post(f"{DO_EVAL}/healthy", {"parameters": {"n": 2}}, format="json")
    assert response.json() == {"result": ["still here", "still here"]}
    assert Run.objects.filter(user=bob).latest("created_at").status == Run.Status.SUCCEEDED


def post_raw(api, url: str, body: str):
    return api.post(url, data=body, content_type="application/json")


# What a run sends back

FORGED = {
    "unknown-outcome": '{"outcome": "WON", "failure": null, "error_message": "", "traceback": ""}\nnull\n[]',
    "unknown-failure": '{"outcome": "FAILED", "failure": "boom", "error_message": "", "traceback": ""}\nnull\n[]',
    "nan-value": f"{META}\nNaN\n[]",
    "1e999-value": f"{META}\n[1e999]\n[]",
    "meta-not-an-object": '"SUCCEEDED"\nnull\n[]',
    "figure-not-a-png": f'{META}\nnull\n[{{"title": "t", "png": "R0lGODlhAQABAAAAACw="}}]',
    "figures-not-a-list": f'{META}\nnull\n{{"png": 1}}',
}


@pytest.mark.parametrize("document", FORGED.values(), ids=FORGED.keys())
def test_a_forged_result_document_is_a_failed_run_of_its_own_code(alice, alice_api, bob, bob_api, document):
    """A document the harness could not have written: 400 with 1039, the Run FAILED, the template untouched."""
    bob_still_runs(bob, bob_api)
    before = template_pids()
    make_script(alice, "attack", forging(document))
    response = alice_api.post(f"{DO_EVAL}/attack", {}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["errorCode"] == 1039, body
    assert "cannot accept" in body["errorMessage"]
    run = Run.objects.get(user=alice)
    assert run.status == Run.Status.FAILED
    assert run.error_code == 1039
    bob_still_runs(bob, bob_api)
    assert template_pids() == before


def test_more_forged_figures_than_allowed_fail_as_too_many_figures(alice, alice_api, bob, bob_api, settings):
    """The parent counts the figures itself: more than allowed is IMAGE_TOO_LARGE (1036)."""
    figure = '{"title": null, "png": "iVBORw0KGgo="}'
    make_script(alice, "attack", forging(f"{META}\nnull\n[{', '.join([figure] * 60)}]"))
    response = alice_api.post(f"{DO_EVAL}/attack", {}, format="json")
    assert response.json()["errorCode"] == 1036
    assert Run.objects.get(user=alice).status == Run.Status.FAILED
    bob_still_runs(bob, bob_api)


def test_a_list_whose_len_lies_is_output_too_long(alice, alice_api, bob, bob_api, settings):
    """A list subclass claiming len() 0 is counted on its JSON: OML's 1024."""
    settings.OMLWEB_OUTPUT_SZLIMIT = 100
    source = (
        "class Liar(list):\n    def __len__(self):\n        return 0\n\ndef attack():\n    return Liar(range(500))\n"
    )
    make_script(alice, "attack", source)
    response = alice_api.post(f"{DO_EVAL}/attack", {}, format="json")
    assert response.status_code == 400
    assert response.json() == {"errorMessage": "Output exceeds maximum length 100", "errorCode": 1024}
    assert Run.objects.get(user=alice).status == Run.Status.FAILED
    bob_still_runs(bob, bob_api)


def test_nul_and_lone_surrogates_from_a_run_are_stored_as_replacement_characters(alice, alice_api, bob, bob_api):
    """NUL and lone surrogates in stdout, stderr, the result and its keys: stored (on PostgreSQL too) and answered as
    U+FFFD in valid JSON."""
    source = (
        "import sys\n"
        "def attack():\n"
        "    print('out\\x00put \\ud800')\n"
        "    sys.stderr.write('err\\x00\\n')\n"
        "    return {'k\\x00': ['a\\x00b', '\\ud800', '\\udfff!']}\n"
    )
    make_script(alice, "attack", source)
    response = alice_api.post(f"{DO_EVAL}/attack", {}, format="json")
    assert response.status_code == 200
    assert json.loads(response.content.decode("utf-8")) == {"result": {"k\ufffd": ["a\ufffdb", "\ufffd", "\ufffd!"]}}
    run = Run.objects.get(user=alice)
    assert run.status == Run.Status.SUCCEEDED
    assert run.result == {"k\ufffd": ["a\ufffdb", "\ufffd", "\ufffd!"]}
    assert run.stdout == "out\ufffdput \\ud800\n"  # the child's stdout writes a surrogate as its escape
    assert run.stderr == "err\ufffd\n"
    bob_still_runs(bob, bob_api)


def test_nul_and_lone_surrogates_in_an_error_are_stored(alice, alice_api, bob, bob_api):
    """An exception whose message holds NUL and a lone surrogate: the run FAILED with its message made storable."""
    make_script(alice, "attack", "def attack():\n    raise ValueError('bad\\x00\\udc80 value')\n")
    response = alice_api.post(f"{DO_EVAL}/attack", {}, format="json")
    assert response.status_code == 400
    body = json.loads(response.content.decode("utf-8"))
    assert body["errorCode"] == 1030
    assert "ValueError: bad\ufffd\ufffd value" in body["errorMessage"]
    run = Run.objects.get(user=alice)
    assert run.status == Run.Status.FAILED
    assert run.error_message == "ValueError: bad\ufffd\ufffd value"
    bob_still_runs(bob, bob_api)


def test_a_forged_document_with_nul_in_its_messages_is_stored(alice, alice_api, bob, bob_api):
    """A forged FAILED document with NUL and lone surrogates in its message and traceback still stores."""
    document = (
        '{"outcome": "FAILED", "failure": "script_error", "error_message": "x\\u0000y\\ud800", '
        '"traceback": "t\\u0000"}\nnull\n[]'
    )
    make_script(alice, "attack", forging(document))
    response = alice_api.post(f"{DO_EVAL}/attack", {}, format="json")
    assert response.json()["errorCode"] == 1030
    run = Run.objects.get(user=alice)
    assert run.error_message == "x\ufffdy\ufffd"
    assert run.traceback == "t\ufffd"
    bob_still_runs(bob, bob_api)


# What a request sends

UNSUPPORTED = {
    "nan-object": '{"parameters": {"n": NaN}}',
    "infinity-object": '{"parameters": {"n": Infinity}}',
    "minus-infinity-object": '{"parameters": {"n": [-Infinity]}}',
    "1e999-object": '{"parameters": {"n": 1e999}}',
    "nan-string": json.dumps({"parameters": '{"n": NaN}'}),
    "1e999-string": json.dumps({"parameters": '{"n": 1e999}'}),
    "minus-1e999-string": json.dumps({"parameters": '{"n": -1e999}'}),
    "nul-object": '{"parameters": {"n": "a\\u0000b"}}',
    "nul-key": '{"parameters": {"\\u0000": 1}}',
    "lone-surrogate-object": '{"parameters": {"n": "\\ud800"}}',
    "nul-string": json.dumps({"parameters": json.dumps({"n": "a\x00b"})}),
    "lone-surrogate-string": json.dumps({"parameters": '{"n": "\\udc00"}'}),
    "nul-in-comments": '{"asyncFlag": true, "comments": "a\\u0000b"}',
}


@pytest.mark.parametrize("body", UNSUPPORTED.values(), ids=UNSUPPORTED.keys())
def test_values_no_run_can_take_are_a_400_with_their_own_code(alice, alice_api, bob, bob_api, body):
    """NaN, ±Infinity, 1e999, NUL or a lone surrogate in the request: 400 with 1008, and no Run recorded."""
    make_script(alice, "healthy", HEALTHY)
    response = post_raw(alice_api, f"{DO_EVAL}/healthy", body)
    assert response.status_code == 400
    answer = response.json()
    assert answer["errorCode"] == 1008, answer
    assert not Run.objects.exists()
    bob_still_runs(bob, bob_api)


def test_unsupported_values_in_apply_options_are_a_400(alice, alice_api):
    """index-apply with times 1e999 or NaN: 400 with 1008, no Run."""
    make_script(alice, "healthy", HEALTHY)
    for body in ('{"times": 1e999}', '{"times": NaN}'):
        response = post_raw(alice_api, "/oml/api/py-scripts/v1/index-apply/healthy", body)
        assert response.status_code == 400
        assert response.json()["errorCode"] == 1008
    assert not Run.objects.exists()


def test_a_script_description_with_nul_is_a_400(alice_api):
    """A NUL in any stored field of a request is refused before anything is stored."""
    body = json.dumps({"name": "hello", "script": HEALTHY, "description": "a\x00b"})
    response = post_raw(alice_api, SCRIPTS, body)
    assert response.status_code == 400
    assert response.json()["errorCode"] == 1008
    assert not Script.objects.exists()


def test_the_literal_text_backslash_u0000_is_a_plain_string(alice, alice_api):
    """An escaped backslash followed by u0000 is six ordinary characters, not a NUL: it runs."""
    make_script(alice, "echo", "def echo(s):\n    return s\n")
    response = post_raw(alice_api, f"{DO_EVAL}/echo", '{"parameters": {"s": "\\\\u0000 \\ud83d\\ude00"}}')
    assert response.json() == {"result": "\\u0000 \U0001f600"}


# Sources too deep for the parser

DEEP = {
    "parentheses-100k": "x = " + "(" * 100_000 + "1" + ")" * 100_000 + "\ndef f():\n    return x\n",
    "sum-1M": "x = " + "+".join(["1"] * 1_000_000) + "\ndef f():\n    return x\n",
    "lists-100k": "x = " + "[" * 100_000 + "]" * 100_000 + "\ndef f():\n    return x\n",
    "unary-100k": "def f():\n    return " + "-" * 100_000 + "1\n",
    "attributes-50k": "def f():\n    return a" + ".b" * 50_000 + "\n",
    "lambdas-10k": "def f():\n    return " + "lambda: " * 10_000 + "1\n",
}


@pytest.mark.parametrize("source", DEEP.values(), ids=DEEP.keys())
def test_a_source_too_deep_to_parse_is_an_invalid_script(alice_api, settings, source):
    """POST and PUT scripts with a syntax tree too deep for the parser: 400 with 1004, nothing stored."""
    settings.OMLWEB_MAX_BODY_BYTES = 10 * 1024**2
    response = post_raw(alice_api, SCRIPTS, json.dumps({"name": "deep", "script": source}))
    assert response.status_code == 400
    assert response.json()["errorCode"] == 1004, response.json()
    assert not Script.objects.exists()
    assert post_raw(alice_api, SCRIPTS, json.dumps({"name": "deep", "script": HEALTHY})).status_code == 201
    response = alice_api.put(f"{SCRIPTS}/deep", data=json.dumps({"script": source}), content_type="application/json")
    assert response.status_code == 400
    assert response.json()["errorCode"] == 1004
    assert ScriptVersion.objects.count() == 1


def test_running_a_stored_source_too_deep_to_compile_is_a_script_error(alice, alice_api, bob, bob_api):
    """A version stored before the check (or past it) that no parser can read: the run is FAILED with 1030."""
    script = make_script(alice, "deep", HEALTHY)
    source = "def deep():\n    return " + "-" * 100_000 + "1\n"
    version = ScriptVersion.objects.create(
        script=script, number=2, source=source, entry_function="deep", created_by=alice
    )
    script.current_version = version
    script.save()
    response = alice_api.post(f"{DO_EVAL}/deep", {}, format="json")
    assert response.status_code == 400
    assert response.json()["errorCode"] == 1030, response.json()
    assert "too deeply nested" in response.json()["errorMessage"]
    assert Run.objects.get(user=alice).status == Run.Status.FAILED
    bob_still_runs(bob, bob_api)


@pytest.mark.django_db(transaction=True)
def test_another_users_concurrent_runs_succeed_while_forged_documents_are_judged(alice, alice_api, bob):
    """bob's runs, in threads of their own, all succeed while alice's forged documents fail one after another."""
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connection

    from tests.conftest import client_for

    make_script(bob, "healthy", HEALTHY)
    bob_still_runs(bob, client_for(bob))
    before = template_pids()
    make_script(alice, "attack", forging(FORGED["nan-value"]))

    def bob_runs(count: int) -> list:
        api = client_for(bob)
        try:
            return [
                api.post(f"{DO_EVAL}/healthy", {"parameters": {"n": 1}}, format="json").json() for _ in range(count)
            ]
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(bob_runs, 4) for _ in range(2)]
        attacks = [alice_api.post(f"{DO_EVAL}/attack", {}, format="json").json()["errorCode"] for _ in range(4)]
        answers = [answer for future in futures for answer in future.result(timeout=300)]
    assert attacks == [1039] * 4
    assert answers == [{"result": ["still here"]}] * 8
    assert set(Run.objects.filter(user=bob).values_list("status", flat=True)) == {Run.Status.SUCCEEDED}
    assert Run.objects.filter(user=alice, status=Run.Status.FAILED, error_code=1039).count() == 4
    assert template_pids() == before


@pytest.mark.parametrize(
    "url",
    [
        f"{DO_EVAL}/a%00b",
        f"{DO_EVAL}/healthy/al%00ice",
        f"{SCRIPTS}/a%00b",
        "/oml/api/py-scripts/v1/datasets/a%00b",
        "/oml/api/py-scripts/v1/jobs/%00",
        "/oml/api/py-scripts/v2/jobs?limit=%00",
    ],
)
def test_a_nul_in_the_url_is_a_400(alice, alice_api, url):
    """A %00 in a name or a query parameter is refused before any lookup (PostgreSQL refuses it even in a WHERE)."""
    make_script(alice, "healthy", HEALTHY)
    response = alice_api.post(url, {}, format="json") if "do-eval" in url else alice_api.get(url)
    assert response.status_code == 400
    assert response.json()["errorCode"] == 1008
    assert not Run.objects.exists()


def test_a_nul_in_a_pages_query_is_a_400(client, alice):
    """The pages' searches too: 400, not a database error."""
    client.force_login(alice)
    for url in ("/scripts/?q=%00", "/runs/?q=%00", "/datasets/?q=%00", "/scripts/?owner=%00"):
        assert client.get(url).status_code == 400, url


def test_a_dataset_column_named_with_nul_is_refused(alice_api):
    """A CSV whose header holds a NUL: 400 with 1008, no dataset (its schema is stored as JSON)."""
    upload = io.BytesIO(b"na\x00me,val\nx,1\n")
    response = alice_api.post("/oml/api/py-scripts/v1/datasets", {"name": "d", "file": upload}, format="multipart")
    assert response.status_code == 400
    assert response.json()["errorCode"] == 1008
    assert not Dataset.objects.exists()


def test_nul_in_a_datasets_values_reaches_a_run_as_a_replacement_character(alice, alice_api, bob, bob_api):
    """Data holding NUL, run per group and whole: group keys and values come back and are stored as U+FFFD."""
    upload = io.BytesIO(b"name,val\nx\x00y,1\nz,2\n")
    response = alice_api.post("/oml/api/py-scripts/v1/datasets", {"name": "d", "file": upload}, format="multipart")
    assert response.status_code == 201
    make_script(alice, "ident", "def ident(df):\n    return df\n")
    body = {"input": "select * from d", "groupBy": "name"}
    response = alice_api.post("/oml/api/py-scripts/v1/group-apply/ident", body, format="json")
    assert response.status_code == 200
    result = response.json()["result"]
    assert result["x\ufffdy"] == {"name": {"0": "x\ufffdy"}, "val": {"0": 1}}
    response = alice_api.post("/oml/api/py-scripts/v1/table-apply/ident", {"input": "select * from d"}, format="json")
    assert response.json() == {"result": [{"name": "x\ufffdy", "val": 1}, {"name": "z", "val": 2}]}
    assert set(Run.objects.values_list("status", flat=True)) == {Run.Status.SUCCEEDED}
    bob_still_runs(bob, bob_api)


def test_a_forged_value_nested_to_the_limit_is_stored_answered_and_shown(alice, alice_api, client):
    """A value 128 levels deep (the most the parent takes) is stored, answered and shown on its run page."""
    make_script(alice, "attack", forging(f"{META}\n{'[' * 128}{']' * 128}\n[]"))
    response = alice_api.post(f"{DO_EVAL}/attack", {}, format="json")
    assert response.status_code == 200
    run = Run.objects.get()
    assert run.status == Run.Status.SUCCEEDED
    client.force_login(alice)
    assert client.get(f"/runs/{run.pk}/").status_code == 200
    make_script(alice, "attack", forging(f"{META}\n{'[' * 129}{']' * 129}\n[]"), overwrite=True)
    response = alice_api.post(f"{DO_EVAL}/attack", {}, format="json")
    assert response.json()["errorCode"] == 1027
