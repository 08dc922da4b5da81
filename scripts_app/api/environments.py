"""Environments over the REST API: Oracle's list, and (beyond Oracle) admins create, change, rebuild, delete."""

from __future__ import annotations

from datetime import UTC

from django.urls import reverse
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from scripts_app.api.schema import message, result_of
from scripts_app.api.serializers import StrictBooleanField, StrictCharField
from scripts_app.environments.builder import human_size
from scripts_app.errors import PermissionDenied
from scripts_app.models import Environment
from scripts_app.roles import is_admin
from scripts_app.services import environments

ENV_SUMMARY = {
    "type": "object",
    "description": "Oracle's shape of an environment in GET envs.",
    "properties": {
        "name": {"type": "string"},
        "description": {"type": "string"},
        "size": {"type": ["string", "null"]},
        "number_of_installed_packages": {"type": ["integer", "null"]},
        "tags": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "required": ["name", "tags"],
}
ENV_LIST = {
    "type": "object",
    "properties": {
        "result": {
            "type": "object",
            "properties": {"envs": {"type": "array", "items": ENV_SUMMARY}},
            "required": ["envs"],
        }
    },
    "required": ["result"],
}
ENV_DETAIL = {
    "type": "object",
    "properties": {
        "result": {
            "type": "object",
            "description": "The environment: name, status, packages, python, lock, build times (and log, for admins).",
            "properties": {
                "name": {"type": "string"},
                "status": {"type": "string", "enum": ["BUILDING", "READY", "FAILED"]},
                "lock": {"type": ["string", "null"]},
            },
            "required": ["name"],
        }
    },
    "required": ["result"],
}
PRELOAD = {
    "type": "object",
    "properties": {
        "envName": {"type": "string"},
        "created": {"type": "string", "description": 'e.g. "Jul 31, 2025 01:37:19 UTC"'},
        "expires": {"type": "string"},
        "duration": {"type": "string", "description": 'e.g. "0 hrs, 27 mins, 38 secs"'},
    },
    "required": ["envName", "created", "expires", "duration"],
}


@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]})
class PackagesField(serializers.Field):
    """Requirement lines: one string (as a requirements file) or a list of strings."""

    default_error_messages = {"invalid": "Must be a string of requirement lines or a list of strings."}

    def to_internal_value(self, data):
        if isinstance(data, str):
            return data
        if isinstance(data, list) and all(isinstance(item, str) for item in data):
            return "\n".join(data)
        self.fail("invalid")

    def to_representation(self, value):
        return value


class InterpreterSerializer(serializers.Serializer):
    path = serializers.CharField()
    version = serializers.CharField()
    serviceOwn = serializers.BooleanField()
    worldReadable = serializers.BooleanField()


class EnvironmentWriteSerializer(serializers.Serializer):
    name = StrictCharField(max_length=64, required=False)
    description = StrictCharField(required=False, allow_blank=True, max_length=4000)
    packages = PackagesField(required=False)
    python = StrictCharField(required=False, max_length=500, help_text="Path of an interpreter of the host.")

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError({"body": "Must be a JSON object."})
        return super().to_internal_value(data)


def environment_detail(environment: Environment, *, with_log: bool) -> dict:
    body = {
        "name": environment.name,
        "description": environment.description,
        "status": environment.status,
        "packages": environment.packages,
        "python": environment.python,
        "pythonVersion": environment.python_version,
        "size": human_size(environment.size_bytes) if environment.size_bytes is not None else None,
        "sizeBytes": environment.size_bytes,
        "number_of_installed_packages": environment.package_count,
        "lock": environment.lock.text if environment.lock is not None else None,
        "generation": environment.generation,
        "buildStartedAt": environment.build_started_at,
        "buildFinishedAt": environment.build_finished_at,
    }
    if with_log:
        body["buildLog"] = environment.build_log
    return body


def _admin_only(request: Request) -> None:
    if not is_admin(request.user):
        raise PermissionDenied("Only admins manage environments.")


class EnvironmentListView(APIView):
    @extend_schema(responses={200: ENV_LIST}, summary="List environments (as Oracle's envs)", operation_id="envList")
    def get(self, request: Request, version: str) -> Response:
        return Response({"result": {"envs": environments.environment_summaries()}})

    @extend_schema(
        request=EnvironmentWriteSerializer,
        responses={201: ENV_DETAIL},
        parameters=[OpenApiParameter("Location", str, location=OpenApiParameter.HEADER, response=[201])],
        summary="Define an environment and start building it (admins)",
        operation_id="envCreate",
    )
    def post(self, request: Request, version: str) -> Response:
        _admin_only(request)
        body = EnvironmentWriteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        if "name" not in data:
            raise serializers.ValidationError({"name": "This field is required."})
        environment = environments.environment_create(
            by=request.user,
            name=data["name"],
            description=data.get("description", ""),
            packages=data.get("packages", ""),
            python=data.get("python"),
        )
        location = reverse("oml-env", kwargs={"version": version, "name": environment.name})
        return Response(
            {"result": environment_detail(environment, with_log=True)},
            status=201,
            headers={"Location": request.build_absolute_uri(location)},
        )


