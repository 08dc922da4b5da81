"""The environment pages: admins define, watch, rebuild and delete environments in the browser."""

from __future__ import annotations

import pytest
from django.test import Client

from scripts_app.models import Environment, Run
from tests.factories import make_script


@pytest.fixture
def admin_client(admin_user) -> Client:
    client = Client()
    client.force_login(admin_user)
    return client


def test_an_admin_defines_an_environment_and_follows_its_build(
    admin_client, queued_builds, build_queued, django_capture_on_commit_callbacks
):
    """The form queues a build and leads to the page, whose log part htmx polls until the build ends."""
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            "/environments/",
            {"name": "probe", "description": "Test", "packages": "omlweb-probe", "python": first_python(admin_client)},
        )
    assert response.status_code == 302
    assert response["Location"] == "/environments/probe/"
    assert len(queued_builds) == 1
    page = admin_client.get("/environments/probe/")
    assert page.status_code == 200
    assert b'hx-trigger="every 1s"' in page.content
    assert b"Waiting for a worker" in page.content

    polling = admin_client.get("/environments/probe/?part=build", HTTP_HX_REQUEST="true")
    assert polling.status_code == 200
    assert b"<html" not in polling.content

    build_queued()
    done = admin_client.get("/environments/probe/?part=build", HTTP_HX_REQUEST="true")
    assert done.status_code == 286  # htmx stops polling
    assert b"Built probe" in done.content
    assert b"omlweb-probe==1.0" in done.content
    assert b"hx-trigger" not in done.content
    listing = admin_client.get("/environments/")
    assert b"probe" in listing.content
    assert b"Ready" in listing.content


def first_python(client) -> str:
    form = client.get("/environments/").context["form"]
    return form.fields["python"].choices[0][0]


def test_a_bad_definition_shows_the_reason(admin_client):
    """A package line that is not a requirement re-shows the form with the reason, nothing is created."""
    response = admin_client.post(
        "/environments/", {"name": "x", "packages": "--index-url http://x", "python": first_python(admin_client)}
    )
    assert response.status_code == 422
    assert b"options are not allowed" in response.content
    assert not Environment.objects.exists()


def test_rebuild_and_delete_from_the_page(admin_client, build_queued, django_capture_on_commit_callbacks, alice):
    """Rebuild starts a new generation; delete is refused with a message while a run uses the environment."""
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post("/environments/", {"name": "probe", "packages": "", "python": first_python(admin_client)})
    build_queued()
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post("/environments/probe/rebuild")
    assert Environment.objects.get().generation == 2
    build_queued()
    environment = Environment.objects.get()
    script = make_script(alice, "f", "def f():\n    return 1\n")
    Run.objects.create(
        script_version=script.current_version,
        script_name="f",
        script_owner="alice",
        user=alice,
        env_name="probe",
        environment=environment,
    )
    refused = admin_client.post("/environments/probe/delete", follow=True)
    assert b"in use" in refused.content
    assert Environment.objects.exists()
    Run.objects.update(status=Run.Status.SUCCEEDED)
    admin_client.post("/environments/probe/delete")
    assert not Environment.objects.exists()


def test_the_pages_are_for_admins_only(alice, settings):
    """Another user gets 403; an anonymous one is sent to sign in."""
    settings.LOGIN_URL = "/admin/login/"
    client = Client()
    assert client.get("/environments/")["Location"].startswith("/admin/login/")
    client.force_login(alice)
    assert client.get("/environments/").status_code == 403
    assert client.post("/environments/", {"name": "x"}).status_code == 403


def test_a_script_runs_in_an_environment_picked_on_its_run_page(create_env, alice):
    """The run form offers default and every READY environment; the run happens in the one picked."""
    from django.urls import reverse

    script = make_script(alice, "probe", "import omlweb_probe\ndef probe():\n    return omlweb_probe.ANSWER\n")
    client = Client()
    client.force_login(alice)
    url = reverse("web:run_script", args=[script.pk])
    assert [name for name, _ in client.get(url).context["form"].fields["env_name"].choices] == [
        "default",
        "probe",
    ]

    data = {"params_mode": "fields", "env_name": "probe", "service": "LOW", "execution": "sync"}
    response = client.post(url, data)

    assert response.status_code == 302, response.context["form"].errors
    run = Run.objects.get()
    assert (run.status, run.result, run.env_name) == (Run.Status.SUCCEEDED, 42, "probe")
    page = client.get(response["Location"])
    assert b"probe" in page.content


@pytest.fixture
def create_env(admin_client, build_queued, django_capture_on_commit_callbacks):
    """A READY environment "probe" with the test's package, and one still BUILDING ("later")."""
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post(
            "/environments/", {"name": "probe", "packages": "omlweb-probe", "python": first_python(admin_client)}
        )
    build_queued()
    with django_capture_on_commit_callbacks(execute=True):
        admin_client.post("/environments/", {"name": "later", "packages": "", "python": first_python(admin_client)})
    return Environment.objects.get(name="probe")
