"""Hostile input through the pages: a source too deep for the parser and values no run can take are form
errors, never a 500, and nothing is stored."""

from __future__ import annotations

import pytest
from django.urls import reverse

from scripts_app.models import Run, Script, ScriptVersion
from tests.factories import make_script
from tests.web.conftest import logged_in

DEEP = {
    "sum-1M": "x = " + "+".join(["1"] * 1_000_000) + "\ndef f():\n    return x\n",
    "unary-100k": "def f():\n    return " + "-" * 100_000 + "1\n",
}
# An annotation 2500 deep: the parser and compiler take it, ast.unparse (for the form's hint) cannot.
DEEP_ANNOTATION = "def f(x: " + "+".join(["1"] * 2500) + " = 1):\n    return x\n"
TYPED = "def report(n: int = 1, scales: list[float] = [1.0]):\n    return n\n"


def run_form(**fields):
    data = {"params_mode": "fields", "env_name": "default", "service": "LOW", "execution": "sync"}
    data.update(fields)
    return data


@pytest.mark.parametrize("source", DEEP.values(), ids=DEEP.keys())
def test_a_source_too_deep_is_a_form_error_on_create_edit_and_check(client, analyst, source):
    """New script, edit and the live check: the source field says why, with a 422; nothing is stored."""
    client = logged_in(client, analyst)
    response = client.post(reverse("web:script_create"), {"name": "deep", "source": source})
    assert response.status_code == 422
    assert "nested too deeply" in " ".join(response.context["form"].errors["source"])
    assert not Script.objects.exists()
    script = make_script(analyst, "deep", "def f():\n    return 1\n")
    response = client.post(reverse("web:script_edit", args=[script.pk]), {"name": "deep", "source": source})
    assert response.status_code == 422
    assert "nested too deeply" in " ".join(response.context["form"].errors["source"])
    assert ScriptVersion.objects.count() == 1
    response = client.post(reverse("web:script_check"), {"name": "deep", "source": source})
    assert response.status_code == 200
    assert b"nested too deeply" in response.content


def test_a_signature_too_deep_to_read_leaves_the_script_usable(client, analyst):
    """A parameter annotation nested 2500 deep: the source saves and runs; only its signature cannot be read."""
    client = logged_in(client, analyst)
    response = client.post(reverse("web:script_create"), {"name": "f", "source": DEEP_ANNOTATION})
    assert response.status_code == 302
    script = Script.objects.get()
    response = client.post(reverse("web:script_check"), {"name": "f", "source": DEEP_ANNOTATION})
    assert b"nested too deeply" in response.content
    url = reverse("web:run_script", args=[script.pk])
    assert client.get(url).status_code == 200
    assert client.post(url, run_form(params_mode="json", raw_json="{}")).status_code == 302
    run = Run.objects.get()
    assert run.status == Run.Status.SUCCEEDED, run.error_message
    assert run.result == 1


def test_the_run_page_of_a_stored_source_too_deep_still_opens_and_runs(client, analyst):
    """A stored version no parser can read: the form falls back to raw JSON, and the run is a script error."""
    script = make_script(analyst, "deep", "def deep():\n    return 1\n")
    version = ScriptVersion.objects.create(
        script=script, number=2, source=DEEP["unary-100k"].replace("f()", "deep()"), entry_function="deep"
    )
    script.current_version = version
    script.save()
    client = logged_in(client, analyst)
    url = reverse("web:run_script", args=[script.pk])
    assert client.get(url).status_code == 200
    response = client.post(url, run_form(params_mode="json", raw_json="{}"))
    assert response.status_code == 302
    run = Run.objects.get()
    assert run.status == Run.Status.FAILED
    assert run.error_code == 1030


@pytest.mark.parametrize(
    "raw", ['{"n": NaN}', '{"n": Infinity}', '{"n": -1e999}', '{"n": "a\\u0000b"}', '{"n": "\\ud800"}']
)
def test_raw_json_no_run_can_take_is_a_form_error(client, analyst, raw):
    """NaN, infinities, NUL or a lone surrogate in the raw JSON: a form error, and no Run."""
    script = make_script(analyst, "report", TYPED)
    response = logged_in(client, analyst).post(
        reverse("web:run_script", args=[script.pk]), run_form(params_mode="json", raw_json=raw)
    )
    assert response.status_code == 422
    assert "Not a value a run can take" in " ".join(response.context["form"].errors["raw_json"])
    assert not Run.objects.exists()


@pytest.mark.parametrize("scales", ["nan, 1", "[1, Infinity]", "1e999", "inf"])
def test_a_float_list_field_refuses_values_that_are_not_finite(client, analyst, scales):
    """A list of floats given NaN or an infinity, in either form: a field error, and no Run."""
    script = make_script(analyst, "report", TYPED)
    response = logged_in(client, analyst).post(
        reverse("web:run_script", args=[script.pk]), run_form(p_n="1", p_scales=scales)
    )
    assert response.status_code == 422
    assert "p_scales" in response.context["form"].errors
    assert not Run.objects.exists()


def test_a_nul_in_a_list_field_is_a_field_error(client, analyst):
    """A NUL typed into a list field is refused there, not stored (PostgreSQL's jsonb cannot hold it)."""
    script = make_script(analyst, "tags", "def tags(names: list[str] = []):\n    return names\n")
    response = logged_in(client, analyst).post(
        reverse("web:run_script", args=[script.pk]), run_form(p_names="a\x00b, c")
    )
    assert response.status_code == 422
    assert "Null characters" in " ".join(response.context["form"].errors["p_names"])
    assert not Run.objects.exists()
