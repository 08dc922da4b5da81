"""Oracle's v2 surface: scripts by type, conda preloads, v1's lifecycle, the tenant path, slashes, HEAD."""

from __future__ import annotations

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from scripts_app.models import Environment, EnvironmentPreload, Script
from scripts_app.services.scripts import script_grant
from tests.api.test_errors_and_headers import assert_oml_error
from tests.apply.conftest import iris_like
from tests.factories import make_dataset, make_script

SOURCE = "def f(x=1):\n    return x\n"
V2 = "/oml/api/py-scripts/v2"


# Scripts by type


@pytest.fixture
def repository(alice, bob, admin_user):
    """alice owns two scripts (one lent to bob), bob lends one to alice, an admin owns a global one."""
    make_script(alice, "mine", SOURCE)
    lent = make_script(alice, "lent_by_alice", SOURCE)
    script_grant(script=lent, grantee=bob)
    to_alice = make_script(bob, "lent_to_alice", SOURCE)
    script_grant(script=to_alice, grantee=alice)
    make_script(bob, "bobs_private", SOURCE)
    make_script(admin_user, "everyones", SOURCE, is_global=True)


@pytest.mark.parametrize(
    ("script_type", "expected"),
    [
        ("user", {("alice", "mine"), ("alice", "lent_by_alice")}),
        (
            "all",
            {("alice", "mine"), ("alice", "lent_by_alice"), ("bob", "lent_to_alice"), ("root", "everyones")},
        ),
        ("global", {("root", "everyones")}),
        ("grant", {("alice", "lent_by_alice")}),
        ("granted", {("bob", "lent_to_alice")}),
    ],
)
def test_scripts_by_type_lists_what_oracle_names(repository, alice_api, script_type, expected):
    """GET v2/scripts/{type}: own, all accessible, global, granted by me, granted to me; never another's private."""
    response = alice_api.get(f"{V2}/scripts/{script_type}")
    assert response.status_code == 200
    rows = response.json()["result"]
    assert {(row["OWNER"], row["NAME"]) for row in rows} == expected


def test_a_script_cannot_be_named_like_a_type(alice, alice_api):
    """Creating a script named user (any case) is a 400; nothing is stored; a normal name still works."""
    for name in ("user", "Granted", "ALL"):
        response = alice_api.post(f"{V2}/scripts", {"name": name, "script": SOURCE}, format="json")
        assert_oml_error(response, 400, 1000, "script types")
    assert not Script.objects.exists()
    response = alice_api.post(f"{V2}/scripts", {"name": "users", "script": SOURCE}, format="json")
    assert response.status_code == 201
    assert alice_api.get(f"{V2}/scripts/users").json()["result"]["NAME"] == "users"


def test_script_types_take_no_writes(repository, alice_api):
    """DELETE on a type finds no script of that name (404), and deletes nothing."""
    assert_oml_error(alice_api.delete(f"{V2}/scripts/user"), 404)
    assert Script.objects.filter(owner__username="alice").count() == 2


# Conda preloads on omlweb's environments


@pytest.fixture
def seaborn(db):
    return Environment.objects.create(name="seaborn", python="/usr/bin/python3", status=Environment.Status.READY)


