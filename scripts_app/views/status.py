"""The service page: what the status endpoint says, for admins in a browser."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from scripts_app import roles
from scripts_app.services.jobs import broker
from scripts_app.views.base import HtmxHttpRequest


@require_GET
@login_required
def service_status(request: HtmxHttpRequest) -> HttpResponse:
    if not roles.is_admin(request.user):
        raise PermissionDenied("Only admins may see the service's status.")
    return render(request, "status.html", {"status": broker.service_status()})
