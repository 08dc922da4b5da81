"""Hostile and malformed requests always get the OML error body; responses carry the seed's headers."""

from __future__ import annotations

import pytest

from scripts_app.models import Run
from tests.factories import make_script

DO_EVAL = "/oml/api/py-scripts/v1/do-eval/f"


@pytest.fixture
def script(alice):
    return make_script(alice, "f", "def f(x=1):\n    return x\n")


def post_raw(api, body: bytes, content_type="application/json", **extra):
    return api.generic("POST", DO_EVAL, body, content_type=content_type, **extra)


def assert_oml_error(response, status: int, code: int | None = None, says: str = ""):
    assert response.status_code == status
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"errorMessage", "errorCode"}
    if code is not None:
        assert body["errorCode"] == code
    assert says in body["errorMessage"]


def test_malformed_json(script, alice_api):
    """Malformed JSON is a 400 that says so."""
    assert_oml_error(post_raw(alice_api, b'{"graphicsFlag": tru'), 400, 1001, "Malformed JSON")


def test_deeply_nested_json(script, alice_api):
    """JSON nested 5000 levels deep is a 400, not a 500."""
    assert_oml_error(post_raw(alice_api, b"[" * 5000 + b"]" * 5000), 400, 1001, "nested too deeply")


def test_deeply_nested_parameters_string(script, alice_api):
    """The same nesting hidden inside the parameters string is a 400 too."""
    body = '{"parameters": "' + "[" * 5000 + "]" * 5000 + '"}'
    assert_oml_error(post_raw(alice_api, body.encode()), 400, 1000, "parameters")


def test_non_utf8_body(script, alice_api):
    """A body that is not UTF-8 is a 400 that says so."""
    assert_oml_error(post_raw(alice_api, b'{"parameters": "\xff\xfe"}'), 400, 1001, "not UTF-8")


def test_body_over_the_limit_is_413(script, alice_api, settings):
    """A body over OMLWEB_MAX_BODY_BYTES is a JSON 413, not Django's HTML 400."""
    settings.OMLWEB_MAX_BODY_BYTES = 2048
    body = b'{"parameters": "' + b"x" * 5000 + b'"}'
    assert_oml_error(post_raw(alice_api, body), 413, 1002, "2048 bytes")
    assert not Run.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"parameters": "[1, 2]"}', "parameters"),
        (b'{"parameters": "{not json"}', "parameters"),
        (b'{"parameters": 5}', "parameters"),
        (b'{"graphicsFlag": "yes"}', "graphicsFlag"),
        (b'{"graphicsFlag": 1}', "graphicsFlag"),
        (b'{"service": "ULTRA"}', "service"),
        (b'{"envName": 7}', "envName"),
        (b'{"asyncFlag": "true"}', "asyncFlag"),
        (b'{"timeout": 3600}', "timeout"),
        (b'{"asyncFlag": true, "timeout": 60}', "timeout"),
        (b'{"asyncFlag": true, "timeout": 99999}', "timeout"),
        (b"[1, 2, 3]", "body"),
        (b'"just a string"', "body"),
    ],
)
def test_wrong_types_name_the_field(script, alice_api, body, field):
    """Wrong types and values are 400s whose message names the field; no run is recorded."""
    assert_oml_error(post_raw(alice_api, body), 400, 1000, field)
    assert not Run.objects.exists()


def test_parameters_naming_an_unknown_argument(script, alice_api):
    """A keyword the function does not take fails the run with the Python error, as a 400."""
    response = post_raw(alice_api, b'{"parameters": "{\\"nope\\": 1}"}')
    assert_oml_error(response, 400, 1030, "nope")


def test_empty_body_uses_defaults(script, alice_api):
    """An empty JSON object runs with the defaults."""
    assert post_raw(alice_api, b"{}").json() == {"result": 1}


def test_unknown_api_path_is_json_404(alice_api):
    """An unknown path under the API is a JSON 404."""
    assert_oml_error(alice_api.get("/oml/api/py-scripts/v1/nothing-here"), 404, 1020)


def test_wrong_method_is_json_405(script, alice_api):
    """A wrong method is a JSON 405."""
    assert_oml_error(alice_api.get(DO_EVAL), 405)


def test_security_headers(script, alice_api):
    """Answers carry the seed's Cache-Control, X-Frame-Options and nosniff headers."""
    response = post_raw(alice_api, b"{}")
    assert response["Cache-Control"] == "no-cache, no-store, private"
    assert response["X-Frame-Options"] == "SAMEORIGIN"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert "Strict-Transport-Security" not in response


def test_hsts_over_https(script, alice_api):
    """Over HTTPS the answer adds HSTS."""
    response = post_raw(alice_api, b"{}", secure=True)
    assert response["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"


def test_error_answers_carry_the_headers_too(alice_api):
    """Error answers carry the same headers."""
    response = alice_api.get("/oml/api/py-scripts/v1/nothing-here")
    assert response["Cache-Control"] == "no-cache, no-store, private"


def test_openapi_document(db):
    """The app serves an OpenAPI document naming the OML endpoints."""
    from rest_framework.test import APIClient

    response = APIClient().get("/oml/api/schema", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    text = response.content.decode()
    assert "/oml/api/py-scripts/{version}/do-eval/{name}" in text or "do-eval" in text
    assert "/omlusers/api/oauth2/v1/token" in text


def test_version_catalogue(alice_api):
    """GET /oml/api/py-scripts lists v1 and v2 with their links."""
    body = alice_api.get("/oml/api/py-scripts").json()
    assert [item["version"] for item in body["items"]] == ["v1", "v2"]
    assert alice_api.get("/oml/api/py-scripts/v2").json()["isLatest"] is True
