"""The schedules API (v2, omlweb's own): list, create, read, change, delete, pause and resume; and a
script's retry policy. docs/schedules.md describes the bodies."""

from __future__ import annotations

from datetime import UTC

from django.db import transaction
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from scripts_app.api.schema import message, result_of
from scripts_app.api.serializers import (
    ParametersField,
    StrictBooleanField,
    StrictCharField,
    StrictIntegerField,
)
from scripts_app.errors import BadRequest, ErrorCode, NotFound
from scripts_app.models import Run, Schedule, ScriptRetryPolicy, ServiceLevel
from scripts_app.services import retries, schedules, scripts
from scripts_app.services.jobs import submission


class ScheduleWriteSerializer(serializers.Serializer):
    """A schedule's fields; on PATCH, only those sent change."""

    name = StrictCharField(required=False, allow_blank=True, max_length=128)
    scriptName = StrictCharField(max_length=128)
    scriptOwner = StrictCharField(required=False, max_length=150, help_text="Another owner's (global or granted).")
    version = StrictIntegerField(
        required=False, allow_null=True, min_value=1, help_text="Pin a version number; null: the current one."
    )
    parameters = ParametersField(required=False)
    envName = StrictCharField(required=False, allow_blank=True, max_length=64)
    service = serializers.ChoiceField(choices=ServiceLevel.choices, required=False)
    timeout = StrictIntegerField(required=False, allow_null=True, min_value=1, max_value=43200)
    cron = StrictCharField(required=False, allow_blank=True, max_length=200, help_text="e.g. '0 7 * * 1-5'.")
    intervalSeconds = StrictIntegerField(required=False, allow_null=True, min_value=1)
    timeZone = StrictCharField(required=False, max_length=64, help_text="IANA name; default UTC.")
    enabled = StrictBooleanField(required=False)
    missedRuns = serializers.ChoiceField(choices=Schedule.Missed.values, required=False)
    overlap = serializers.ChoiceField(choices=Schedule.Overlap.values, required=False)
    maxRetries = StrictIntegerField(required=False, min_value=0, max_value=retries.MAX_RETRIES)
    retryBackoffSeconds = StrictIntegerField(required=False, min_value=0, max_value=retries.MAX_BACKOFF_SECONDS)
    retryBackoffFactor = serializers.FloatField(required=False, min_value=1.0, max_value=10.0)
    retryUserErrors = StrictBooleanField(required=False)


FIELD_NAMES = {
    "name": "name",
    "parameters": "parameters",
    "envName": "env_name",
    "service": "service",
    "timeout": "timeout_seconds",
    "cron": "cron",
    "intervalSeconds": "interval_seconds",
    "timeZone": "time_zone",
    "enabled": "enabled",
    "missedRuns": "missed_policy",
    "overlap": "overlap_policy",
    "maxRetries": "max_retries",
    "retryBackoffSeconds": "retry_backoff_seconds",
    "retryBackoffFactor": "retry_backoff_factor",
    "retryUserErrors": "retry_user_errors",
}


def _iso(moment) -> str | None:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None


def schedule_row(schedule: Schedule, *, upcoming: bool = True) -> dict:
    timing = schedules.Timing.of(schedule)
    row = {
        "id": str(schedule.pk),
        "name": schedule.name,
        "owner": schedule.owner.get_username(),
        "scriptName": schedule.script.name,
        "scriptOwner": schedule.script.owner.get_username(),
        "version": schedule.version.number if schedule.version else None,
        "parameters": schedule.parameters,
        "envName": schedule.env_name,
        "service": schedule.service,
        "timeout": schedule.timeout_seconds,
        "cron": schedule.cron,
        "intervalSeconds": schedule.interval_seconds,
        "timeZone": schedule.time_zone,
        "description": timing.describe(),
        "enabled": schedule.enabled,
        "missedRuns": schedule.missed_policy,
        "overlap": schedule.overlap_policy,
        "maxRetries": schedule.max_retries,
        "retryBackoffSeconds": schedule.retry_backoff_seconds,
        "retryBackoffFactor": schedule.retry_backoff_factor,
        "retryUserErrors": schedule.retry_user_errors,
        "nextRunAt": _iso(schedule.next_run_at) if schedule.enabled else None,
        "lastRunAt": _iso(schedule.last_run_at),
        "lastRunId": str(schedule.last_run_id) if schedule.last_run_id else None,
        "lastNote": schedule.last_note,
        "createdAt": _iso(schedule.created_at),
    }
    if upcoming:
        row["nextRuns"] = [_iso(moment) for moment in _upcoming(schedule)]
    return row


def _upcoming(schedule: Schedule) -> list:
    if not schedule.enabled or schedule.next_run_at is None:
        return []
    timing = schedules.Timing.of(schedule)
    moments = [schedule.next_run_at]
    while len(moments) < schedules.PREVIEW_COUNT:
        moments.append(timing.after(moments[-1]))
    return moments


