"""Request bodies of the API, checked strictly: a wrong type is a 400 that names the field."""

from __future__ import annotations

import copy
import json

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from scripts_app.api.parsers import unsupported_value
from scripts_app.models import VERSION_MESSAGE_MAX, Run, Script, ServiceLevel
from scripts_app.runner.validation import NestedTooDeeply, UnsupportedValue, loads_strict
from scripts_app.services import presets
from scripts_app.services.pipeline import ApplyInput, RunRequest

ASYNC_TIMEOUT_MIN, ASYNC_TIMEOUT_MAX = 1800, 43200


class StrictBooleanField(serializers.BooleanField):
    """Only JSON true or false: "yes" or 1 are mistakes worth telling the caller about."""

    default_error_messages = {"invalid": "Must be true or false."}

    def to_internal_value(self, data):
        if isinstance(data, bool):
            return data
        self.fail("invalid")


class StrictCharField(serializers.CharField):
    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


@extend_schema_field(
    {
        "oneOf": [
            {"type": "string", "description": 'JSON of an object, as Oracle: "{\\"num\\": 10}"'},
            {"type": "object"},
        ]
    }
)
class ParametersField(serializers.Field):
    """OML's `parameters`: a JSON string of keyword arguments; a JSON object is accepted too."""

    default_error_messages = {
        "invalid": "Must be a JSON object of keyword arguments, or a string holding one.",
        "not_json": "Is not valid JSON: {error}.",
    }

    def to_internal_value(self, data):
        if isinstance(data, str):
            if not data.strip():
                return {}
            try:
                data = loads_strict(data)
            except NestedTooDeeply:
                self.fail("not_json", error="nested too deeply")
            except UnsupportedValue as error:
                raise unsupported_value("parameters", error) from None
            except ValueError as error:
                self.fail("not_json", error=error)
        if not isinstance(data, dict):
            self.fail("invalid")
        return data

    def to_representation(self, value):
        return json.dumps(value)


class ExecutionRequestSerializer(serializers.Serializer):
    """The body every execution endpoint shares. Unknown fields are ignored, as Oracle does."""

    parameters = ParametersField(required=False, help_text="JSON string (or object) of keyword arguments.")
    graphicsFlag = StrictBooleanField(required=False, default=False)
    envName = StrictCharField(required=False, allow_blank=True, max_length=128)
    service = serializers.ChoiceField(choices=ServiceLevel.choices, required=False, default=ServiceLevel.LOW)
    asyncFlag = StrictBooleanField(required=False, default=False)
    timeout = StrictIntegerField(
        required=False, min_value=ASYNC_TIMEOUT_MIN, max_value=ASYNC_TIMEOUT_MAX, help_text="Seconds; async only."
    )
    comments = StrictCharField(required=False, allow_blank=True, max_length=4000, help_text="v2, async only.")
    preset = StrictCharField(
        required=False,
        max_length=64,
        help_text="Beyond Oracle: one of the caller's parameter presets of the script; `parameters` override its keys.",
    )

    def get_fields(self):
        # DRF deep-copies each declared field for every request, which runs each field's __init__ again
        # (and deep-copies its validators): a tenth of a sync run's CPU in the API (issue #11). A shallow
        # copy is enough here: validating reads a field's validators, choices and messages and never
        # changes them, and bind() sets the copy's own attributes (name, parent, label, source).
        return {name: copy.copy(field) for name, field in self._declared_fields.items()}

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError({"body": "Must be a JSON object."})
        # Oracle's own examples send "parameter"; clients copy them.
        if "parameters" not in data and "parameter" in data:
            data = {**data, "parameters": data["parameter"]}
        return super().to_internal_value(data)

    def validate(self, attrs):
        attrs.setdefault("parameters", {})
        if "timeout" in attrs and not attrs["asyncFlag"]:
            raise serializers.ValidationError({"timeout": "Only allowed together with asyncFlag=true."})
        return attrs

    def run_request(self, *, kind: str, script: Script, user, client_address: str | None) -> RunRequest:
        """The checked body as the request services.pipeline starts (after is_valid())."""
        data = self.validated_data
        asynchronous = data["asyncFlag"]
        apply_input = ApplyInput()
        if kind != Run.Kind.DO_EVAL:
            apply_input = ApplyInput(
                input_query=data.get("input", ""),
                rows=data.get("rows"),
                group_by=data.get("groupBy"),
                order_by=data.get("orderBy"),
                times=data.get("times"),
                parallel_flag=data.get("parallelFlag", False),
                parallel=data.get("parallel"),
            )
        return RunRequest(
            script=script,
            user=user,
            # A named preset of the caller's, its keys overridden by the body's own parameters.
            parameters=presets.with_preset(
                script=script, user=user, preset=data.get("preset"), parameters=data["parameters"]
            ),
            kind=kind,
            apply_input=apply_input,
            graphics=data["graphicsFlag"],
            env_name=data.get("envName"),
            service=data["service"],
            asynchronous=asynchronous,
            timeout_seconds=data.get("timeout"),
            # An async job's note (v2); a run made now keeps none.
            comments=data.get("comments", "") if asynchronous else "",
            client_address=client_address,
        )


