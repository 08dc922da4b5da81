"""What every page view shares: the typed request, permission look-ups and pagination."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Page, Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django_htmx.middleware import HtmxDetails

from scripts_app import roles
from scripts_app.api.errors import json_error
from scripts_app.api.middleware import API_PREFIXES
from scripts_app.errors import ErrorCode, OmlError
from scripts_app.models import Run, Script


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def client_address(request: HttpRequest) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


def login_locked_out(request: HttpRequest, original_response=None, credentials=None) -> HttpResponse:
    """django-axes' answer to a sign-in refused for too many failures (AXES_LOCKOUT_CALLABLE).

    The token endpoint gets Oracle's error body with 429; a browser gets a page saying how long to wait.
    Retry-After is the whole cool-off: each failure during the lockout starts it again.
    """
    seconds = int(settings.AXES_COOLOFF_TIME.total_seconds())
    minutes = max(1, round(seconds / 60))
    message = (
        f"Too many failed sign-ins for this username from your address: sign-in is locked for "
        f"{minutes} minute{'s' if minutes != 1 else ''} after the last attempt."
    )
    response: HttpResponse
    if request.path.startswith(API_PREFIXES):
        response = json_error(message, ErrorCode.LOGIN_LOCKED, 429)
    else:
        response = render(request, "registration/locked_out.html", {"message": message}, status=429)
    response["Retry-After"] = str(seconds)
    return response


def visible_script_or_404(request: HttpRequest, pk: Any) -> Script:
    """The script, if the user may read it; else 404, so that a private script's existence stays private."""
    script = Script.objects.select_related("owner", "current_version").filter(pk=pk).first()
    if script is None or not roles.can_view_script(request.user, script):
        raise Http404("No such script.")
    return script


def editable_script_or_404(request: HttpRequest, pk: Any) -> Script:
    script = visible_script_or_404(request, pk)
    if not roles.can_edit_script(request.user, script):
        raise PermissionDenied("You may not change this script.")
    return script


def visible_run_or_404(request: HttpRequest, pk: Any, *, defer: tuple[str, ...] = ()) -> Run:
    """The run if this user may see it; `defer` names large fields read only when used."""
    run = Run.objects.select_related("user", "script_version__script__owner").defer(*defer).filter(pk=pk).first()
    if run is None or not roles.can_view_run(request.user, run):
        raise Http404("No such run.")
    return run


def refusals_as_messages(*, back_to: Callable[..., str]) -> Callable:
    """For a page action without a form: the pages' one mapping of a service's refusal (an OmlError)
    there. Its message is shown on the page `back_to(**the view's URL arguments)` names."""

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @functools.wraps(view)
        def refusing(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                return view(request, *args, **kwargs)
            except OmlError as error:
                messages.error(request, error.message)
                return redirect(back_to(**kwargs))

        return refusing

    return decorate


def require_writer(request: HttpRequest) -> None:
    if roles.is_read_only(request.user):
        raise PermissionDenied("Auditors have read-only access.")


def paginate(request: HttpRequest, items, per_page: int) -> Page:
    return Paginator(items, per_page).get_page(request.GET.get("page"))
