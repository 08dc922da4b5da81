"""The OpenAPI 3.1 document (GET /oml/api/schema): the shapes the API really answers, for generated clients.

Views declare their success answers with the helpers here; `postprocess` adds what every operation
shares (the OML error body for every error status, the Bearer scheme, Oracle's parameter names), so
no view can forget one. docs/api.md is the prose twin of this document.
"""

from __future__ import annotations

import re

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, inline_serializer
from rest_framework import serializers

from scripts_app.api.serializers import DatasetRowSerializer, ScriptRowSerializer

# Error statuses any operation may answer, always as the OML body {"errorMessage", "errorCode"}.
ERROR_STATUSES = {
    "400": "Bad request: invalid body or parameter, or the script failed (its error code says which).",
    "401": "No token, or an invalid, expired or revoked one.",
    "403": "The caller's role does not allow it.",
    "404": "No such endpoint, script, job, dataset or environment (or it is not the caller's).",
    "405": "Method not allowed on this path.",
    "406": "The Accept header excludes application/json.",
    "409": "Conflicts with what exists (an environment in use).",
    "413": "The request body is larger than the limit.",
    "415": "The body is not application/json (or multipart/form-data where a file is sent).",
    "429": "Too many requests or failed logins: wait for Retry-After seconds.",
    "500": "Internal error of the service.",
    "503": "Busy (every run slot taken) or a dependency (database, broker) is down: retry later.",
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}
V1_HEADERS = {
    "Deprecation": {
        "description": "v1 only (RFC 9745): when v1 is deprecated, as @<unix time>.",
        "schema": {"type": "string"},
    },
    "Sunset": {"description": "v1 only (RFC 8594): when v1 is retired, as an HTTP date.", "schema": {"type": "string"}},
}
# Python names of path parameters, as Oracle's reference names them.
PARAMETER_NAMES = {"owner": "ownerName", "job_id": "jobId", "user": "userName", "schedule_id": "scheduleId"}
NAME_BY_RESOURCE = {
    "scripts": "scriptName",
    "datasets": "datasetName",
    "envs": "envName",
    "conda": "envName",
    "do-eval": "scriptName",
    "table-apply": "scriptName",
    "row-apply": "scriptName",
    "group-apply": "scriptName",
    "index-apply": "scriptName",
}


EXECUTION = re.compile(
    r"/(?P<endpoint>do-eval|table-apply|row-apply|group-apply|index-apply)/\{scriptName\}(?P<owner>/\{ownerName\})?$"
)


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "scripts_app.api.auth.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An OML token (POST /omlusers/api/oauth2/v1/token) or a personal API token.",
        }


def result_of(name: str, field: serializers.Field) -> serializers.Serializer:
    """Oracle's envelope: {"result": <field>}."""
    return inline_serializer(name=name, fields={"result": field})


def message(name: str) -> serializers.Serializer:
    """{"result": "<what was done>"}."""
    return result_of(name, serializers.CharField())


ANY_RESULT = result_of("RunResult", serializers.JSONField(help_text="The function's return value, as JSON."))
SCRIPT_ONE = result_of("Script", ScriptRowSerializer())
SCRIPT_LIST = result_of("ScriptList", ScriptRowSerializer(many=True))
DATASET_ONE = result_of("Dataset", DatasetRowSerializer())
DATASET_LIST = result_of("DatasetList", DatasetRowSerializer(many=True))


class DatasetPreviewSerializer(DatasetRowSerializer):
    PREVIEW = serializers.JSONField(help_text="The first rows, as records.")


DATASET_PREVIEW = result_of("DatasetWithPreview", DatasetPreviewSerializer())
JOB_RESULT = inline_serializer(
    name="JobResult",
    fields={
        "result": serializers.JSONField(help_text="The function's return value, as a sync run answers it."),
        "comments": serializers.CharField(required=False, help_text="v2: the job's comments, when it has any."),
    },
)