def test_preload_lifecycle(seaborn, alice, alice_api, settings):
    """POST preloads (any case), GET lists it, a second POST is a 400 unless overwrite, DELETE removes it."""
    settings.OMLWEB_PRELOAD_MINUTES = 30
    response = alice_api.post(f"{V2}/preload/conda", {"envName": "SeaBorn"}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["result"]["envName"] == "seaborn"
    preload = EnvironmentPreload.objects.get()
    assert preload.user == alice
    assert 29 * 60 < (preload.expires_at - timezone.now()).total_seconds() <= 30 * 60
    listed = alice_api.get(f"{V2}/preload/conda").json()["environments"]
    assert [row["envName"] for row in listed] == ["seaborn"]
    assert set(listed[0]) == {"envName", "created", "expires", "duration"}
    assert listed[0]["duration"].endswith("secs")
    assert_oml_error(alice_api.post(f"{V2}/preload/conda", {"envName": "seaborn"}, format="json"), 400)
    response = alice_api.post(f"{V2}/preload/conda", {"envName": "seaborn", "overwrite": True}, format="json")
    assert response.status_code == 201
    assert EnvironmentPreload.objects.count() == 1
    response = alice_api.delete(f"{V2}/preload/conda/seaborn")
    assert response.json() == {"result": "Preloaded environment 'seaborn' deleted successfully"}
    assert not EnvironmentPreload.objects.exists()
    assert_oml_error(alice_api.delete(f"{V2}/preload/conda/seaborn"), 400, 1000, "not found")


def test_preloads_are_per_user_and_expire(seaborn, alice_api, bob_api):
    """bob does not see alice's preload; an expired one is gone from the list and can be made again."""
    alice_api.post(f"{V2}/preload/conda", {"envName": "seaborn"}, format="json")
    assert bob_api.get(f"{V2}/preload/conda").json() == {"environments": []}
    EnvironmentPreload.objects.update(expires_at=timezone.now())
    assert alice_api.get(f"{V2}/preload/conda").json() == {"environments": []}
    assert alice_api.post(f"{V2}/preload/conda", {"envName": "seaborn"}, format="json").status_code == 201


def test_preload_refuses_what_cannot_run(seaborn, alice_api):
    """Unknown, building, default environment, bad body: 400s; v1 has no preload (404); nothing is stored."""
    assert_oml_error(alice_api.post(f"{V2}/preload/conda", {"envName": "nope"}, format="json"), 400, 1003)
    Environment.objects.create(name="slow", python="/usr/bin/python3", status=Environment.Status.BUILDING)
    assert_oml_error(alice_api.post(f"{V2}/preload/conda", {"envName": "slow"}, format="json"), 400, 1006)
    assert_oml_error(alice_api.post(f"{V2}/preload/conda", {"envName": "default"}, format="json"), 400)
    assert_oml_error(alice_api.post(f"{V2}/preload/conda", {"envName": 7}, format="json"), 400)
    assert_oml_error(alice_api.post(f"{V2}/preload/conda", [1], format="json"), 400)
    assert_oml_error(alice_api.post("/oml/api/py-scripts/v1/preload/conda", {"envName": "seaborn"}, format="json"), 404)
    assert not EnvironmentPreload.objects.exists()
    assert alice_api.post(f"{V2}/preload/conda", {"envName": "seaborn"}, format="json").status_code == 201


# v1's lifecycle


def test_v1_is_deprecated_with_headers_and_v2_is_not(alice, alice_api):
    """v1's metadata says DEPRECATED@2026-03-31 and every v1 answer carries Deprecation, Sunset, Link."""
    body = alice_api.get("/oml/api/py-scripts").json()
    assert [(item["version"], item["lifecycle"]) for item in body["items"]] == [
        ("v1", "DEPRECATED@2026-03-31"),
        ("v2", "ACTIVE"),
    ]
    for path in ("/oml/api/py-scripts/v1", "/oml/api/py-scripts/v1/scripts", "/oml/api/py-scripts/v1/nope"):
        response = alice_api.get(path)
        assert response["Deprecation"] == "@1774915200"
        assert response["Sunset"] == "Tue, 31 Mar 2026 00:00:00 GMT"
        assert response["Link"] == '<http://testserver/oml/api/py-scripts/v2>; rel="successor-version"'
    response = alice_api.get(f"{V2}/scripts")
    assert response.status_code == 200
    assert "Deprecation" not in response
    assert "Sunset" not in response


def test_the_sunset_date_is_a_setting(alice_api, settings):
    """Another date moves both; an empty one makes v1 ACTIVE again, without the headers."""
    import datetime

    settings.OMLWEB_V1_SUNSET_DATE = datetime.date(2027, 1, 15)
    response = alice_api.get("/oml/api/py-scripts/v1")
    assert response.json()["lifecycle"] == "DEPRECATED@2027-01-15"
    assert response["Sunset"] == "Fri, 15 Jan 2027 00:00:00 GMT"
    settings.OMLWEB_V1_SUNSET_DATE = None
    response = alice_api.get("/oml/api/py-scripts/v1")
    assert response.json()["lifecycle"] == "ACTIVE"
    assert "Deprecation" not in response


# Paths: the tenant alias, double and trailing slashes, HEAD


def test_the_tenant_qualified_path_is_an_alias(alice, alice_api):
    """/oml/tenants/{t}/databases/{db}/api/... runs the same endpoint; its errors are OML bodies."""
    make_script(alice, "f", SOURCE)
    base = "/oml/tenants/OMLTENANT/databases/MYDB/api/py-scripts/v1"
    response = alice_api.post(f"{base}/do-eval/f", {"parameters": '{"x": 5}'}, format="json")
    assert response.status_code == 200, response.content
    assert response.json() == {"result": 5}
    assert [row["NAME"] for row in alice_api.get(f"{base}/scripts").json()["result"]] == ["f"]
    assert_oml_error(alice_api.post(f"{base}/do-eval/missing", {}, format="json"), 404, 1020)


def raw_path(path: str) -> dict:
    """The path exactly as a server receives it: the test client would read //host/... as a host."""
    return {"PATH_INFO": path}


def test_double_and_trailing_slashes_reach_the_api(alice):
    """A base URL with a trailing slash (//omlusers/..., //oml/...) works; unknown paths are OML 404s."""
    alice.set_password("pw-12345-abc")
    alice.save()
    api_client = APIClient()
    response = api_client.post(
        "/",
        {"grant_type": "password", "username": "alice", "password": "pw-12345-abc"},
        format="json",
        **raw_path("//omlusers/api/oauth2/v1/token"),
    )
    assert response.status_code == 200, response.content
    token = response.json()["accessToken"]
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert api_client.get("/", **raw_path("//oml/api/py-scripts/v2/scripts")).status_code == 200
    assert api_client.get("/", **raw_path("/oml/api/py-scripts/v2//scripts/")).status_code == 200
    assert_oml_error(api_client.get("/", **raw_path("//oml/api/py-scripts/v2/nothing-here")), 404, 1020)
    assert_oml_error(api_client.get("/", **raw_path("//oml")), 404, 1020)


def test_revoking_a_dataset_grant_needs_a_user(alice, bob, alice_api):
    """DELETE .../grants without a user is a JSON 405 (it was a 500); with one, the grant goes."""
    make_dataset(alice, "IRIS", iris_like())
    assert alice_api.post(f"{V2}/datasets/IRIS/grants", {"user": "bob"}, format="json").status_code == 200
    assert_oml_error(alice_api.delete(f"{V2}/datasets/IRIS/grants"), 405)
    response = alice_api.delete(f"{V2}/datasets/IRIS/grants/bob")
    assert response.json() == {"result": "dataset revoked successfully"}


def test_head_answers_like_get_without_a_body(alice, alice_api):
    """HEAD on a GET endpoint: the GET's status and headers; on a POST-only one a JSON 405."""
    response = alice_api.head(f"{V2}/scripts")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/json")
    assert response.content == b""
    assert alice_api.head("/oml/api/py-scripts/v1")["Deprecation"] == "@1774915200"
    assert alice_api.head(f"{V2}/do-eval/f").status_code == 405
