"""Compare two runs: their versions' sources, their parameters, their data by key, their figures."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from scripts_app import compare, results, roles
from scripts_app.models import Run
from scripts_app.views.base import HtmxHttpRequest, visible_run_or_404

# Runs of the same script offered to compare with, newest first.
COMPARE_CHOICES = 20


def compare_choices(user, run: Run) -> list[Run]:
    """Other finished runs of the run's script that the user may see: the run page's "Compare with" list."""
    if run.script_version.script_id is None:
        return []
    others = roles.runs_visible_to(user, Run.objects.filter(script_version__script_id=run.script_version.script_id))
    return list(
        others.exclude(pk=run.pk)
        .filter(status__in=Run.FINISHED)
        .select_related("script_version")
        .only("id", "created_at", "status", "script_version__number")
        .order_by("-created_at")[:COMPARE_CHOICES]
    )


@require_GET
@login_required
def run_compare(request: HtmxHttpRequest) -> HttpResponse:
    if not request.GET.get("a") or not request.GET.get("b"):
        raise Http404("Choose two runs to compare.")
    first, second = (visible_run_or_404(request, _uuid(request.GET[name])) for name in ("a", "b"))
    # Before and after in time, whichever page the comparison was started from.
    old, new = sorted((first, second), key=lambda run: run.created_at)
    old_table = results.as_table(old.result) if old.status == Run.Status.SUCCEEDED else None
    new_table = results.as_table(new.result) if new.status == Run.Status.SUCCEEDED else None
    context: dict[str, Any] = {
        "old": old,
        "new": new,
        "source_diff": compare.source_diff(
            old.script_version.source,
            new.script_version.source,
            old_label=f"v{old.script_version.number} (run {str(old.pk)[:8]})",
            new_label=f"v{new.script_version.number} (run {str(new.pk)[:8]})",
        )
        if old.script_version_id != new.script_version_id
        else None,
        "parameters": compare.parameter_diff(old.parameters or {}, new.parameters or {}),
        "table_diff": None,
        "key_candidates": [],
        "value_diff": None,
        "old_images": list(old.images.all()),
        "new_images": list(new.images.all()),
    }
    if old_table is not None and new_table is not None:
        context["table_diff"] = compare.table_diff(old_table, new_table, key=request.GET.get("key") or None)
        context["key_candidates"] = compare.key_candidates(old_table, new_table)
    elif old.status == new.status == Run.Status.SUCCEEDED:
        context["value_diff"] = compare.source_diff(
            results.as_pretty_json(old.result),
            results.as_pretty_json(new.result),
            old_label=f"run {str(old.pk)[:8]}",
            new_label=f"run {str(new.pk)[:8]}",
        )
    return render(request, "runs/compare.html", context)


def _uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise Http404("No such run.") from None
