"""Run pages: the run form, a run's results (live while it runs), downloads, and the history."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from html import escape
from uuid import UUID

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseStopPolling

from scripts_app import results, roles
from scripts_app.forms import RunForm
from scripts_app.models import Run, RunImage, Script, ScriptVersion
from scripts_app.runner import ScriptSourceError
from scripts_app.services import datasets as dataset_services
from scripts_app.services import environments as environment_services
from scripts_app.services import live as live_services
from scripts_app.services import pipeline
from scripts_app.services import presets as preset_services
from scripts_app.services import retries as retry_services
from scripts_app.services.jobs.submission import job_attempt, job_cancel
from scripts_app.services.queries import sql_name
from scripts_app.signature import entry_signature
from scripts_app.views import live as live_views
from scripts_app.views.base import (
    HtmxHttpRequest,
    client_address,
    paginate,
    refusals_as_messages,
    visible_run_or_404,
    visible_script_or_404,
)
from scripts_app.views.compare import compare_choices

RUNS_PER_PAGE = 50
TABLE_ROWS_PER_PAGE = 50


# Running


@require_http_methods(["GET", "POST"])
@login_required
def run_script(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    script = visible_script_or_404(request, pk)
    if not roles.can_run_script(request.user, script):
        raise PermissionDenied("You may not run this script.")
    version = chosen_version(request, script)
    try:
        signature = entry_signature(version.source, version.entry_function)
    except ScriptSourceError:
        signature = None
    environments = environment_services.environment_names_ready()
    if script.env_name and script.env_name not in environments:
        # Offered even before it is built: the run then says why it cannot start yet.
        environments.append(script.env_name)
    form = RunForm(
        request.POST or None,
        signature=signature,
        environments=environments,
        datasets=dataset_choices(request.user),
    )
    if script.env_name:
        form.fields["env_name"].initial = script.env_name
    again = request.GET.get("again")
    if request.method == "GET" and again:
        earlier_pk = _uuid_or_none(again)
        earlier = Run.objects.filter(pk=earlier_pk).first() if earlier_pk else None
        if earlier is not None and roles.can_view_run(request.user, earlier):
            form.set_from_run(earlier)
    # The caller's named presets of this script: the picker fills the fields (run-form.js), `?preset=`
    # fills them on the server (the presets list's Use links, and without scripts).
    presets = presets_context(request, script)
    chosen = request.GET.get("preset") if request.method == "GET" else request.POST.get("preset")
    chosen_preset = next((row["preset"] for row in presets if row["preset"].name == chosen), None)
    if request.method == "GET" and chosen_preset is not None:
        form.set_parameters(dict(chosen_preset.parameters))
    if request.method == "POST" and form.is_valid():
        run_request = form.run_request(
            script=script,
            user=request.user,
            version=version,
            client_address=client_address(request),
            # A run that waits for its answer: the form page watches it live under the id it chose (live-sync.js).
            live_id=_uuid_or_none(request.POST.get("live_id", "")),
        )
        run = form.submit(lambda: pipeline.start_run(run_request))
        if run is not None:
            return redirect("web:run_detail", run.pk)
    return render(
        request,
        "runs/form.html",
        {
            "script": script,
            "version": version,
            "versions": script.versions.only("number").order_by("-number"),
            "signature": signature,
            "form": form,
            "presets": presets,
            "chosen_preset": chosen_preset,
        },
        status=422 if form.errors else 200,
    )


def presets_context(request: HtmxHttpRequest, script: Script) -> list[dict]:
    """The caller's presets of the script with their parameters as JSON (the picker's data-parameters)."""
    return [
        {"preset": preset, "json": json.dumps(preset.parameters)}
        for preset in preset_services.presets_of(script=script, user=request.user)
    ]


def dataset_choices(user) -> list[tuple[str, str]]:
    """The datasets the user may read, as (name in SQL, label) for the run form's picker."""
    datasets = dataset_services.datasets_readable_by(user).order_by("name", "owner__username")
    return [
        (sql_name(dataset, caller=user), f"{sql_name(dataset, caller=user)} ({dataset.row_count} rows)")
        for dataset in datasets
    ]