class TableApplyRequestSerializer(ExecutionRequestSerializer):
    """table-apply: the whole input query's rows as the function's first argument."""

    input = StrictCharField(max_length=100_000, trim_whitespace=False, help_text="SQL: select * from IRIS")
    parallelFlag = StrictBooleanField(required=False, default=False)
    parallel = StrictIntegerField(required=False, min_value=1, help_text="Degree; capped by the service level.")


class RowApplyRequestSerializer(TableApplyRequestSerializer):
    rows = StrictIntegerField(min_value=1, help_text="Most rows per chunk.")


class GroupApplyRequestSerializer(TableApplyRequestSerializer):
    groupBy = StrictCharField(max_length=4000, help_text="Column(s), comma-separated.")
    orderBy = StrictCharField(required=False, allow_blank=True, max_length=4000, help_text="Column(s) within a group.")


class IndexApplyRequestSerializer(ExecutionRequestSerializer):
    times = StrictIntegerField(min_value=1, help_text="Calls the function with 1..times.")
    parallelFlag = StrictBooleanField(required=False, default=False)
    parallel = StrictIntegerField(required=False, min_value=1, help_text="Degree; capped by the service level.")


class ScriptWriteSerializer(serializers.Serializer):
    """POST scripts and PUT scripts/{name}."""

    name = StrictCharField(max_length=128, required=False)
    script = StrictCharField(trim_whitespace=False, required=False, help_text="Python source with the function.")
    description = StrictCharField(required=False, allow_blank=True, max_length=4000)
    isGlobal = StrictBooleanField(required=False)
    overwrite = StrictBooleanField(required=False, default=False)
    message = StrictCharField(
        required=False,
        allow_blank=True,
        max_length=VERSION_MESSAGE_MAX,
        help_text="Beyond Oracle: what changed, kept with the new version (when the source changes).",
    )

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError({"body": "Must be a JSON object."})
        return super().to_internal_value(data)


class TokenRequestSerializer(serializers.Serializer):
    grant_type = serializers.ChoiceField(choices=["password", "refresh_token"])
    username = StrictCharField(required=False)
    password = StrictCharField(required=False, trim_whitespace=False)
    refresh_token = StrictCharField(required=False)
    token = StrictCharField(required=False)

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError({"body": "Must be a JSON object."})
        return super().to_internal_value(data)


class TokenResponseSerializer(serializers.Serializer):
    accessToken = serializers.CharField()
    expiresIn = serializers.IntegerField()
    tokenType = serializers.CharField()


class ScriptRowSerializer(serializers.Serializer):
    OWNER = serializers.CharField(source="owner.username")
    NAME = serializers.CharField(source="name")
    SCRIPT = serializers.CharField(source="source")
    DESCRIPTION = serializers.CharField(source="description")
    GLOBAL = serializers.BooleanField(source="is_global")
    VERSION = serializers.IntegerField(source="current_version.number")
    DATE = serializers.DateTimeField(source="updated_at")


class DatasetWriteSerializer(serializers.Serializer):
    """POST datasets and PUT datasets/{name}: multipart/form-data with the file, or JSON without one."""

    name = StrictCharField(max_length=128, required=False)
    file = serializers.FileField(required=False, help_text="CSV (with a header row) or Parquet.")
    format = serializers.ChoiceField(choices=["csv", "parquet"], required=False, help_text="Guessed when absent.")
    description = serializers.CharField(required=False, allow_blank=True, max_length=4000)
    # Form fields arrive as text: "true"/"false" are accepted here.
    isGlobal = serializers.BooleanField(required=False, default=None, allow_null=True)
    overwrite = serializers.BooleanField(required=False, default=False)


class DatasetRowSerializer(serializers.Serializer):
    OWNER = serializers.CharField(source="owner.username")
    NAME = serializers.CharField(source="name")
    DESCRIPTION = serializers.CharField(source="description")
    GLOBAL = serializers.BooleanField(source="is_global")
    ROWS = serializers.IntegerField(source="row_count")
    COLUMNS = serializers.JSONField(source="schema")
    FORMAT = serializers.CharField(source="source_format")
    SIZE = serializers.IntegerField(source="size_bytes")
    DATE = serializers.DateTimeField(source="updated_at")


class GrantSerializer(serializers.Serializer):
    user = StrictCharField(max_length=150)


class ErrorSerializer(serializers.Serializer):
    errorMessage = serializers.CharField()
    errorCode = serializers.IntegerField()


class JobStatusSerializer(serializers.Serializer):
    createdDate = serializers.CharField(help_text="e.g. 2026-01-26 20:35:22 UTC")
    status = serializers.CharField(help_text='"job is still running"')
    elapsedTime = serializers.CharField(help_text="HH:MM:SS")
    attempt = serializers.IntegerField(
        help_text="omlweb's: the attempt running the job; above 1, a worker died and it restarted from the beginning"
    )
