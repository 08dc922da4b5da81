"""The script page as a workspace: the editor with a run panel beside it, the result below, presets.

Saving (Ctrl/Cmd+S) and running (Ctrl/Cmd+Enter) answer with fragments that htmx swaps into the page;
without JavaScript the same forms post as plain forms and land on the script or the run page.
Running goes through the run page's own view (`views.runs.run_script`), so the panel runs exactly
what the run page runs; this module only turns its answer into a fragment.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.http.response import HttpResponseRedirectBase
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import Resolver404, resolve, reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_POST

from scripts_app import results, roles
from scripts_app.errors import OmlError
from scripts_app.forms import RunForm
from scripts_app.models import ParameterPreset, Run, Script
from scripts_app.runner import ScriptSourceError
from scripts_app.services import environments as environment_services
from scripts_app.services import presets as preset_services
from scripts_app.services import scripts as script_services
from scripts_app.signature import entry_signature
from scripts_app.views import runs as run_views
from scripts_app.views.base import (
    HtmxHttpRequest,
    editable_script_or_404,
    require_writer,
    visible_run_or_404,
    visible_script_or_404,
)

# Rows of a returned table the panel shows; the run page has them all.
PANEL_ROWS = 20


def run_panel_form(request: HtmxHttpRequest, script: Script, *, preset: ParameterPreset | None = None) -> RunForm:
    """The run form for the script's current version, as the run page builds it (unbound)."""
    version = script.current_version
    try:
        signature = entry_signature(version.source, version.entry_function) if version else None
    except ScriptSourceError:
        signature = None
    environments = environment_services.environment_names_ready()
    if script.env_name and script.env_name not in environments:
        environments.append(script.env_name)
    form = RunForm(signature=signature, environments=environments, datasets=run_views.dataset_choices(request.user))
    if script.env_name:
        form.fields["env_name"].initial = script.env_name
    if preset is not None:
        form.set_parameters(dict(preset.parameters))
    return form


def _signature_key(source: str, function: str):
    try:
        signature = entry_signature(source, function)
    except ScriptSourceError:
        return None
    return ([(p.name, repr(p)) for p in signature.parameters], signature.takes_more)


