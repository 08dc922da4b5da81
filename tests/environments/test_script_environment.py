"""A script remembers its own environment: runs that name none go there, from the API and the pages."""

from __future__ import annotations

from django.urls import reverse

from scripts_app.models import Environment, Run, Script
from tests.factories import make_script
from tests.web.conftest import logged_in

ENVS = "/oml/api/py-scripts/v2/envs"
PROBE = "def probe():\n    import omlweb_probe\n    return omlweb_probe.ANSWER\n"


def define_probe_environment(admin_api, django_capture_on_commit_callbacks, build_queued) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        admin_api.post(ENVS, {"name": "probe", "packages": "omlweb-probe==1.0"}, format="json")
    build_queued()
    assert Environment.objects.get(name="probe").status == Environment.Status.READY


def test_a_do_eval_without_env_name_runs_in_the_scripts_environment(
    admin_api, alice, alice_api, build_queued, django_capture_on_commit_callbacks
):
    """envName absent: the script's environment; envName "default" still picks the default one."""
    define_probe_environment(admin_api, django_capture_on_commit_callbacks, build_queued)
    make_script(alice, "probe", PROBE, env_name="probe")
    response = alice_api.post("/oml/api/py-scripts/v1/do-eval/probe", {}, format="json")
    assert response.json() == {"result": 42}
    assert Run.objects.get().env_name == "probe"
    default = alice_api.post("/oml/api/py-scripts/v1/do-eval/probe", {"envName": "default"}, format="json")
    assert "No module named 'omlweb_probe'" in default.json()["errorMessage"]


def test_a_scripts_environment_that_is_not_built_yet_is_a_clear_error(alice, alice_api, admin_user):
    """Its runs are refused with the environment's own message, not a failed import."""
    from scripts_app.services.environments import environment_create

    environment_create(by=admin_user, name="later", packages="omlweb-probe==1.0")
    make_script(alice, "probe", PROBE, env_name="later")
    response = alice_api.post("/oml/api/py-scripts/v1/do-eval/probe", {}, format="json")
    assert response.status_code == 400
    assert "still being built" in response.json()["errorMessage"]
    assert not Run.objects.exists()


def test_the_pages_set_a_scripts_environment_and_the_run_form_starts_there(
    client, alice, admin_api, build_queued, django_capture_on_commit_callbacks
):
    """Edit sets it; the script page shows it; the run form picks it; running from the form uses it."""
    define_probe_environment(admin_api, django_capture_on_commit_callbacks, build_queued)
    script = make_script(alice, "probe", PROBE)
    client = logged_in(client, alice)
    response = client.post(
        reverse("web:script_edit", args=[script.pk]), {"name": "probe", "source": PROBE, "env_name": "probe"}
    )
    assert response.status_code == 302
    assert Script.objects.get(pk=script.pk).env_name == "probe"
    # The script page names its environment in the line under its title (the workspace layout).
    assert "environment probe" in client.get(reverse("web:script_detail", args=[script.pk])).content.decode()
    form = client.get(reverse("web:run_script", args=[script.pk])).context["form"]
    assert form["env_name"].value() == "probe"
    bad = client.post(reverse("web:script_edit", args=[script.pk]), {"name": "probe", "source": PROBE, "env_name": "x"})
    assert bad.status_code == 422
    assert Script.objects.get(pk=script.pk).env_name == "probe"
