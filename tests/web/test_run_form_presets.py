"""Presets on the full run form without scripts: ?preset= fills the fields on the server, and saving or
deleting one from the run page comes back to the run page at its version (issue #13)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from django.urls import reverse

from scripts_app.models import ParameterPreset
from scripts_app.services.presets import preset_save
from scripts_app.services.scripts import script_update
from tests.factories import make_script
from tests.web.conftest import logged_in

SOURCE = "def add(a: int = 1, b: int = 2):\n    return a + b\n"
FORM = {"params_mode": "fields", "kind": "do-eval", "env_name": "default", "service": "LOW", "execution": "sync"}


def test_the_run_form_lists_only_the_callers_presets_and_fills_from_one(client, alice, bob):
    script = make_script(alice, "add", SOURCE)
    preset_save(script=script, user=alice, name="five", parameters={"a": 5})
    url = reverse("web:run_script", args=[script.pk])
    page = logged_in(client, alice).get(url, {"preset": "five"})
    assert page.status_code == 200
    assert page.context["form"]["p_a"].value() == "5"
    assert b'data-parameters="{&quot;a&quot;: 5}"' in page.content
    assert b"Use preset five" in page.content
    # Someone else's preset name fills nothing.
    other = logged_in(client, bob).get(url.replace(str(script.pk), str(make_script(bob, "add", SOURCE).pk)))
    assert b"five" not in other.content


def test_saving_and_deleting_a_preset_without_scripts_returns_to_the_run_page_at_its_version(client, alice):
    script = make_script(alice, "add", SOURCE)
    script_update(script=script, by=alice, source=SOURCE.replace("b: int = 2", "b: int = 2, c: int = 3"))
    client = logged_in(client, alice)
    # Version 1 has no `c`: the preset is read against the version the form runs.
    response = client.post(
        reverse("web:preset_save", args=[script.pk]),
        {**FORM, "p_a": "7", "p_b": "8", "version": "1", "back": "run", "preset_name": "old"},
    )
    assert response.status_code == 302
    target = urlsplit(response["Location"])
    assert target.path == reverse("web:run_script", args=[script.pk])
    assert parse_qs(target.query) == {"version": ["1"], "preset": ["old"]}
    assert ParameterPreset.objects.get().parameters == {"a": 7, "b": 8}
    page = client.get(response["Location"])
    assert page.context["form"]["p_a"].value() == "7"

    preset = ParameterPreset.objects.get()
    response = client.post(
        reverse("web:preset_delete", args=[script.pk, preset.pk]), {"back": "run", "version": "1"}, follow=True
    )
    assert response.redirect_chain[-1][0] == reverse("web:run_script", args=[script.pk]) + "?version=1"
    assert b"Preset old deleted." in response.content
    assert not ParameterPreset.objects.exists()
