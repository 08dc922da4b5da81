"""The auditor's pages: the trail, filtered; one event as it was; streamed exports of the trail and
of the run history."""

from __future__ import annotations

import json

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.serializers.json import DjangoJSONEncoder
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.utils.http import urlencode
from django.views.decorators.http import require_GET

from scripts_app import roles
from scripts_app.errors import OmlError
from scripts_app.models import AuditEvent
from scripts_app.services import audit, exports
from scripts_app.views.base import HtmxHttpRequest

EVENTS_PER_PAGE = 50
FILTER_NAMES = ("actor", "action", "object_type", "object_id", "since", "until")


def _require_auditor(request: HtmxHttpRequest) -> None:
    if not roles.sees_everything(request.user):
        raise PermissionDenied("Only admins and auditors read the audit trail.")


@require_GET
@login_required
def audit_list(request: HtmxHttpRequest) -> HttpResponse:
    _require_auditor(request)
    values = {name: request.GET.get(name, "").strip() for name in FILTER_NAMES}
    error = None
    events: list[AuditEvent] = []
    next_before = None
    try:
        filters = audit.filters_from(request.GET)
        before = _int(request.GET.get("before"))
        events, next_before = audit.events_page(filters=filters, before_id=before, limit=EVENTS_PER_PAGE)
    except OmlError as problem:
        error = problem.message
        filters = audit.Filters()
    query = urlencode({name: value for name, value in values.items() if value})
    return render(
        request,
        "audit/list.html",
        {
            "events": events,
            "values": values,
            "error": error,
            "filtered": not filters.is_empty(),
            "next_before": next_before,
            "query": query,
            "first_page": not request.GET.get("before"),
            "actions": audit.ACTIONS,
            "object_types": sorted(set(audit.OBJECT_TYPES.values()) | {"audit"}),
        },
        status=400 if error else 200,
    )


@require_GET
@login_required
def audit_detail(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    _require_auditor(request)
    event = get_object_or_404(AuditEvent, pk=pk)
    return render(
        request,
        "audit/detail.html",
        {
            "event": event,
            "before_json": _pretty(event.before),
            "after_json": _pretty(event.after),
            "changes": _changes(event.before, event.after),
            "object_url": audit.object_link(event),
            "object_history": bool(event.object_type and event.object_id),
        },
    )


@require_GET
@login_required
def audit_export(request: HtmxHttpRequest, fmt: str) -> HttpResponseBase:
    _require_auditor(request)
    if fmt not in exports.FORMATS:
        raise Http404("Export as csv or jsonl.")
    try:
        filters = audit.filters_from(request.GET)
    except OmlError as problem:
        return HttpResponse(problem.message, status=400, content_type="text/plain; charset=utf-8")
    return streamed(
        audit.export_lines(filters=filters, fmt=fmt),
        fmt=fmt,
        name="audit",
    )


@require_GET
@login_required
def run_export(request: HtmxHttpRequest, fmt: str) -> StreamingHttpResponse:
    """The run history the user may see, with the history page's filters."""
    if fmt not in exports.FORMATS:
        raise Http404("Export as csv or jsonl.")
    filters = {name: request.GET.get(name, "").strip() for name in exports.RUN_FILTERS}
    runs = exports.runs_for(user=request.user, filters=filters)
    return streamed(exports.lines(exports.iter_runs(runs), fmt=fmt, fields=exports.RUN_FIELDS), fmt=fmt, name="runs")


def streamed(lines, *, fmt: str, name: str) -> StreamingHttpResponse:
    response = StreamingHttpResponse(lines, content_type=exports.FORMATS[fmt])
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = f'attachment; filename="omlweb-{name}-{stamp}.{fmt}"'
    response["Cache-Control"] = "no-store"
    return response


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _pretty(value) -> str:
    return (
        "" if value is None else json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, cls=DjangoJSONEncoder)
    )


def _changes(before, after) -> list[tuple[str, str, str]]:
    """(field, before, after) for each top-level field that differs, when both sides are objects."""
    if not isinstance(before, dict) or not isinstance(after, dict):
        return []
    rows = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old != new:
            rows.append((key, _short(old), _short(new)))
    return rows


def _short(value) -> str:
    if value is None:
        return "—"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, cls=DjangoJSONEncoder)
    return text if len(text) <= 200 else text[:200] + "…"
