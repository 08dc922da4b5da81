"""Parameter presets and version messages over the API (issue #13): beyond Oracle, optional, strict."""

from __future__ import annotations

import json

import pytest

from scripts_app.models import ParameterPreset, Run, ScriptVersion
from scripts_app.services.scripts import script_grant
from tests.factories import make_script

SOURCE = "def add(a, b=1):\n    return {'sum': a + b}\n"
BASE = "/oml/api/py-scripts/v2"


def put_preset(api, script, name, parameters, **query):
    suffix = "?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else ""
    return api.put(f"{BASE}/scripts/{script}/presets/{name}{suffix}", {"parameters": parameters}, format="json")


def test_a_preset_is_created_listed_used_by_do_eval_and_overridden_key_by_key(alice, alice_api):
    make_script(alice, "add", SOURCE)
    created = put_preset(alice_api, "add", "big", {"a": 100, "b": 20})
    assert created.status_code == 201, created.content
    assert created.json()["result"]["parameters"] == {"a": 100, "b": 20}
    # Replacing answers 200 and keeps one preset.
    assert put_preset(alice_api, "add", "big", json.dumps({"a": 1000, "b": 20})).status_code == 200
    listed = alice_api.get(f"{BASE}/scripts/add/presets").json()["result"]
    assert [(row["name"], row["parameters"]) for row in listed] == [("big", {"a": 1000, "b": 20})]

    response = alice_api.post(f"{BASE}/do-eval/add", {"preset": "big"}, format="json")
    assert response.json() == {"result": {"sum": 1020}}
    response = alice_api.post(
        f"{BASE}/do-eval/add", {"preset": "big", "parameters": json.dumps({"b": 1})}, format="json"
    )
    assert response.json() == {"result": {"sum": 1001}}
    assert [run.parameters for run in Run.objects.order_by("created_at")] == [
        {"a": 1000, "b": 20},
        {"a": 1000, "b": 1},
    ]

    assert alice_api.delete(f"{BASE}/scripts/add/presets/big").status_code == 200
    assert not ParameterPreset.objects.exists()


def test_an_unknown_preset_is_a_404_with_its_code_and_nothing_runs(alice, alice_api):
    make_script(alice, "add", SOURCE)
    response = alice_api.post(f"{BASE}/do-eval/add", {"preset": "nope"}, format="json")
    assert response.status_code == 404
    assert response.json()["errorCode"] == 1050
    assert not Run.objects.exists()
    assert alice_api.delete(f"{BASE}/scripts/add/presets/nope").status_code == 404


@pytest.mark.parametrize(
    ("name", "parameters"),
    [
        ("ok", [1, 2]),
        ("ok", "not json"),
        ("ok", {"not an identifier": 1}),
        ("ok", {"a": "\u0000"}),
        ("ok", {"a": "x" * 70_000}),
        (" ", {"a": 1}),
        ("-dash-first", {"a": 1}),
        ("x" * 65, {"a": 1}),
    ],
)
def test_hostile_presets_are_refused(alice, alice_api, name, parameters):
    make_script(alice, "add", SOURCE)
    response = put_preset(alice_api, "add", name, parameters)
    assert response.status_code in (400, 404), response.content
    assert not ParameterPreset.objects.exists()


def test_presets_are_the_callers_own_and_need_the_right_to_run(alice, alice_api, bob, bob_api):
    make_script(alice, "add", SOURCE)
    put_preset(alice_api, "add", "mine", {"a": 1})
    # Private to alice: bob cannot see her script, let alone its presets.
    assert bob_api.get(f"{BASE}/scripts/add/presets?owner=alice").status_code == 404
    assert put_preset(bob_api, "add", "x", {"a": 1}, owner="alice").status_code == 404
    script_grant(script=alice.scripts.get(), grantee=bob)
    assert bob_api.get(f"{BASE}/scripts/add/presets?owner=alice").json() == {"result": []}
    assert put_preset(bob_api, "add", "x", {"a": 1}, owner="alice").status_code == 201
    # bob's preset is not alice's: she cannot run with it, and her list does not show it.
    response = alice_api.post(f"{BASE}/do-eval/add", {"preset": "x"}, format="json")
    assert response.status_code == 404
    assert [row["name"] for row in alice_api.get(f"{BASE}/scripts/add/presets").json()["result"]] == ["mine"]
    response = bob_api.post(f"{BASE}/do-eval/add/alice", {"preset": "x"}, format="json")
    assert response.json() == {"result": {"sum": 2}}


def test_a_version_message_is_kept_from_post_and_put(alice, alice_api):
    response = alice_api.post(
        f"{BASE}/scripts", {"name": "add", "script": SOURCE, "message": "First cut"}, format="json"
    )
    assert response.status_code == 201
    response = alice_api.put(
        f"{BASE}/scripts/add",
        {"script": SOURCE.replace("b=1", "b=2"), "message": "  Default b is 2\n now "},
        format="json",
    )
    assert response.status_code == 200
    assert list(ScriptVersion.objects.order_by("number").values_list("message", flat=True)) == [
        "First cut",
        "Default b is 2 now",
    ]
    # Clients that send no message keep working, and a new version has none.
    assert alice_api.put(f"{BASE}/scripts/add", {"script": SOURCE}, format="json").status_code == 200
    assert ScriptVersion.objects.get(number=3).message == ""


@pytest.mark.parametrize("message", ["x" * 501, 5, ["a"], "nul\u0000"])
def test_a_bad_version_message_is_refused_and_nothing_is_saved(alice, alice_api, message):
    make_script(alice, "add", SOURCE)
    response = alice_api.put(
        f"{BASE}/scripts/add", {"script": SOURCE.replace("b=1", "b=3"), "message": message}, format="json"
    )
    assert response.status_code == 400, response.content
    assert ScriptVersion.objects.count() == 1
