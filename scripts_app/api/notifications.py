"""Notification rules and their deliveries over the REST API (beyond Oracle; docs/notifications.md)."""

from __future__ import annotations

from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from scripts_app import roles
from scripts_app.api.serializers import StrictBooleanField, StrictCharField, StrictIntegerField
from scripts_app.errors import NotFound, PermissionDenied
from scripts_app.models import NotificationDelivery, NotificationRule, Schedule, Script
from scripts_app.services import notifications

RULE = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "name": {"type": "string"},
        "owner": {"type": "string"},
        "script": {"type": ["object", "null"], "description": "{id, name, owner}; null: all the owner's runs."},
        "schedule": {"type": ["object", "null"], "description": "{id, name}: only the runs it starts; null: any."},
        "onFailure": {"type": "boolean"},
        "onSuccess": {"type": "boolean"},
        "longerThanSeconds": {"type": ["integer", "null"]},
        "channel": {"type": "string", "enum": ["EMAIL", "WEBHOOK"]},
        "url": {"type": "string"},
        "email": {"type": "string"},
        "secret": {"type": ["string", "null"], "description": "Only for the rule's owner; null for anyone else."},
        "enabled": {"type": "boolean"},
        "createdAt": {"type": "string", "format": "date-time"},
        "updatedAt": {"type": "string", "format": "date-time"},
    },
    "required": ["id", "name", "channel", "enabled"],
}
DELIVERY = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "rule": {"type": "string", "format": "uuid"},
        "run": {"type": ["string", "null"], "format": "uuid"},
        "event": {"type": "string", "enum": NotificationDelivery.Event.values},
        "channel": {"type": "string"},
        "target": {"type": "string"},
        "attempt": {"type": "integer"},
        "status": {"type": "string", "enum": NotificationDelivery.Status.values},
        "statusCode": {"type": ["integer", "null"], "description": "HTTP status, or the SMTP reply code of a refusal."},
        "responseExcerpt": {"type": "string"},
        "error": {"type": "string"},
        "notBefore": {"type": "string", "format": "date-time"},
        "createdAt": {"type": "string", "format": "date-time"},
        "startedAt": {"type": ["string", "null"], "format": "date-time"},
        "finishedAt": {"type": ["string", "null"], "format": "date-time"},
    },
    "required": ["id", "rule", "event", "status", "attempt"],
}


def _list_of(item: dict) -> dict:
    return {"type": "object", "properties": {"items": {"type": "array", "items": item}}, "required": ["items"]}


def rule_body(rule: NotificationRule, *, viewer) -> dict:
    return {
        "id": str(rule.pk),
        "name": rule.name,
        "owner": rule.owner.get_username(),
        "script": (
            {"id": str(rule.script.pk), "name": rule.script.name, "owner": rule.script.owner.get_username()}
            if rule.script is not None
            else None
        ),
        "schedule": {"id": str(rule.schedule.pk), "name": rule.schedule.name} if rule.schedule is not None else None,
        "onFailure": rule.on_failure,
        "onSuccess": rule.on_success,
        "longerThanSeconds": rule.longer_than_seconds,
        "channel": rule.channel,
        "url": rule.url,
        "email": rule.owner.email if rule.channel == NotificationRule.Channel.EMAIL else "",
        "secret": rule.secret if notifications.shows_secret(viewer, rule) and rule.secret else None,
        "enabled": rule.enabled,
        "createdAt": rule.created_at,
        "updatedAt": rule.updated_at,
    }


def delivery_body(delivery: NotificationDelivery) -> dict:
    return {
        "id": str(delivery.pk),
        "rule": str(delivery.rule_id),
        "run": str(delivery.run_id) if delivery.run_id else None,
        "event": delivery.event,
        "channel": delivery.channel,
        "target": delivery.target,
        "attempt": delivery.attempt,
        "status": delivery.status,
        "statusCode": delivery.status_code,
        "responseExcerpt": delivery.response_excerpt,
        "error": delivery.error,
        "notBefore": delivery.not_before,
        "createdAt": delivery.created_at,
        "startedAt": delivery.started_at,
        "finishedAt": delivery.finished_at,
    }


class RuleWriteSerializer(serializers.Serializer):
    name = StrictCharField(max_length=100, required=False)
    scriptId = serializers.UUIDField(required=False, allow_null=True, help_text="null: all the owner's runs.")
    scheduleId = serializers.UUIDField(
        required=False, allow_null=True, help_text="Only the runs this schedule of the owner's starts; null: any."
    )
    onFailure = StrictBooleanField(required=False)
    onSuccess = StrictBooleanField(required=False)
    longerThanSeconds = StrictIntegerField(required=False, allow_null=True, min_value=1, max_value=7 * 24 * 3600)
    channel = serializers.ChoiceField(choices=NotificationRule.Channel.values, required=False)
    url = StrictCharField(required=False, allow_blank=True, max_length=2000, trim_whitespace=False)
    enabled = StrictBooleanField(required=False)

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError({"body": "Must be a JSON object."})
        unknown = set(data) - set(self.fields)
        if unknown:
            raise serializers.ValidationError(dict.fromkeys(sorted(unknown), "Unknown field."))
        return super().to_internal_value(data)


FIELD_NAMES = {
    "name": "name",
    "onFailure": "on_failure",
    "onSuccess": "on_success",
    "longerThanSeconds": "longer_than_seconds",
    "channel": "channel",
    "url": "url",
    "enabled": "enabled",
}