class JobRowSerializer(serializers.Serializer):
    job_id = serializers.CharField()
    createdDate = serializers.CharField(help_text="e.g. 2026-01-26 20:35:22 UTC")
    status = serializers.CharField(help_text='"FINISH" or "job is still running"')
    elapsedTime = serializers.CharField(help_text="HH:MM:SS")
    state = serializers.CharField(help_text="omlweb's status: QUEUED, RUNNING, SUCCEEDED, FAILED, ...")
    scriptName = serializers.CharField()
    owner = serializers.CharField()
    service = serializers.CharField()
    comments = serializers.CharField(allow_blank=True)


JOB_LIST = inline_serializer(
    name="JobList",
    fields={
        "result": JobRowSerializer(many=True),
        "limit": serializers.IntegerField(),
        "offset": serializers.IntegerField(),
        "hasMore": serializers.BooleanField(),
    },
)


class LinkSerializer(serializers.Serializer):
    rel = serializers.CharField()
    href = serializers.CharField()


class VersionSerializer(serializers.Serializer):
    version = serializers.CharField()
    isLatest = serializers.BooleanField()
    lifecycle = serializers.CharField(help_text='"ACTIVE" or "DEPRECATED@<date>"')
    links = LinkSerializer(many=True)


VERSION_CATALOG = inline_serializer(name="VersionCatalog", fields={"items": VersionSerializer(many=True)})
JOB_ACCEPTED = OpenApiResponse(description="Async job accepted: no body; poll the URL in Location.")
JOB_LOCATION = OpenApiParameter(
    "Location",
    str,
    location=OpenApiParameter.HEADER,
    response=[201],
    description="Absolute URL of the job's status (GET .../jobs/{jobId}).",
)


def postprocess(result: dict, generator, request, public) -> dict:
    """Every operation: Oracle's path parameter names, the OML error body for each error status."""
    components = result.setdefault("components", {})
    components.setdefault("schemas", {})["Error"] = {
        "type": "object",
        "properties": {"errorMessage": {"type": "string"}, "errorCode": {"type": "integer"}},
        "required": ["errorMessage", "errorCode"],
    }
    components.setdefault("responses", {})
    for status, description in ERROR_STATUSES.items():
        response = {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        if status in ("429", "503"):
            response["headers"] = RETRY_AFTER
        if status == "401":
            response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        components["responses"][f"Error{status}"] = response
    paths = {}
    for path, operations in result["paths"].items():
        renames = _renames(path)
        for name, new in renames.items():
            path = path.replace(f"{{{name}}}", f"{{{new}}}")
        execution = EXECUTION.search(path)
        for operation in operations.values():
            if execution:
                # One view serves both paths: Oracle's names, the owner variant suffixed.
                words = execution["endpoint"].split("-")
                operation["operationId"] = (
                    words[0] + "".join(w.title() for w in words[1:]) + ("Owner" if execution["owner"] else "")
                )
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path":
                    parameter["name"] = renames.get(parameter["name"], parameter["name"])
                    if parameter["name"] == "version":
                        parameter["schema"] = {"type": "string", "enum": ["v1", "v2"]}
                        parameter["description"] = "v1 is deprecated (Deprecation and Sunset headers); v2 is current."
            responses = operation.setdefault("responses", {})
            for status in ERROR_STATUSES:
                responses[status] = {"$ref": f"#/components/responses/Error{status}"}
            if "{version}" in path:
                for status, response in responses.items():
                    if not status.startswith("4") and not status.startswith("5") and "$ref" not in response:
                        response.setdefault("headers", {}).update(V1_HEADERS)
        paths[path] = operations
    result["paths"] = paths
    return result


def _renames(path: str) -> dict[str, str]:
    renames = dict(PARAMETER_NAMES)
    segments = path.split("/")
    for position, segment in enumerate(segments):
        if segment == "{name}" and position > 0:
            renames["name"] = NAME_BY_RESOURCE.get(segments[position - 1], "name")
    return renames