SCHEDULE_ROW = serializers.JSONField(help_text="A schedule (docs/schedules.md): its fields, nextRunAt and nextRuns.")
SCHEDULE_ONE = result_of("Schedule", SCHEDULE_ROW)
SCHEDULE_LIST = result_of("ScheduleList", serializers.ListField(child=SCHEDULE_ROW))
DRY_RUN = OpenApiParameter(
    "dryRun", bool, description="true: check the body and answer the next five run times, save nothing."
)


def _fields(request: Request, data: dict, current: Schedule | None) -> dict:
    """Model fields from a checked body: the script (and pinned version) resolved for the caller."""
    fields = {FIELD_NAMES[key]: value for key, value in data.items() if key in FIELD_NAMES}
    if "cron" in fields:
        fields["cron"] = fields["cron"] or ""
    if fields.get("cron") and "intervalSeconds" not in data:
        fields["interval_seconds"] = None
    if fields.get("interval_seconds") and "cron" not in data:
        fields["cron"] = ""
    if "scriptName" in data:
        fields["script"] = scripts.script_resolve(
            caller=request.user, name=data["scriptName"], owner_name=data.get("scriptOwner")
        )
    script = fields.get("script") or (current.script if current else None)
    if "version" in data:
        number = data["version"]
        version = None
        if number is not None:
            if script is None:
                raise BadRequest("A pinned version needs the schedule's scriptName.", code=ErrorCode.INVALID_SCHEDULE)
            version = script.versions.filter(number=number).first()
            if version is None:
                raise BadRequest(f"Script {script.name!r} has no version {number}.", code=ErrorCode.INVALID_SCHEDULE)
        fields["version"] = version
    elif "script" in fields and current is not None and current.script_id != fields["script"].pk:
        fields["version"] = None
    return fields


def _dry_run(request: Request) -> bool:
    return request.query_params.get("dryRun", "").lower() in ("1", "true", "yes")


def _save(request: Request, *, schedule: Schedule | None, partial: bool) -> Response:
    body = ScheduleWriteSerializer(data=request.data, partial=partial)
    body.is_valid(raise_exception=True)
    schedules.check_writer(request.user)
    fields = _fields(request, body.validated_data, schedule)
    with transaction.atomic():
        saved = schedules.schedule_save(user=request.user, schedule=schedule, **fields)
        row = schedule_row(saved)
        if _dry_run(request):
            # Checked as a save would be, then undone: the answer is the validation and the next runs.
            transaction.set_rollback(True)
            row["id"] = None
            return Response({"result": row, "dryRun": True})
    return Response({"result": row}, status=201 if schedule is None else 200)


class ScheduleListView(APIView):
    @extend_schema(responses={200: SCHEDULE_LIST}, summary="Schedules: the caller's (an admin's or auditor's: all)")
    def get(self, request: Request, version: str) -> Response:
        _v2(version)
        items = schedules.schedules_visible_to(request.user).order_by("name", "created_at")
        return Response({"result": [schedule_row(item, upcoming=False) for item in items]})

    @extend_schema(
        request=ScheduleWriteSerializer,
        responses={201: SCHEDULE_ONE, 200: SCHEDULE_ONE},
        parameters=[DRY_RUN],
        summary="Create a schedule (dryRun=true: only check it and show its next five runs)",
    )
    def post(self, request: Request, version: str) -> Response:
        _v2(version)
        return _save(request, schedule=None, partial=False)


class ScheduleDetailView(APIView):
    @extend_schema(responses={200: SCHEDULE_ONE}, summary="A schedule, with its next five run times")
    def get(self, request: Request, version: str, schedule_id: str) -> Response:
        _v2(version)
        return Response({"result": schedule_row(schedules.schedule_get(user=request.user, pk=schedule_id))})

    @extend_schema(
        request=ScheduleWriteSerializer, responses={200: SCHEDULE_ONE}, parameters=[DRY_RUN], summary="Replace"
    )
    def put(self, request: Request, version: str, schedule_id: str) -> Response:
        _v2(version)
        schedule = schedules.schedule_for_change(user=request.user, pk=schedule_id)
        return _save(request, schedule=schedule, partial=False)

    @extend_schema(
        request=ScheduleWriteSerializer, responses={200: SCHEDULE_ONE}, parameters=[DRY_RUN], summary="Change"
    )
    def patch(self, request: Request, version: str, schedule_id: str) -> Response:
        _v2(version)
        schedule = schedules.schedule_for_change(user=request.user, pk=schedule_id)
        return _save(request, schedule=schedule, partial=True)

    @extend_schema(responses={200: message("ScheduleDeleted")}, summary="Delete a schedule (its runs stay)")
    def delete(self, request: Request, version: str, schedule_id: str) -> Response:
        _v2(version)
        schedules.schedule_delete(schedule=schedules.schedule_for_change(user=request.user, pk=schedule_id))
        return Response({"result": "schedule deleted successfully"})


