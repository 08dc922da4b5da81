"""The audit trail and the run history over the API: filtered, cursor-paginated, and streamed exports."""

from __future__ import annotations

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from scripts_app import roles
from scripts_app.errors import BadRequest, PermissionDenied
from scripts_app.services import audit, exports
from scripts_app.views.audit import streamed

PAGE_DEFAULT = 100
PAGE_MAX = 1000
FILTER_PARAMETERS = [
    OpenApiParameter("actor", str, description="Username of who acted (exact)."),
    OpenApiParameter("action", str, description="An action (script.delete) or a family (script.)."),
    OpenApiParameter("object_type", str, description="script, dataset, environment, run, token, user, group, ..."),
    OpenApiParameter("object_id", str),
    OpenApiParameter("since", str, description="From this date (YYYY-MM-DD) or ISO date-time."),
    OpenApiParameter("until", str, description="Up to this date (inclusive) or before this ISO date-time."),
]
RUN_PARAMETERS = [OpenApiParameter(name, str) for name in ("script", "params", "user", "status", "since", "until")]


def _require_auditor(request: Request) -> None:
    if not roles.sees_everything(request.user):
        raise PermissionDenied("Only admins and auditors read the audit trail.")


class AuditEventListView(APIView):
    @extend_schema(
        parameters=[
            *FILTER_PARAMETERS,
            OpenApiParameter("cursor", str, description="The `next_cursor` of the previous page."),
            OpenApiParameter("limit", int, description=f"At most {PAGE_MAX}; default {PAGE_DEFAULT}."),
        ],
        responses={200: OpenApiTypes.OBJECT},
        summary="Audit events, newest first, filtered and cursor-paginated (admins and auditors)",
        operation_id="auditEvents",
    )
    def get(self, request: Request) -> Response:
        _require_auditor(request)
        filters = audit.filters_from(request.query_params)
        limit = _int(request.query_params.get("limit"), "limit", PAGE_DEFAULT)
        if not 1 <= limit <= PAGE_MAX:
            raise BadRequest(f"limit: must be between 1 and {PAGE_MAX}.")
        cursor = request.query_params.get("cursor")
        before = _int(cursor, "cursor", None) if cursor else None
        events, next_before = audit.events_page(filters=filters, before_id=before, limit=limit)
        next_url = None
        if next_before is not None:
            params = request.query_params.copy()
            params["cursor"] = str(next_before)
            next_url = request.build_absolute_uri(f"{request.path}?{params.urlencode()}")
        return Response(
            {
                "items": [audit.event_dict(event) for event in events],
                "limit": limit,
                "next_cursor": str(next_before) if next_before is not None else None,
                "next": next_url,
            }
        )


class AuditExportView(APIView):
    @extend_schema(
        parameters=FILTER_PARAMETERS,
        responses={(200, "text/csv"): OpenApiTypes.STR, (200, "application/x-ndjson"): OpenApiTypes.STR},
        summary="Export the filtered audit events as CSV or JSON Lines, streamed (admins and auditors)",
        operation_id="auditExport",
    )
    def get(self, request: Request, fmt: str) -> StreamingHttpResponse:
        _require_auditor(request)
        exports.check_format(fmt)
        filters = audit.filters_from(request.query_params)
        return streamed(
            audit.export_lines(filters=filters, fmt=fmt),
            fmt=fmt,
            name="audit",
        )


class RunExportView(APIView):
    @extend_schema(
        parameters=RUN_PARAMETERS,
        responses={(200, "text/csv"): OpenApiTypes.STR, (200, "application/x-ndjson"): OpenApiTypes.STR},
        summary="Export the run history the caller may see as CSV or JSON Lines, streamed",
        operation_id="runExport",
    )
    def get(self, request: Request, fmt: str) -> StreamingHttpResponse:
        exports.check_format(fmt)
        filters = {name: (request.query_params.get(name) or "").strip() for name in exports.RUN_FILTERS}
        runs = exports.runs_for(user=request.user, filters=filters)
        return streamed(
            exports.lines(exports.iter_runs(runs), fmt=fmt, fields=exports.RUN_FIELDS), fmt=fmt, name="runs"
        )


def _int(value, name: str, default):
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{name}: must be a whole number.") from None
