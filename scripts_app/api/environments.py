"""Environments over the REST API: Oracle's list, and (beyond Oracle) admins create, change, rebuild, delete."""

from __future__ import annotations

from datetime import UTC

from django.urls import reverse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from scripts_app.api.serializers import StrictBooleanField, StrictCharField
from scripts_app.environments.builder import human_size
from scripts_app.errors import PermissionDenied
from scripts_app.models import Environment
from scripts_app.roles import is_admin
from scripts_app.services import environments

ERRORS = dict.fromkeys((400, 401, 403, 404, 409), OpenApiTypes.OBJECT)


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
        "lock": environment.lock.text if environment.lock_id else None,
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
    @extend_schema(responses={200: OpenApiTypes.OBJECT, **ERRORS}, summary="List environments (as Oracle's envs)")
    def get(self, request: Request, version: str) -> Response:
        return Response({"result": {"envs": environments.environment_summaries()}})

    @extend_schema(
        request=EnvironmentWriteSerializer,
        responses={201: OpenApiTypes.OBJECT, **ERRORS},
        summary="Define an environment and start building it (admins)",
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
    @extend_schema(responses={200: OpenApiTypes.OBJECT, **ERRORS}, summary="One environment, with its lock")
    def get(self, request: Request, version: str, name: str) -> Response:
        if name == environments.DEFAULT_ENVIRONMENT:
            info = environments.default_info()
            return Response({"result": {**environments.default_summary(), "lock": info["lock"]}})
        environment = environments.environment_get(name=name)
        return Response({"result": environment_detail(environment, with_log=is_admin(request.user))})

    @extend_schema(
        request=EnvironmentWriteSerializer,
        responses={200: OpenApiTypes.OBJECT, **ERRORS},
        summary="Change an environment (admins); new packages or Python rebuild it",
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

    @extend_schema(responses={200: OpenApiTypes.OBJECT, **ERRORS}, summary="Delete an environment (admins)")
    def delete(self, request: Request, version: str, name: str) -> Response:
        _admin_only(request)
        environment = environments.environment_get(name=name)
        environments.environment_delete(environment=environment)
        return Response({"result": f"environment {name} deleted successfully"})


class EnvironmentRebuildView(APIView):
    @extend_schema(
        request=None, responses={202: OpenApiTypes.OBJECT, **ERRORS}, summary="Build an environment afresh (admins)"
    )
    def post(self, request: Request, version: str, name: str) -> Response:
        _admin_only(request)
        environment = environments.environment_get(name=name)
        environment = environments.environment_rebuild(environment=environment)
        return Response({"result": environment_detail(environment, with_log=True)}, status=202)


class InterpreterListView(APIView):
    @extend_schema(responses={200: OpenApiTypes.OBJECT, **ERRORS}, summary="Interpreters environments can use")
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
    @extend_schema(responses={200: OpenApiTypes.OBJECT, **ERRORS}, summary="The caller's preloaded environments (v2)")
    def get(self, request: Request) -> Response:
        return Response({"environments": [preload_row(p) for p in environments.preloads_of(user=request.user)]})

    @extend_schema(
        request=PreloadRequestSerializer,
        responses={201: OpenApiTypes.OBJECT, **ERRORS},
        summary="Preload an environment (v2; omlweb: checks it can run now and records the preload)",
    )
    def post(self, request: Request) -> Response:
        body = PreloadRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        preload = environments.preload_create(
            user=request.user, name=body.validated_data["envName"], overwrite=body.validated_data["overwrite"]
        )
        return Response({"result": preload_row(preload)}, status=201)


class PreloadDetailView(APIView):
    @extend_schema(responses={200: OpenApiTypes.OBJECT, **ERRORS}, summary="Remove a preloaded environment (v2)")
    def delete(self, request: Request, name: str) -> Response:
        environments.preload_delete(user=request.user, name=name)
        return Response({"result": f"Preloaded environment {name!r} deleted successfully"})
