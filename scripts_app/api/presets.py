"""Parameter presets over the API (beyond Oracle): list, create or replace, delete a script's presets.

An execution body names one with `"preset": "<name>"` (see docs/api.md): the preset's parameters, with
the body's own `parameters` overriding them key by key.
"""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from scripts_app.api.schema import message, result_of
from scripts_app.api.serializers import ParametersField
from scripts_app.services import presets, scripts

OWNER = OpenApiParameter(
    "owner", str, description="The script's owner, for another user's script shared with the caller."
)


class PresetSerializer(serializers.Serializer):
    name = serializers.CharField()
    parameters = serializers.DictField()
    updated = serializers.DateTimeField(source="updated_at")


class PresetWriteSerializer(serializers.Serializer):
    parameters = ParametersField(help_text="JSON object (or a string holding one) of keyword arguments.")

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError({"body": "Must be a JSON object."})
        return super().to_internal_value(data)


PRESET_ONE = result_of("PresetOne", PresetSerializer())
PRESET_LIST = result_of("PresetList", PresetSerializer(many=True))


def _script(request: Request, name: str):
    owner = request.query_params.get("owner") or None
    return scripts.script_resolve(caller=request.user, name=name, owner_name=owner)


class PresetListView(APIView):
    @extend_schema(
        parameters=[OWNER],
        responses={200: PRESET_LIST},
        summary="The caller's presets of a script",
        operation_id="presetList",
    )
    def get(self, request: Request, version: str, name: str) -> Response:
        rows = presets.presets_of(script=_script(request, name), user=request.user)
        return Response({"result": PresetSerializer(rows, many=True).data})


class PresetDetailView(APIView):
    @extend_schema(
        parameters=[OWNER],
        request=PresetWriteSerializer,
        responses={200: PRESET_ONE, 201: PRESET_ONE},
        summary="Create or replace one of the caller's presets of a script",
        operation_id="presetPut",
    )
    def put(self, request: Request, version: str, name: str, preset: str) -> Response:
        body = PresetWriteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        row, created = presets.preset_save(
            script=_script(request, name), user=request.user, name=preset, parameters=body.validated_data["parameters"]
        )
        return Response({"result": PresetSerializer(row).data}, status=201 if created else 200)

    @extend_schema(parameters=[OWNER], responses={200: message("PresetDeleted")}, operation_id="presetDelete")
    def delete(self, request: Request, version: str, name: str, preset: str) -> Response:
        presets.preset_delete(script=_script(request, name), user=request.user, name=preset)
        return Response({"result": "preset deleted successfully"})
