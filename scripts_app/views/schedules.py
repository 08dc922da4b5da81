"""Schedule pages: list, one schedule with its next runs and its runs, create, edit, pause, resume, delete;
and the form's preview of the next five run times (htmx)."""

from __future__ import annotations

from uuid import UUID

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from scripts_app import roles
from scripts_app.errors import NotFound, OmlError
from scripts_app.errors import PermissionDenied as OmlPermissionDenied
from scripts_app.models import Run, Schedule, Script
from scripts_app.schedule_forms import ScheduleForm, time_zone_names
from scripts_app.services import schedules
from scripts_app.views.base import HtmxHttpRequest, paginate, require_writer

PER_PAGE = 25
RUNS_SHOWN = 20
# Which field a service refusal belongs to, by what its message talks about.
ERROR_FIELDS = (
    ("cron expression", "cron"),
    ("interval", "interval_seconds"),
    ("time zone", "time_zone"),
    ("version", "version"),
    ("environment", "env_name"),
    ("timeout", "timeout_seconds"),
    ("retr", "max_retries"),
)


def _get(request, pk) -> Schedule:
    try:
        return schedules.schedule_get(user=request.user, pk=pk)
    except NotFound:
        raise Http404("No such schedule.") from None


def _for_change(request, pk) -> Schedule:
    _get(request, pk)
    try:
        return schedules.schedule_for_change(user=request.user, pk=pk)
    except OmlPermissionDenied as error:
        raise PermissionDenied(error.message) from None


def _runnable_scripts(user):
    """The scripts a writer may run: for an analyst the ones they see (own, global, granted), for an admin all."""
    return roles.scripts_visible_to(user, Script.objects.select_related("owner")).order_by("name", "owner__username")


@require_GET
@login_required
def schedule_list(request: HtmxHttpRequest) -> HttpResponse:
    items = schedules.schedules_visible_to(request.user).order_by("name", "created_at")
    return render(
        request,
        "schedules/list.html",
        {
            "page": paginate(request, items, PER_PAGE),
            "may_create": not roles.is_read_only(request.user),
            "sees_all": roles.sees_everything(request.user),
        },
    )