def chosen_version(request: HtmxHttpRequest, script: Script) -> ScriptVersion:
    """The version a run form runs: `version` in the query or the form, else the current one."""
    number = request.GET.get("version") or request.POST.get("version")
    if number:
        try:
            return script.versions.get(number=int(number))
        except (ValueError, ScriptVersion.DoesNotExist):
            raise Http404("No such version.") from None
    if script.current_version is None:
        raise Http404("The script has no version.")
    return script.current_version


def _uuid_or_none(value: str) -> UUID | None:
    try:
        return UUID(value)
    except ValueError:
        return None


# One run


@require_GET
@login_required
def run_detail(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    # The value is read only when this process has not kept its table (results.run_table).
    run = visible_run_or_404(request, pk, defer=("result_json",))
    context = _run_context(request, run)
    if request.htmx and request.htmx.target == "run-live":
        response = render(request, "runs/detail.html#live", context)
        if run.is_finished:
            # The swapped-in content has no poll trigger left; 286 also tells htmx to stop.
            response.status_code = HttpResponseStopPolling.status_code
        return response
    if request.htmx and request.htmx.target == "result-table":
        return render(request, "runs/detail.html#table", context)
    return render(request, "runs/detail.html", context)


def _run_context(request: HtmxHttpRequest, run: Run) -> dict:
    table = results.run_table(run)
    grid = _data_grid(request, table) if table else None
    script = run.script_version.script
    return {
        "run": run,
        "script": script,
        "images": list(run.images.all()) if run.is_finished else [],
        "table": table,
        "grid": grid,
        "table_page": grid["page"] if grid else None,
        "result_json": results.as_pretty_json(run.result)
        if run.status == Run.Status.SUCCEEDED and table is None
        else None,
        "may_cancel": run.mode == Run.Mode.ASYNC and not run.is_finished and roles.can_cancel_run(request.user, run),
        # "Run again" refills the whole form, an apply run's mode, query and options too (RunForm.set_from_run).
        "may_run_again": script is not None and roles.can_run_script(request.user, script),
        "pieces": piece_timeline(run),
        "compare_choices": compare_choices(request.user, run) if run.is_finished else [],
        "progress": _progress(run),
        "attempt": job_attempt(run) if run.mode == Run.Mode.ASYNC else None,
        # Live runs: output as printed, clock and timeline while it runs (views.live); the steps once ended.
        "live": live_views.live_context(run) if not run.is_finished else None,
        "timeline": live_services.timeline(run) if run.is_finished else None,
        # Retried under a retry policy: every attempt is a run of its own (services/retries.py).
        "attempts": retry_services.attempts_of(run) if run.retry_of_id or run.retries.exists() else [],
    }


def _progress(run: Run) -> dict | None:
    """For a run not yet finished: how long it has waited or run, and its place in its queue."""
    if run.is_finished:
        return None
    now = timezone.now()
    if run.status == Run.Status.QUEUED:
        ahead = Run.objects.filter(
            status=Run.Status.QUEUED, mode=Run.Mode.ASYNC, service=run.service, created_at__lt=run.created_at
        ).count()
        return {"waiting_seconds": (now - run.created_at).total_seconds(), "position": ahead + 1}
    return {"running_seconds": (now - (run.started_at or run.created_at)).total_seconds()}


def _data_grid(request: HtmxHttpRequest, table: results.Table) -> dict:
    """The DATA table as the page shows it: filtered by ?find=, sorted by ?sort= (?desc=1), paginated."""
    find = request.GET.get("find", "").strip()
    sort = request.GET.get("sort", "")
    descending = request.GET.get("desc") == "1"
    shown = results.filtered(table, find) if find else table
    if sort in table.columns:
        shown = results.sorted_by(shown, sort, descending=descending)
    else:
        sort = ""
    numeric = table.numeric
    page = paginate(request, shown.rows, TABLE_ROWS_PER_PAGE)
    return {
        "page": page,
        # Each cell with whether its column is numeric (templates cannot zip).
        "rows": [list(zip(row, numeric, strict=True)) for row in page.object_list],
        "body": _rows_html(page.object_list, numeric),
        "matching": len(shown.rows),
        "find": find,
        "columns": [
            {"name": name, "numeric": is_number, "sorted": name == sort, "descending": descending}
            for name, is_number in zip(table.columns, numeric, strict=True)
        ],
    }


def _rows_html(rows: Iterable[list], numeric: list[bool]) -> SafeString:
    """A page of the grid as table rows, built here: its 1,550 cells through template tags and filters took
    about 100 ms a page. Numbers show at a readable precision, the exact value in the cell's title."""
    html = []
    for row in rows:
        cells = [
            f'<td class="num" title="{escape(results.cell_text(value))}">{escape(results.number_text(value))}</td>'
            if is_number
            else f"<td>{escape(results.cell_text(value))}</td>"
            for value, is_number in zip(row, numeric, strict=True)
        ]
        html.append(f"<tr>{''.join(cells)}</tr>")
    return mark_safe("\n".join(html))  # noqa: S308 - every cell's text is escaped above


def piece_timeline(run: Run) -> list[dict]:
    """An apply run's pieces with their start and length as percentages of the run's span, for the timeline."""
    pieces = [dict(piece) for piece in run.pieces or []]
    times = [
        (dt.datetime.fromisoformat(p["started_at"]), dt.datetime.fromisoformat(p["finished_at"]))
        for p in pieces
        if p.get("started_at") and p.get("finished_at")
    ]
    if not times:
        return pieces
    first = min(start for start, _ in times)
    span = max((end - first).total_seconds() for _, end in times) or 1.0
    for piece in pieces:
        if piece.get("started_at") and piece.get("finished_at"):
            start = (dt.datetime.fromisoformat(piece["started_at"]) - first).total_seconds()
            piece["offset_seconds"] = start
            piece["left_percent"] = round(100 * start / span, 2)
            piece["width_percent"] = max(0.5, round(100 * (piece["seconds"] or 0) / span, 2))
    return pieces


@require_GET
@login_required
def run_image(request: HtmxHttpRequest, pk: UUID, position: int) -> FileResponse:
    run = visible_run_or_404(request, pk)
    image = get_object_or_404(RunImage, run=run, position=position)
    download = request.GET.get("download") == "1"
    filename = f"{run.script_name}-{str(run.pk)[:8]}-{position}.png"
    try:
        file = image.image.open("rb")
    except FileNotFoundError:
        # Pruned from disk (retention) while the row stayed.
        raise Http404("The image file is gone.") from None
    return FileResponse(file, content_type="image/png", as_attachment=download, filename=filename)


@require_GET
@login_required
def run_data(request: HtmxHttpRequest, pk: UUID, fmt: str) -> HttpResponse:
    if fmt not in ("csv", "json", "parquet"):
        raise Http404("Data comes as csv, json or parquet.")
    run = visible_run_or_404(request, pk)
    if run.status != Run.Status.SUCCEEDED:
        raise Http404("The run returned no data.")
    filename = f"{run.script_name}-{str(run.pk)[:8]}.{fmt}"
    if fmt in ("csv", "parquet"):
        table = results.run_table(run)
        if table is None:
            raise Http404("The data is not a table.")
        if fmt == "csv":
            response = HttpResponse(results.as_csv(table), content_type="text/csv; charset=utf-8")
        else:
            response = HttpResponse(results.as_parquet(table), content_type="application/vnd.apache.parquet")
    else:
        response = HttpResponse(results.as_pretty_json(run.result), content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@require_POST
@login_required
@refusals_as_messages(back_to=lambda pk: reverse("web:run_detail", args=[pk]))
def run_cancel(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    run = visible_run_or_404(request, pk)
    if not roles.can_cancel_run(request.user, run):
        raise PermissionDenied("You may not cancel this run.")
    if run.mode != Run.Mode.ASYNC:
        messages.error(request, "Only jobs can be cancelled: a run made with 'Run now' ends with its request.")
    elif run.is_finished:
        messages.info(request, f"The run had already ended: {run.get_status_display()}.")
    else:
        run = job_cancel(run=run)
        messages.success(request, "Cancel requested.")
    return redirect("web:run_detail", run.pk)


# The history (the runs list) is in views/history.py: keyset pagination.
