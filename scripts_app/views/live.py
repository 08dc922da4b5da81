"""A running run's page, live: its output as it is printed, its state, clock and timeline.

The page polls GET runs/<id>/live/?after=<row>&attempt=<n>&seen=<state> with htmx every
OMLWEB_LIVE_POLL_SECONDS. The answer carries only what is new: the output rows after `after`, appended
to the output panes (hx-swap-oob="beforeend"), the clock and the timeline; the status sentence (an
aria-live region) only when it changed, so a screen reader hears "Running" once, not every second.
Polling was chosen over server-sent events: a held connection per watcher would take one of the
service's few synchronous workers for the whole run, while a poll costs two indexed queries a second
and works through every proxy. Once the run has ended, or another attempt took it over, the answer is
the whole run block again (HX-Retarget), and a finished run's answer (286) stops the polling.
"""

from __future__ import annotations

from uuid import UUID

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET
from django_htmx.http import HttpResponseStopPolling

from scripts_app.models import Run
from scripts_app.services import live
from scripts_app.views.base import HtmxHttpRequest, visible_run_or_404


def live_context(run: Run, *, after: int = 0) -> dict:
    """What the live partial shows of a run not finished: new output after row `after`, state, clock, steps."""
    position = live.queue_position(run)
    elapsed = live.elapsed_seconds(run)
    return {
        "output": live.output_after(run, after),
        "position": position,
        "waiting": live.clock(elapsed["waiting"]) if "waiting" in elapsed else None,
        "running": live.clock(elapsed["running"]) if "running" in elapsed else None,
        "steps": live.timeline(run),
        "poll_seconds": settings.OMLWEB_LIVE_POLL_SECONDS,
        "state_key": live.state_key(run, position),
    }


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


@require_GET
@login_required
def run_live(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    run = visible_run_or_404(request, pk)
    if not request.htmx:
        return redirect("web:run_detail", run.pk)
    after = _int(request.GET.get("after"))
    if run.is_finished or after is None or _int(request.GET.get("attempt")) != run.attempts:
        # Ended, or started again by another attempt: the whole run block, as a fresh page shows it.
        from scripts_app.views.runs import _run_context

        response = render(request, "runs/detail.html#live", _run_context(request, run))
        response["HX-Retarget"] = "#run-live"
        response["HX-Reswap"] = "outerHTML"
        if run.is_finished:
            response.status_code = HttpResponseStopPolling.status_code
        return response
    context = {"run": run, **live_context(run, after=after)}
    context["status_changed"] = context["state_key"] != request.GET.get("seen")
    return render(request, "runs/_live.html#update", context)
