"""The service pages: what the status endpoint says, and every worker's health, for admins; and /metrics."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST

from scripts_app import roles
from scripts_app.api.wire import hms, oracle_date
from scripts_app.services import heartbeats, metrics
from scripts_app.services.jobs import broker
from scripts_app.views.base import HtmxHttpRequest


@require_GET
@login_required
def service_status(request: HtmxHttpRequest) -> HttpResponse:
    if not roles.is_admin(request.user):
        raise PermissionDenied("Only admins may see the service's status.")
    return render(request, "status.html", {"status": broker.service_status()})


@require_GET
@never_cache
@login_required
def worker_health(request: HtmxHttpRequest) -> HttpResponse:
    """Every worker and web process of every host, its queues and runner; each queue and its warnings."""
    if not roles.is_admin(request.user):
        raise PermissionDenied("Only admins may see the workers' health.")
    now = timezone.now()
    warn_after = settings.OMLWEB_QUEUE_WAIT_WARN_SECONDS
    levels = metrics.queue_levels(now)
    for level in levels:
        level["oldest_wait"] = hms(timedelta(seconds=level["oldest_age"])) if level["depth"] else None
        level["waits_too_long"] = level["depth"] > 0 and level["oldest_age"] > warn_after
        level["unserved"] = level["workers"] == 0
    processes = heartbeats.processes(now=now)
    hosts: dict[str, list[dict]] = {}
    for process in processes:
        hosts.setdefault(process["row"].host, []).append(process)
    context = {
        "levels": levels,
        "hosts": sorted(hosts.items()),
        "warnings": [level for level in levels if level["waits_too_long"] or level["unserved"]],
        "warn_after": hms(timedelta(seconds=warn_after)),
        "gone_after": int(settings.OMLWEB_WORKER_GONE_SECONDS),
        "now": oracle_date(now),
    }
    template = "workers.html#health" if request.htmx else "workers.html"
    return render(request, template, context)


@require_GET
@never_cache
def prometheus_metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus' text format, for a scraper with the metrics token or from an allowed address."""
    if not metrics.allowed(
        authorization=request.headers.get("Authorization", ""), address=request.META.get("REMOTE_ADDR", "")
    ):
        response = HttpResponse(
            "Metrics need the bearer token OMLWEB_METRICS_TOKEN or an address in OMLWEB_METRICS_ALLOW.\n",
            status=403,
            content_type="text/plain; charset=utf-8",
        )
        response["WWW-Authenticate"] = 'Bearer realm="omlweb metrics"'
        return response
    return HttpResponse(metrics.render(), content_type=CONTENT_TYPE_LATEST)