@require_GET
@login_required
def schedule_detail(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    schedule = _get(request, pk)
    recent = list(Run.objects.filter(schedule=schedule).order_by("-created_at")[:RUNS_SHOWN])
    timing = schedules.Timing.of(schedule)
    upcoming = []
    if schedule.enabled and schedule.next_run_at:
        upcoming = [schedule.next_run_at]
        while len(upcoming) < schedules.PREVIEW_COUNT:
            upcoming.append(timing.after(upcoming[-1]))
    return render(
        request,
        "schedules/detail.html",
        {
            "schedule": schedule,
            "description": timing.describe(),
            "upcoming": [(moment, _local(moment, timing.zone)) for moment in upcoming],
            "recent": recent,
            "may_change": _may_change(request.user, schedule),
        },
    )


def _may_change(user, schedule: Schedule) -> bool:
    return not roles.is_read_only(user) and (schedule.owner_id == user.pk or roles.is_admin(user))


@require_http_methods(["GET", "POST"])
@login_required
def schedule_create(request: HtmxHttpRequest) -> HttpResponse:
    require_writer(request)
    initial = {}
    script_id = request.GET.get("script", "")
    if script_id:
        initial["script"] = Script.objects.filter(pk=script_id).first() if _is_uuid(script_id) else None
    return _form(request, None, initial)


@require_http_methods(["GET", "POST"])
@login_required
def schedule_edit(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    schedule = _for_change(request, pk)
    return _form(request, schedule, ScheduleForm.initial_from(schedule))


def _form(request: HtmxHttpRequest, schedule: Schedule | None, initial: dict) -> HttpResponse:
    scripts = _runnable_scripts(request.user)
    form = ScheduleForm(request.POST or None, initial=initial, scripts=scripts)
    if request.method == "POST" and form.is_valid():
        data = dict(form.cleaned_data)
        script = data["script"]
        number = data.pop("version")
        data["version"] = None
        if number is not None:
            data["version"] = script.versions.filter(number=number).first()
            if data["version"] is None:
                form.add_error("version", f"Script {script.name} has no version {number}.")
        data["cron"] = data["cron"] or ""
        if form.is_valid():
            try:
                saved = schedules.schedule_save(user=request.user, schedule=schedule, **data)
            except OmlError as error:
                form.add_error(_field_of(error.message), error.message)
            else:
                messages.success(request, f"Schedule {saved.name} saved; next run {_stamp(saved.next_run_at)}.")
                return redirect("web:schedule_detail", pk=saved.pk)
    return render(
        request,
        "schedules/form.html",
        {"form": form, "schedule": schedule, "time_zones": time_zone_names(), "preview": _preview_of(form)},
        status=400 if form.is_bound and form.errors else 200,
    )


def _field_of(message: str) -> str | None:
    lowered = message.lower()
    for words, field in ERROR_FIELDS:
        if words in lowered:
            return field
    return None


def _preview_of(form: ScheduleForm) -> dict:
    data = (
        form.data
        if form.is_bound
        else {
            name: form.get_initial_for_field(form.fields[name], name)
            for name in ("cron", "interval_seconds", "time_zone")
        }
    )
    return _preview(data.get("cron") or "", data.get("interval_seconds") or "", data.get("time_zone") or "UTC")


def _preview(cron: str, interval: str, time_zone: str) -> dict:
    try:
        seconds = int(interval) if str(interval).strip() else None
    except ValueError:
        return {"error": "The interval must be a whole number of seconds."}
    if not cron.strip() and seconds is None:
        return {"empty": True}
    try:
        answer = schedules.preview(cron=cron, interval_seconds=seconds, time_zone=time_zone.strip() or "UTC")
    except OmlError as error:
        return {"error": error.message}
    zone = schedules.zone(time_zone.strip() or "UTC")
    return {
        "description": answer["description"],
        "moments": [(moment, _local(moment, zone)) for moment in answer["nextRuns"]],
    }


@require_GET
@login_required
def schedule_preview(request: HtmxHttpRequest) -> HttpResponse:
    """The next five run times of the timing being typed (or what is wrong with it); writes nothing."""
    preview = _preview(
        request.GET.get("cron", ""), request.GET.get("interval_seconds", ""), request.GET.get("time_zone", "UTC")
    )
    return render(request, "schedules/form.html#preview", {"preview": preview})


@require_POST
@login_required
def schedule_pause(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    schedule = schedules.schedule_pause(schedule=_for_change(request, pk))
    messages.success(request, f"Schedule {schedule.name} paused: it starts no run until it is resumed.")
    return redirect("web:schedule_detail", pk=schedule.pk)


@require_POST
@login_required
def schedule_resume(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    schedule = schedules.schedule_resume(schedule=_for_change(request, pk))
    messages.success(request, f"Schedule {schedule.name} resumed; next run {_stamp(schedule.next_run_at)}.")
    return redirect("web:schedule_detail", pk=schedule.pk)


@require_http_methods(["GET", "POST"])
@login_required
def schedule_delete(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    schedule = _for_change(request, pk)
    if request.method == "POST":
        name = schedule.name
        schedules.schedule_delete(schedule=schedule)
        messages.success(request, f"Schedule {name} deleted; the runs it started stay in the history.")
        return redirect("web:schedule_list")
    return render(
        request,
        "schedules/confirm_delete.html",
        {"schedule": schedule, "run_count": Run.objects.filter(schedule=schedule).count()},
    )


def _local(moment, zone) -> str:
    """A run time on the schedule's own clock (the date filter would show the site's)."""
    return moment.astimezone(zone).strftime("%a %Y-%m-%d %H:%M:%S %Z")


def _stamp(moment) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M:%S %Z") if moment else "—"


def _is_uuid(value: str) -> bool:
    try:
        UUID(value)
    except ValueError:
        return False
    return True
