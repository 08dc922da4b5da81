"""The script page's save, run-here, result and preset endpoints against crafted requests (issue #13)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from scripts_app.models import ParameterPreset, Run
from scripts_app.services.presets import preset_save
from tests.factories import make_script
from tests.web.conftest import logged_in

SOURCE = "def add(a: int = 1, b: int = 2):\n    return a + b\n"
HTMX = {"HX-Request": "true"}


@pytest.fixture
def script(alice):
    return make_script(alice, "add", SOURCE)


def test_save_without_scripts_lands_on_the_script_page_with_a_message(client, alice, script):
    response = logged_in(client, alice).post(
        reverse("web:script_save", args=[script.pk]),
        {"source": SOURCE.replace("b: int = 2", "b: int = 3"), "message": "b is 3"},
        follow=True,
    )
    assert b"Saved as version 2." in response.content
    script.refresh_from_db()
    assert (script.current_version.number, script.current_version.message) == (2, "b is 3")
    assert b"b is 3" in response.content  # the latest versions list shows the message


def test_only_an_editor_saves(client, alice, bob, auditor, script):
    for user in (bob, auditor):
        response = logged_in(client, user).post(
            reverse("web:script_save", args=[script.pk]), {"source": "def add():\n    return 0\n"}, headers=HTMX
        )
        assert response.status_code in (403, 404)
    assert script.versions.count() == 1


def test_a_message_too_long_is_refused_and_nothing_is_saved(client, alice, script):
    response = logged_in(client, alice).post(
        reverse("web:script_save", args=[script.pk]),
        {"source": SOURCE.replace("a + b", "a - b"), "message": "x" * 501},
        headers=HTMX,
    )
    assert b"Not saved" in response.content
    assert script.versions.count() == 1


def test_run_here_refuses_what_the_run_page_refuses(client, alice, bob, script):
    response = logged_in(client, bob).post(reverse("web:script_run_here", args=[script.pk]), {}, headers=HTMX)
    assert response.status_code == 404
    assert not Run.objects.exists()


def test_a_refused_run_answers_with_the_fields_to_swap_in(client, alice, script):
    response = logged_in(client, alice).post(
        reverse("web:script_run_here", args=[script.pk]),
        {
            "params_mode": "fields",
            "p_a": "1.5",
            "kind": "do-eval",
            "env_name": "default",
            "service": "LOW",
            "execution": "sync",
        },
        headers=HTMX,
    )
    assert response.status_code == 200
    assert response["HX-Retarget"] == "#run-fields"
    assert b'id="run-fields"' in response.content
    assert not Run.objects.exists()


def test_someone_elses_run_result_is_not_found(client, alice, bob, script):
    run = Run.objects.create(
        script_version=script.current_version, script_name="add", script_owner="alice", user=alice, parameters={}
    )
    response = logged_in(client, bob).get(reverse("web:script_run_result", args=[script.pk, run.pk]), headers=HTMX)
    assert response.status_code == 404


def test_presets_are_private_to_their_owner(client, alice, bob, script):
    preset, _ = preset_save(script=script, user=alice, name="mine", parameters={"a": 5})
    # bob may not run alice's private script: no preset for him, and hers cannot be deleted by him.
    response = logged_in(client, bob).post(
        reverse("web:preset_save", args=[script.pk]), {"preset_name": "x", "params_mode": "fields"}, headers=HTMX
    )
    assert response.status_code == 404
    response = client.post(reverse("web:preset_delete", args=[script.pk, preset.pk]))
    assert response.status_code == 404
    assert ParameterPreset.objects.count() == 1
    # alice sees hers on the script page, with a Use link that fills the form.
    page = logged_in(client, alice).get(reverse("web:script_detail", args=[script.pk]), {"preset": "mine"})
    assert b'value="5"' in page.content
    assert b"Use preset mine" in page.content


def test_a_preset_name_with_markup_is_refused_and_never_echoed_raw(client, alice, script):
    response = logged_in(client, alice).post(
        reverse("web:preset_save", args=[script.pk]),
        {
            "preset_name": "<script>alert(1)</script>",
            "params_mode": "fields",
            "p_a": "1",
            "p_b": "2",
            "kind": "do-eval",
            "env_name": "default",
            "service": "LOW",
            "execution": "sync",
        },
        headers=HTMX,
    )
    assert b"Preset not saved" in response.content
    assert b"<script>alert(1)" not in response.content
    assert not ParameterPreset.objects.exists()
