"""Package lines that name their own source (a URL, a path, a VCS link, an option) are refused,
unless the operator allows direct references; then `name @ URL` builds from that URL."""

from __future__ import annotations

import pytest

from scripts_app.models import Environment
from tests.environments.test_environment_pages import first_python
from tests.environments.test_environments_api import ENVS, PROBE, do_eval
from tests.factories import make_script


@pytest.fixture
def create(admin_api, django_capture_on_commit_callbacks):
    def _create(**body):
        with django_capture_on_commit_callbacks(execute=True):
            return admin_api.post(ENVS, body, format="json")

    return _create


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("x @ file:///etc", "direct reference"),
        ("omlweb-probe @ https://example.com/omlweb_probe-1.0-py3-none-any.whl", "direct reference"),
        ("probe @ git+https://example.com/probe.git", "direct reference"),
        ("probe @ /tmp/probe.whl", "direct reference"),
        ("git+https://example.com/probe.git", "path or URL"),
        ("https://example.com/omlweb_probe-1.0-py3-none-any.whl", "path or URL"),
        ("file:///etc/passwd", "path or URL"),
        ("./local/probe", "path or URL"),
        ("/tmp/probe.whl", "path or URL"),
        ("-e git+https://example.com/probe.git#egg=probe", "options are not allowed"),
        ("--index-url https://evil.example.com/simple", "options are not allowed"),
        ("--extra-index-url=https://evil.example.com/simple", "options are not allowed"),
        ("omlweb-probe --index-url https://evil.example.com/simple", "not a requirement"),
        ("omlweb-probe==1.0 --hash=sha256:00", "not a requirement"),
    ],
)
def test_a_package_line_with_its_own_source_is_refused(create, admin_api, line, words):
    """Creating or changing an environment with such a line is a 400 naming the line; nothing is built."""
    response = create(name="probe", packages=f"numpy\n{line}")
    assert response.status_code == 400
    body = response.json()
    assert body["errorCode"] == 1000
    assert words in body["errorMessage"]
    assert f"line 2 ({line!r})" in body["errorMessage"]
    assert not Environment.objects.exists()

    assert create(name="probe", packages="omlweb-probe").status_code == 201
    response = admin_api.put(f"{ENVS}/probe", {"packages": line}, format="json")
    assert response.status_code == 400
    assert words in response.json()["errorMessage"]
    assert Environment.objects.get().packages == "omlweb-probe"


def test_the_operator_may_allow_direct_references(create, build_queued, alice, alice_api, settings, wheelhouse):
    """With OMLWEB_ENV_ALLOW_DIRECT_REFERENCES, `name @ file:///...whl` builds from that wheel."""
    settings.OMLWEB_ENV_ALLOW_DIRECT_REFERENCES = True
    settings.OMLWEB_ENV_FIND_LINKS = []
    wheel = next(wheelhouse.glob("*.whl"))
    response = create(name="probe", packages=f"omlweb-probe @ {wheel.as_uri()}")
    assert response.status_code == 201, response.json()
    build_queued()
    environment = Environment.objects.get()
    assert environment.status == Environment.Status.READY, environment.build_log
    make_script(alice, "probe", PROBE)
    assert do_eval(alice_api, "probe", {"envName": "probe"}).json() == {"result": 42}
    # Options stay the operator's alone, even then.
    assert create(name="other", packages="--index-url https://evil.example.com/simple").status_code == 400


def test_the_page_shows_which_line_names_a_source(admin_user, client):
    """On the environment page the same refusal re-shows the form naming the line; nothing is created."""
    client.force_login(admin_user)
    data = {"name": "x", "packages": "numpy\nx @ file:///etc", "python": first_python(client)}
    response = client.post("/environments/", data)
    assert response.status_code == 422
    assert "line 2" in response.content.decode()
    assert "direct reference" in response.content.decode()
    assert not Environment.objects.exists()