class EnvironmentDetailView(APIView):
    @extend_schema(responses={200: ENV_DETAIL}, summary="One environment, with its lock", operation_id="envGet")
    def get(self, request: Request, version: str, name: str) -> Response:
        if name == environments.DEFAULT_ENVIRONMENT:
            info = environments.default_info()
            return Response({"result": {**environments.default_summary(), "lock": info["lock"]}})
        environment = environments.environment_get(name=name)
        return Response({"result": environment_detail(environment, with_log=is_admin(request.user))})

    @extend_schema(
        request=EnvironmentWriteSerializer,
        responses={200: ENV_DETAIL},
        summary="Change an environment (admins); new packages or Python rebuild it",
        operation_id="envUpdate",
    )
    def put(self, request: Request, version: str, name: str) -> Response:
        _admin_only(request)
        environment = environments.environment_get(name=name)
        body = EnvironmentWriteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        if data.get("name", name) != name:
            raise serializers.ValidationError({"name": "Renaming an environment is not supported."})
        environment = environments.environment_update(
            environment=environment,
            description=data.get("description"),
            packages=data.get("packages"),
            python=data.get("python"),
        )
        return Response({"result": environment_detail(environment, with_log=True)})

    @extend_schema(
        responses={200: message("EnvironmentDeleted")},
        summary="Delete an environment (admins)",
        operation_id="envDelete",
    )
    def delete(self, request: Request, version: str, name: str) -> Response:
        _admin_only(request)
        environment = environments.environment_get(name=name)
        environments.environment_delete(environment=environment)
        return Response({"result": f"environment {name} deleted successfully"})


class EnvironmentRebuildView(APIView):
    @extend_schema(
        request=None,
        responses={202: ENV_DETAIL},
        summary="Build an environment afresh (admins)",
        operation_id="envRebuild",
    )
    def post(self, request: Request, version: str, name: str) -> Response:
        _admin_only(request)
        environment = environments.environment_get(name=name)
        environment = environments.environment_rebuild(environment=environment)
        return Response({"result": environment_detail(environment, with_log=True)}, status=202)


class InterpreterListView(APIView):
    @extend_schema(
        responses={200: result_of("InterpreterList", InterpreterSerializer(many=True))},
        summary="Interpreters environments can use",
        operation_id="interpreterList",
    )
    def get(self, request: Request, version: str) -> Response:
        rows = [
            {
                "path": interpreter.path,
                "version": interpreter.version,
                "serviceOwn": interpreter.is_service_own,
                "worldReadable": interpreter.world_readable,
            }
            for interpreter in environments.available_interpreters()
        ]
        return Response({"result": rows})


# Oracle's conda preloads (v2), on omlweb's environments


class PreloadRequestSerializer(serializers.Serializer):
    envName = StrictCharField(max_length=64)
    overwrite = StrictBooleanField(required=False, default=False)

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError({"body": "Must be a JSON object."})
        return super().to_internal_value(data)


def preload_row(preload) -> dict:
    """One preload as Oracle shows it: dates like "Jul 31, 2025 01:37:19 UTC", the age as words."""
    seconds = int((timezone.now() - preload.created_at).total_seconds())
    return {
        "envName": preload.environment.name,
        "created": _oracle_long_date(preload.created_at),
        "expires": _oracle_long_date(preload.expires_at),
        "duration": f"{seconds // 3600} hrs, {seconds % 3600 // 60} mins, {seconds % 60} secs",
    }


def _oracle_long_date(moment) -> str:
    return moment.astimezone(UTC).strftime("%b %d, %Y %H:%M:%S UTC")


class PreloadListView(APIView):
    @extend_schema(
        responses={
            200: {
                "type": "object",
                "properties": {"environments": {"type": "array", "items": PRELOAD}},
                "required": ["environments"],
            }
        },
        summary="The caller's preloaded environments (v2)",
        operation_id="preloadList",
    )
    def get(self, request: Request) -> Response:
        return Response({"environments": [preload_row(p) for p in environments.preloads_of(user=request.user)]})

    @extend_schema(
        request=PreloadRequestSerializer,
        responses={201: {"type": "object", "properties": {"result": PRELOAD}, "required": ["result"]}},
        summary="Preload an environment (v2; omlweb: checks it can run now and records the preload)",
        operation_id="preloadCreate",
    )
    def post(self, request: Request) -> Response:
        body = PreloadRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        preload = environments.preload_create(
            user=request.user, name=body.validated_data["envName"], overwrite=body.validated_data["overwrite"]
        )
        return Response({"result": preload_row(preload)}, status=201)


class PreloadDetailView(APIView):
    @extend_schema(
        responses={200: message("PreloadDeleted")},
        summary="Remove a preloaded environment (v2)",
        operation_id="preloadDelete",
    )
    def delete(self, request: Request, name: str) -> Response:
        environments.preload_delete(user=request.user, name=name)
        return Response({"result": f"Preloaded environment {name!r} deleted successfully"})