@require_POST
@login_required
def script_save(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    """Save the editor's source as a new version, with an optional message (Ctrl/Cmd+S)."""
    script = editable_script_or_404(request, pk)
    before = script.current_version
    # script_create adds the first version in its own transaction and versions are never deleted.
    assert before is not None, "a script always has a current version"
    source = request.POST.get("source", "").replace("\r\n", "\n")
    message = request.POST.get("message", "")
    error, line = None, None
    try:
        script_services.script_update(script=script, by=request.user, source=source, message=message)
    except OmlError as exc:
        error, line = exc.message, getattr(exc, "line", None)
    current = script.current_version
    assert current is not None, "a script always has a current version"
    created = error is None and current.pk != before.pk
    if not request.htmx:
        if error:
            messages.error(request, error)
        elif created:
            messages.success(request, f"Saved as version {current.number}.")
        else:
            messages.info(request, "The source did not change, so there is no new version.")
        return redirect("web:script_detail", script.pk)
    context = {"script": script, "error": error, "error_line": line, "created": created}
    if created and _signature_key(before.source, before.entry_function) != _signature_key(
        current.source, current.entry_function
    ):
        # The function's parameters changed: the run panel's fields follow (swapped out of band).
        context["form"] = run_panel_form(request, script)
    return render(request, "scripts/_save_status.html", context)


@require_POST
@login_required
def script_run_here(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    """Run from the script page's panel: the run page's view runs it; the answer becomes a fragment."""
    response = run_views.run_script(request, pk)
    if isinstance(response, HttpResponseRedirectBase) and response.status_code in (301, 302):
        try:
            match = resolve(response.url)
        except Resolver404:
            match = None
        if match is None or match.url_name != "run_detail" or not request.htmx:
            return response
        run = visible_run_or_404(request, match.kwargs["pk"])
        return render(request, "scripts/_run_result.html", _result_context(run))
    if request.htmx and response.status_code == 422:
        # The run form with the server's errors: its fields replace the panel's.
        response.status_code = 200
        response["HX-Retarget"] = "#run-fields"
        response["HX-Reselect"] = "#run-fields"
        response["HX-Reswap"] = "outerHTML"
    return response


@require_GET
@login_required
def script_run_result(request: HtmxHttpRequest, pk: UUID, run_pk: UUID) -> HttpResponse:
    """The panel's result of one run, polled while it is queued or running."""
    run = visible_run_or_404(request, run_pk)
    response = render(request, "scripts/_run_result.html", _result_context(run))
    if run.is_finished and request.htmx:
        response.status_code = 286  # htmx: stop polling
    return response


def _result_context(run: Run) -> dict:
    table = results.run_table(run)
    context = {"run": run, "images": list(run.images.all()) if run.is_finished else [], "table": table}
    if table is not None:
        numeric = table.numeric
        context["columns"] = list(zip(table.columns, numeric, strict=True))
        context["rows"] = [list(zip(row, numeric, strict=True)) for row in table.rows[:PANEL_ROWS]]
        context["more_rows"] = max(0, len(table.rows) - PANEL_ROWS)
    elif run.status == Run.Status.SUCCEEDED:
        text = results.as_pretty_json(run.result)
        context["result_json"] = text if len(text) <= 20_000 else text[:20_000] + "\n…"
    return context


# Presets


@require_POST
@login_required
def preset_save(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    """Save the run form's parameters as a named preset ("Save as preset")."""
    require_writer(request)
    script = visible_script_or_404(request, pk)
    if not roles.can_run_script(request.user, script):
        raise PermissionDenied("You may not run this script.")
    # The run page posts the version it runs (its signature may differ from the current one's).
    back_to_run = request.POST.get("back") == "run"
    if back_to_run:
        version = run_views.chosen_version(request, script)
        try:
            signature = entry_signature(version.source, version.entry_function)
        except ScriptSourceError:
            signature = None
    else:
        signature = run_panel_form(request, script).signature
    form = RunForm(
        request.POST,
        signature=signature,
        environments=[request.POST.get("env_name") or "default"],
        datasets=[(request.POST.get("dataset", ""), "")],
    )
    name = request.POST.get("preset_name", "")
    problem = None
    if form.is_valid():
        parameters = {key: value for key, value in form.parameters().items() if not key.startswith("oml_")}
        try:
            preset, created = preset_services.preset_save(
                script=script, user=request.user, name=name, parameters=parameters
            )
        except OmlError as error:
            problem = error.message
    else:
        problem = "The parameters are not valid: " + "; ".join(
            f"{form.fields[field].label if field in form.fields else field}: {' '.join(map(str, errors))}"
            for field, errors in form.errors.items()
        )
    if not request.htmx:
        if problem:
            messages.error(request, problem)
        else:
            messages.success(request, f"Preset {preset.name} {'saved' if created else 'replaced'}.")
        if back_to_run:
            return _back_to_run_form(request, script, None if problem else preset.name)
        return redirect("web:script_detail", script.pk)
    context: dict[str, Any] = {
        "script": script,
        "problem": problem,
        "presets": _presets(request, script),
        "back_to_run": back_to_run,
        "version": run_views.chosen_version(request, script) if back_to_run else None,
    }
    if not problem:
        context["saved"] = preset
        context["created"] = created
    return render(request, "scripts/_presets.html", context)


@require_POST
@login_required
def preset_delete(request: HtmxHttpRequest, pk: UUID, preset_pk: UUID) -> HttpResponse:
    require_writer(request)
    script = visible_script_or_404(request, pk)
    preset = get_object_or_404(ParameterPreset, pk=preset_pk, script=script, owner=request.user)
    try:
        preset_services.preset_delete(script=script, user=request.user, name=preset.name)
    except OmlError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, f"Preset {preset.name} deleted.")
    if request.POST.get("back") == "run":
        return _back_to_run_form(request, script, None)
    return redirect("web:script_detail", script.pk)


def _back_to_run_form(request: HtmxHttpRequest, script: Script, preset: str | None) -> HttpResponse:
    """To the run page the preset form was posted from, at its version, filled from the preset if any."""
    query: dict[str, str | int] = {"version": run_views.chosen_version(request, script).number}
    if preset:
        query["preset"] = preset
    return redirect(f"{reverse('web:run_script', args=[script.pk])}?{urlencode(query)}")


def _presets(request: HtmxHttpRequest, script: Script) -> list[dict]:
    return run_views.presets_context(request, script)


def workspace_context(request: HtmxHttpRequest, script: Script) -> dict:
    """What the script page adds for its editor and run panel."""
    user = request.user
    may_run = roles.can_run_script(user, script)
    presets = _presets(request, script) if may_run else []
    chosen = request.GET.get("preset")
    preset = next((row["preset"] for row in presets if row["preset"].name == chosen), None)
    return {
        "run_form": run_panel_form(request, script, preset=preset) if may_run and script.current_version else None,
        "presets": presets,
        "chosen_preset": preset,
        "versions": list(script.versions.select_related("created_by").defer("source")[:5]),
    }
