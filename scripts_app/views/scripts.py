"""Script pages: list and search, create and edit, versions and diffs, delete, share."""

from __future__ import annotations

from uuid import UUID

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from scripts_app import compare, roles
from scripts_app.forms import NEW_SCRIPT_TEMPLATE, GrantForm, ScriptForm
from scripts_app.models import Run, Script, ScriptVersion
from scripts_app.services import environments as environment_services
from scripts_app.services import scripts as script_services
from scripts_app.source_check import check_source
from scripts_app.views import workspace
from scripts_app.views.base import (
    HtmxHttpRequest,
    editable_script_or_404,
    paginate,
    require_writer,
    visible_script_or_404,
)

SCRIPTS_PER_PAGE = 25


@require_GET
@login_required
def script_list(request: HtmxHttpRequest) -> HttpResponse:
    query = request.GET.get("q", "").strip()
    owner = request.GET.get("owner", "").strip()
    scope = request.GET.get("scope", "")
    scripts = roles.scripts_visible_to(request.user, Script.objects.all())
    if query:
        scripts = scripts.filter(Q(name__icontains=query) | Q(description__icontains=query))
    if owner:
        scripts = scripts.filter(owner__username=owner)
    if scope == "mine":
        scripts = scripts.filter(owner=request.user)
    elif scope == "global":
        scripts = scripts.filter(is_global=True)
    scripts = (
        scripts.select_related("owner", "current_version")
        .defer("current_version__source")
        .order_by("name", "owner__username")
    )
    page = paginate(request, scripts, SCRIPTS_PER_PAGE)
    template = "scripts/list.html"
    if request.htmx and not request.htmx.boosted:
        template += "#results"
    return render(
        request,
        template,
        {
            "page": page,
            "query": query,
            "owner": owner,
            "scope": scope,
            "may_create": roles.can_create_scripts(request.user),
        },
    )


@require_http_methods(["GET", "POST"])
@login_required
def script_create(request: HtmxHttpRequest) -> HttpResponse:
    require_writer(request)
    may_make_global = roles.can_make_global(request.user)
    form = ScriptForm(
        request.POST or None,
        initial={"source": NEW_SCRIPT_TEMPLATE},
        may_make_global=may_make_global,
        environments=environment_services.environment_names(),
    )
    if request.method == "POST" and form.is_valid():
        script = form.submit(
            lambda: script_services.script_create(
                owner=request.user,
                name=form.cleaned_data["name"],
                source=form.cleaned_data["source"],
                description=form.cleaned_data["description"],
                is_global=form.cleaned_data.get("is_global", False),
                env_name=form.cleaned_data["env_name"],
                message=form.cleaned_data["message"],
            )
        )
        if script is not None:
            messages.success(request, f"Script {script.name} created (version 1).")
            return redirect("web:script_detail", script.pk)
    status = 422 if form.errors else 200
    return render(request, "scripts/form.html", {"form": form, "script": None}, status=status)