class SchedulePauseView(APIView):
    action = "pause"

    @extend_schema(request=None, responses={200: SCHEDULE_ONE}, summary="Pause or resume a schedule")
    def post(self, request: Request, version: str, schedule_id: str) -> Response:
        _v2(version)
        schedule = schedules.schedule_for_change(user=request.user, pk=schedule_id)
        change = schedules.schedule_pause if self.action == "pause" else schedules.schedule_resume
        return Response({"result": schedule_row(change(schedule=schedule))})


class ScheduleResumeView(SchedulePauseView):
    action = "resume"


class RetryPolicySerializer(serializers.Serializer):
    maxRetries = StrictIntegerField(min_value=0, max_value=retries.MAX_RETRIES)
    retryBackoffSeconds = StrictIntegerField(required=False, min_value=0, max_value=retries.MAX_BACKOFF_SECONDS)
    retryBackoffFactor = serializers.FloatField(required=False, min_value=1.0, max_value=10.0)
    retryUserErrors = StrictBooleanField(required=False)


RETRY_POLICY = result_of(
    "RetryPolicy",
    inline_serializer(
        name="RetryPolicyRow",
        fields={
            "maxRetries": serializers.IntegerField(),
            "retryBackoffSeconds": serializers.IntegerField(),
            "retryBackoffFactor": serializers.FloatField(),
            "retryUserErrors": serializers.BooleanField(),
        },
    ),
)


def _policy_row(policy: ScriptRetryPolicy) -> dict:
    return {
        "maxRetries": policy.max_retries,
        "retryBackoffSeconds": policy.retry_backoff_seconds,
        "retryBackoffFactor": policy.retry_backoff_factor,
        "retryUserErrors": policy.retry_user_errors,
    }


class ScriptRetryView(APIView):
    @extend_schema(responses={200: RETRY_POLICY}, summary="A script's retry policy for its async runs")
    def get(self, request: Request, version: str, name: str) -> Response:
        _v2(version)
        script = scripts.script_resolve(caller=request.user, name=name, owner_name=request.query_params.get("owner"))
        policy = ScriptRetryPolicy.objects.filter(script=script).first() or ScriptRetryPolicy(script=script)
        return Response({"result": _policy_row(policy)})

    @extend_schema(request=RetryPolicySerializer, responses={200: RETRY_POLICY}, summary="Set a script's retries")
    def put(self, request: Request, version: str, name: str) -> Response:
        _v2(version)
        body = RetryPolicySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        script = scripts.own_script(owner=request.user, name=name)
        policy = ScriptRetryPolicy.objects.filter(script=script).first() or ScriptRetryPolicy(script=script)
        for key, field in (
            ("maxRetries", "max_retries"),
            ("retryBackoffSeconds", "retry_backoff_seconds"),
            ("retryBackoffFactor", "retry_backoff_factor"),
            ("retryUserErrors", "retry_user_errors"),
        ):
            if key in body.validated_data:
                setattr(policy, field, body.validated_data[key])
        retries.check_policy(
            max_retries=policy.max_retries,
            backoff_seconds=policy.retry_backoff_seconds,
            backoff_factor=policy.retry_backoff_factor,
        )
        policy.save()
        return Response({"result": _policy_row(policy)})


def attempt_row(run: Run) -> dict:
    """One run of a schedule or one attempt of a job: when it was due, ran, and how it ended."""
    return {
        "jobId": str(run.pk),
        "status": run.status,
        "errorCode": run.error_code,
        "errorMessage": run.error_message[:500],
        "attempt": run.retry_number + 1,
        "retryOf": str(run.retry_of_id) if run.retry_of_id else None,
        "scheduleId": str(run.schedule_id) if run.schedule_id else None,
        "scheduledFor": _iso(run.scheduled_for),
        "createdAt": _iso(run.created_at),
        "startedAt": _iso(run.started_at),
        "finishedAt": _iso(run.finished_at),
        "worker": run.worker,
    }


RUN_LIST = result_of("ScheduledRunList", serializers.ListField(child=serializers.JSONField()))


class ScheduleRunsView(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("limit", int, description="At most 1000; default 100.")],
        responses={200: RUN_LIST},
        summary="The runs a schedule started (retries included), newest first",
    )
    def get(self, request: Request, version: str, schedule_id: str) -> Response:
        _v2(version)
        schedule = schedules.schedule_get(user=request.user, pk=schedule_id)
        try:
            limit = min(max(int(request.query_params.get("limit", 100)), 1), 1000)
        except ValueError:
            raise BadRequest("limit must be an integer.") from None
        items = Run.objects.filter(schedule=schedule).order_by("-created_at")[:limit]
        return Response({"result": [attempt_row(run) for run in items]})


class JobAttemptsView(APIView):
    @extend_schema(responses={200: RUN_LIST}, summary="Every attempt of a job (a retry is a new run), first to last")
    def get(self, request: Request, version: str, job_id: str) -> Response:
        _v2(version)
        run = submission.job_get(user=request.user, job_id=job_id)
        return Response({"result": [attempt_row(attempt) for attempt in retries.attempts_of(run)]})


def _v2(version: str) -> None:
    if version != "v2":
        raise NotFound("This endpoint exists in v2 only: /oml/api/py-scripts/v2/...")