def _changes(request: Request, owner) -> dict:
    body = RuleWriteSerializer(data=request.data)
    body.is_valid(raise_exception=True)
    data = body.validated_data
    changes = {FIELD_NAMES[key]: value for key, value in data.items() if key in FIELD_NAMES}
    if "scriptId" in data:
        changes["script"] = _script(data["scriptId"], owner) if data["scriptId"] else None
    if "scheduleId" in data:
        changes["schedule"] = _schedule(data["scheduleId"], owner) if data["scheduleId"] else None
    return changes


def _schedule(schedule_id, owner) -> Schedule:
    schedule = Schedule.objects.filter(pk=schedule_id, owner=owner).first()
    if schedule is None:
        raise NotFound(f"Schedule {schedule_id} does not exist.")
    return schedule


def _script(script_id, owner) -> Script:
    script = Script.objects.select_related("owner").filter(pk=script_id).first()
    if script is None or not roles.can_view_script(owner, script):
        raise NotFound(f"Script {script_id} does not exist.")
    return script


class RuleListView(APIView):
    @extend_schema(
        responses={200: _list_of(RULE)},
        summary="Notification rules: the caller's (everyone's for admins and auditors)",
        operation_id="notificationRuleList",
    )
    def get(self, request: Request) -> Response:
        rules = notifications.rules_visible_to(request.user)
        return Response({"items": [rule_body(rule, viewer=request.user) for rule in rules]})

    @extend_schema(
        request=RuleWriteSerializer,
        responses={201: RULE},
        summary="Create a notification rule (the secret of a webhook is in the answer)",
        operation_id="notificationRuleCreate",
    )
    def post(self, request: Request) -> Response:
        if roles.is_read_only(request.user):
            raise PermissionDenied("Auditors have read-only access: they do not create notification rules.")
        changes = _changes(request, request.user)
        missing = [name for name in ("name", "channel") if name not in changes]
        if missing:
            raise serializers.ValidationError(dict.fromkeys(missing, "This field is required."))
        rule = notifications.rule_create(owner=request.user, **changes)
        location = request.build_absolute_uri(reverse("oml-notification-rule", args=[rule.pk]))
        return Response(rule_body(rule, viewer=request.user), status=201, headers={"Location": location})


class RuleDetailView(APIView):
    @extend_schema(responses={200: RULE}, summary="One notification rule", operation_id="notificationRuleGet")
    def get(self, request: Request, rule_id: str) -> Response:
        rule = notifications.rule_get(user=request.user, rule_id=rule_id)
        return Response(rule_body(rule, viewer=request.user))

    @extend_schema(
        request=RuleWriteSerializer,
        responses={200: RULE},
        summary="Change some fields of a notification rule",
        operation_id="notificationRuleUpdate",
    )
    def patch(self, request: Request, rule_id: str) -> Response:
        rule = notifications.rule_for_change(user=request.user, rule_id=rule_id)
        rule = notifications.rule_update(rule=rule, **_changes(request, rule.owner))
        return Response(rule_body(rule, viewer=request.user))

    @extend_schema(responses={204: None}, summary="Delete a notification rule", operation_id="notificationRuleDelete")
    def delete(self, request: Request, rule_id: str) -> Response:
        rule = notifications.rule_for_change(user=request.user, rule_id=rule_id)
        notifications.rule_delete(rule=rule)
        return Response(status=204)


class RuleTestView(APIView):
    @extend_schema(
        request=None,
        responses={202: DELIVERY},
        summary="Queue a test notification through the rule's channel",
        operation_id="notificationRuleTest",
    )
    def post(self, request: Request, rule_id: str) -> Response:
        rule = notifications.rule_for_change(user=request.user, rule_id=rule_id)
        delivery = notifications.rule_test_send(rule=rule)
        return Response(delivery_body(delivery), status=202)


class RuleSecretView(APIView):
    @extend_schema(
        request=None,
        responses={200: RULE},
        summary="Replace a webhook rule's signing secret (the owner's rules only)",
        operation_id="notificationRuleRotateSecret",
    )
    def post(self, request: Request, rule_id: str) -> Response:
        rule = notifications.rule_for_change(user=request.user, rule_id=rule_id)
        if rule.channel != NotificationRule.Channel.WEBHOOK or not notifications.shows_secret(request.user, rule):
            raise notifications.RuleInvalid("Only the owner of a webhook rule replaces its secret.")
        rule = notifications.rule_rotate_secret(rule=rule)
        return Response(rule_body(rule, viewer=request.user))


class DeliveryListView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("rule", str, description="Only this rule's deliveries."),
            OpenApiParameter("limit", int, description="At most this many, newest first (1 to 500; 100)."),
        ],
        responses={200: _list_of(DELIVERY)},
        summary="Deliveries of notifications, newest first: each attempt and its answer",
        operation_id="notificationDeliveryList",
    )
    def get(self, request: Request) -> Response:
        deliveries = notifications.deliveries_visible_to(request.user)
        if "rule" in request.query_params:
            rule = notifications.rule_get(user=request.user, rule_id=request.query_params["rule"])
            deliveries = deliveries.filter(rule=rule)
        try:
            limit = min(500, max(1, int(request.query_params.get("limit", 100))))
        except ValueError:
            raise serializers.ValidationError({"limit": "Must be a whole number."}) from None
        return Response({"items": [delivery_body(delivery) for delivery in deliveries[:limit]]})