@require_GET
@login_required
def script_detail(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    script = visible_script_or_404(request, pk)
    user = request.user
    runs = roles.runs_visible_to(user, Run.objects.filter(script_version__script=script))
    recent_runs = runs.select_related("user", "script_version").only(
        "id", "status", "created_at", "user__username", "script_version__number", "mode"
    )[:10]
    may_share = roles.can_share_script(user, script)
    return render(
        request,
        "scripts/detail.html",
        {
            "script": script,
            "grants": script.grants.select_related("grantee").order_by("grantee__username") if may_share else [],
            "grant_form": GrantForm(),
            "recent_runs": recent_runs,
            "activity": script_activity(runs),
            "version_count": script.versions.count(),
            "may_edit": roles.can_edit_script(user, script),
            "may_run": roles.can_run_script(user, script),
            "may_share": may_share,
            "may_make_global": roles.can_make_global(user),
            **workspace.workspace_context(request, script),
        },
    )


# How many finished runs the script page's activity summary and duration chart look back over.
ACTIVITY_RUNS = 100
CHART_WIDTH, CHART_HEIGHT = 300, 48


def script_activity(runs) -> dict | None:
    """The script's last finished runs (those the user may see): success rate, median time, a duration
    chart as SVG points (oldest on the left), and who ran it most."""
    finished = list(
        runs.filter(status__in=Run.FINISHED, started_at__isnull=False, finished_at__isnull=False)
        .order_by("-created_at")
        .values_list("status", "started_at", "finished_at")[:ACTIVITY_RUNS]
    )
    if not finished:
        return None
    finished.reverse()
    seconds = [(end - start).total_seconds() for _, start, end in finished]
    longest = max(seconds) or 1.0
    step = CHART_WIDTH / max(len(seconds) - 1, 1)
    points = [
        {
            "x": round(index * step, 1),
            "y": round(CHART_HEIGHT - 4 - (value / longest) * (CHART_HEIGHT - 8), 1),
            "ok": status == Run.Status.SUCCEEDED,
            "seconds": value,
        }
        for index, ((status, _, _), value) in enumerate(zip(finished, seconds, strict=True))
    ]
    succeeded = sum(1 for status, _, _ in finished if status == Run.Status.SUCCEEDED)
    return {
        "count": len(finished),
        "success_percent": round(100 * succeeded / len(finished)),
        "median_seconds": sorted(seconds)[len(seconds) // 2],
        "longest_seconds": longest,
        "points": points,
        "polyline": " ".join(f"{p['x']},{p['y']}" for p in points),
        "width": CHART_WIDTH,
        "height": CHART_HEIGHT,
        "runners": list(
            runs.values("user__username").annotate(count=Count("id")).order_by("-count", "user__username")[:5]
        ),
    }


@require_http_methods(["GET", "POST"])
@login_required
def script_edit(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    script = editable_script_or_404(request, pk)
    may_make_global = roles.can_make_global(request.user)
    initial = {
        "name": script.name,
        "description": script.description,
        "source": script.source,
        "is_global": script.is_global,
        "env_name": script.env_name,
    }
    form = ScriptForm(
        request.POST or None,
        initial=initial,
        may_make_global=may_make_global,
        renaming=False,
        environments=environment_services.environment_names(),
    )
    if request.method == "POST" and form.is_valid():
        before = script.current_version_id
        updated = form.submit(
            lambda: script_services.script_update(
                script=script,
                by=request.user,
                source=form.cleaned_data["source"],
                description=form.cleaned_data["description"],
                is_global=form.cleaned_data["is_global"] if may_make_global else None,
                env_name=form.cleaned_data["env_name"],
                message=form.cleaned_data["message"],
            )
        )
        if updated is not None:
            if script.current_version is not None and script.current_version.pk != before:
                messages.success(request, f"Saved as version {script.current_version.number}.")
            else:
                messages.info(request, "Saved. The source did not change, so there is no new version.")
            return redirect("web:script_detail", script.pk)
    status = 422 if form.errors else 200
    return render(request, "scripts/form.html", {"form": form, "script": script}, status=status)


@require_http_methods(["GET", "POST"])
@login_required
def script_delete(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    script = editable_script_or_404(request, pk)
    if request.method == "POST":
        name = script.name
        script_services.script_delete(script=script)
        messages.success(request, f"Script {name} deleted. Its runs keep the versions they ran.")
        return redirect("web:script_list")
    run_count = Run.objects.filter(script_version__script=script).count()
    return render(request, "scripts/confirm_delete.html", {"script": script, "run_count": run_count})


@require_POST
@login_required
def script_check(request: HtmxHttpRequest) -> HttpResponse:
    """Check a source while it is being written: its error and line, or the function a run calls."""
    require_writer(request)
    source = request.POST.get("source", "")
    name = request.POST.get("name", "")
    # Within 150 ms for a 3,000-line script: see scripts_app/source_check.py and bench/editor_bench.py.
    result = check_source(source, name)
    return render(request, "_partials/source_check.html", {"error": result.error, "signature": result.signature})


# Versions


@require_GET
@login_required
def script_versions(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    script = visible_script_or_404(request, pk)
    versions = list(script.versions.select_related("created_by").defer("source"))
    numbers = [version.number for version in versions]
    diff = None
    old_number = _int_or_none(request.GET.get("a"))
    new_number = _int_or_none(request.GET.get("b"))
    if old_number in numbers and new_number in numbers:
        old, new = (script.versions.get(number=n) for n in (old_number, new_number))
        diff = compare.source_diff(
            old.source, new.source, old_label=f"version {old.number}", new_label=f"version {new.number}"
        )
    elif len(numbers) >= 2:
        old_number, new_number = numbers[1], numbers[0]
    return render(
        request,
        "scripts/versions.html",
        {
            "script": script,
            "versions": versions,
            "diff": diff,
            "a": old_number,
            "b": new_number,
            "may_edit": roles.can_edit_script(request.user, script),
            "may_run": roles.can_run_script(request.user, script),
        },
    )


@require_GET
@login_required
def version_detail(request: HtmxHttpRequest, pk: UUID, number: int) -> HttpResponse:
    script = visible_script_or_404(request, pk)
    version = get_object_or_404(ScriptVersion.objects.select_related("created_by"), script=script, number=number)
    return render(
        request,
        "scripts/version.html",
        {
            "script": script,
            "version": version,
            "may_edit": roles.can_edit_script(request.user, script),
            "may_run": roles.can_run_script(request.user, script),
        },
    )


@require_POST
@login_required
def version_restore(request: HtmxHttpRequest, pk: UUID, number: int) -> HttpResponse:
    script = editable_script_or_404(request, pk)
    version = get_object_or_404(ScriptVersion, script=script, number=number)
    if version.pk == script.current_version_id:
        messages.info(request, f"Version {number} is already the current one.")
    else:
        script_services.script_restore_version(script=script, version=version, by=request.user)
        assert script.current_version is not None  # the restore made a new current version
        messages.success(request, f"Restored version {number} as version {script.current_version.number}.")
    return redirect("web:script_detail", script.pk)


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


# Sharing


@require_POST
@login_required
def script_grant(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    script = _shareable_script(request, pk)
    form = GrantForm(request.POST)
    if form.is_valid():
        grantee = form.cleaned_data["username"]
        if grantee.pk == script.owner_id:
            messages.error(request, "The owner may already run the script.")
        else:
            script_services.script_grant(script=script, grantee=grantee)
            messages.success(request, f"{grantee.username} may now run {script.name}.")
    else:
        messages.error(request, " ".join(str(message) for message in form.errors["username"]))
    return redirect("web:script_detail", script.pk)


@require_POST
@login_required
def script_revoke(request: HtmxHttpRequest, pk: UUID, user_id: int) -> HttpResponse:
    script = _shareable_script(request, pk)
    grantee = get_object_or_404(get_user_model(), pk=user_id)
    script_services.script_revoke(script=script, grantee=grantee)
    messages.success(request, f"{grantee.username} may no longer run {script.name}.")
    return redirect("web:script_detail", script.pk)


@require_POST
@login_required
def script_set_global(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    script = visible_script_or_404(request, pk)
    if not roles.can_make_global(request.user):
        raise PermissionDenied("Only admins may make a script global.")
    make_global = request.POST.get("is_global") == "true"
    script_services.script_update(script=script, by=request.user, is_global=make_global)
    messages.success(request, f"{script.name} is now {'global' if make_global else 'private'}.")
    return redirect("web:script_detail", script.pk)


def _shareable_script(request: HtmxHttpRequest, pk: UUID) -> Script:
    script = visible_script_or_404(request, pk)
    if not roles.can_share_script(request.user, script):
        raise PermissionDenied("Only the owner may share this script.")
    return script
