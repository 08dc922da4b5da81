"""Parameter presets: named sets of keyword arguments a user keeps for a script.

A preset belongs to one user and one script (the owner's or one shared with them). The run form fills its
fields from one; the API runs with one by naming it (`"preset": "name"` in an execution body), the body's
own `parameters` overriding the preset's keys one by one.
"""

from __future__ import annotations

import json
import re
from typing import Any

from django.db import transaction
from django.db.models import QuerySet

from scripts_app.errors import BadRequest, ErrorCode, NotFound, PermissionDenied
from scripts_app.models import ParameterPreset, Script
from scripts_app.roles import can_run_script, is_read_only
from scripts_app.runner.validation import NestedTooDeeply, UnsupportedValue, loads_strict

PRESET_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9 _.\-]{0,63}"
# A preset's parameters as JSON text: the same order of size as a run's request body allows for them.
PRESET_MAX_BYTES = 64 * 1024
# How many presets one user keeps for one script.
PRESETS_PER_SCRIPT = 50


def presets_of(*, script: Script, user) -> QuerySet[ParameterPreset]:
    return ParameterPreset.objects.filter(script=script, owner=user).order_by("name")


def checked_parameters(parameters: Any) -> dict:
    """Parameters as a run takes them: a JSON object of keyword arguments that PostgreSQL can store."""
    if not isinstance(parameters, dict):
        raise BadRequest("A preset's parameters are a JSON object of keyword arguments.", code=ErrorCode.INVALID_PRESET)
    if any(not isinstance(key, str) or not key.isidentifier() for key in parameters):
        raise BadRequest("A preset's keys are Python names (keyword arguments).", code=ErrorCode.INVALID_PRESET)
    try:
        # The same checks a request's parameters pass: depth, finite numbers, text PostgreSQL can store.
        text = json.dumps(parameters, allow_nan=False)
        loads_strict(text)
        size = len(text.encode())
    except (UnsupportedValue, NestedTooDeeply, ValueError, TypeError, RecursionError) as error:
        raise BadRequest(f"Not parameters a run can take: {error}.", code=ErrorCode.INVALID_PRESET) from None
    if size > PRESET_MAX_BYTES:
        raise BadRequest(
            f"A preset holds at most {PRESET_MAX_BYTES // 1024} KiB of parameters (this one {size} bytes).",
            code=ErrorCode.INVALID_PRESET,
        )
    return parameters


def checked_name(name: Any) -> str:
    if not isinstance(name, str) or not re.fullmatch(PRESET_NAME_PATTERN, name.strip()):
        raise BadRequest(
            "A preset's name is 1 to 64 letters, digits, spaces, '_', '.' or '-', starting with a letter or digit.",
            code=ErrorCode.INVALID_PRESET,
        )
    return name.strip()


@transaction.atomic
def preset_save(*, script: Script, user, name: str, parameters: Any) -> tuple[ParameterPreset, bool]:
    """Create or replace the user's preset of that name; returns it and whether it is new."""
    if is_read_only(user):
        raise PermissionDenied("Auditors have read-only access: they do not save presets.")
    if not can_run_script(user, script):
        raise PermissionDenied("You may not run this script.")
    name = checked_name(name)
    parameters = checked_parameters(parameters)
    existing = presets_of(script=script, user=user).select_for_update().filter(name=name).first()
    if existing is not None:
        existing.parameters = parameters
        existing.save(update_fields=["parameters", "updated_at"])
        return existing, False
    if presets_of(script=script, user=user).count() >= PRESETS_PER_SCRIPT:
        raise BadRequest(
            f"At most {PRESETS_PER_SCRIPT} presets per script: delete one first.", code=ErrorCode.INVALID_PRESET
        )
    return ParameterPreset.objects.create(script=script, owner=user, name=name, parameters=parameters), True


def preset_get(*, script: Script, user, name: str) -> ParameterPreset:
    preset = presets_of(script=script, user=user).filter(name=name).first() if isinstance(name, str) else None
    if preset is None:
        raise NotFound(f"You have no preset {name!r} for {script.name}.", code=ErrorCode.PRESET_NOT_FOUND)
    return preset


def preset_delete(*, script: Script, user, name: str) -> None:
    if is_read_only(user):
        raise PermissionDenied("Auditors have read-only access: they do not delete presets.")
    preset_get(script=script, user=user, name=name).delete()


def with_preset(*, script: Script, user, preset: str | None, parameters: dict) -> dict:
    """A run's parameters: the named preset's, overridden key by key by those the request gives."""
    if not preset:
        return parameters
    return {**preset_get(script=script, user=user, name=preset).parameters, **parameters}
