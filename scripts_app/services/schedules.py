"""Schedules: a script that runs itself on a cron expression or a fixed interval, in a time zone.

The scheduler (`manage.py run_scheduler`, started by `manage.py serve`) is a small loop over the
database, not Celery beat: each pass takes the schedules whose `next_run_at` has come (an indexed
query) and fires each in a transaction of its own. Firing advances `next_run_at` with a conditional
UPDATE (compare-and-set, under a row lock taken with SKIP LOCKED where the database has it), and the run
it starts carries (schedule, scheduled_for), unique for first attempts: two scheduler processes started
by mistake never start the same occurrence twice, whatever order they run in.

Runs start through the async job path: `start_run` is the one place that hands a RunRequest to
`pipeline.start_run`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from cronsim import CronSim, CronSimError
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Min, Q
from django.utils import timezone

from scripts_app import roles
from scripts_app.errors import BadRequest, ErrorCode, NotFound, OmlError, PermissionDenied
from scripts_app.models import Run, Schedule
from scripts_app.services import audit, environments, pipeline, retries
from scripts_app.services.pipeline import RunRequest

logger = logging.getLogger(__name__)

ACTIVE = (Run.Status.QUEUED, Run.Status.RUNNING)
PREVIEW_COUNT = 5
# Schedules fired per pass at most; a pass that fired this many runs again at once.
BATCH = 500
# How far forward a missed schedule's occurrences are walked one by one (beyond: from now, backwards).
WALK_LIMIT = 2000


def invalid(message: str) -> BadRequest:
    return BadRequest(message, code=ErrorCode.INVALID_SCHEDULE)


# Timing


@dataclasses.dataclass(frozen=True)
class Timing:
    """When a schedule runs: a cron expression (in its time zone) or every `interval_seconds` from `anchor`."""

    cron: str
    interval_seconds: int | None
    time_zone: str
    anchor: datetime

    @classmethod
    def of(cls, schedule: Schedule) -> Timing:
        return cls(schedule.cron, schedule.interval_seconds, schedule.time_zone, schedule.anchor_at)

    @property
    def zone(self) -> ZoneInfo:
        return zone(self.time_zone)

    def after(self, moment: datetime) -> datetime:
        """The first occurrence strictly after `moment` (UTC)."""
        if self.cron:
            return next(CronSim(self.cron, moment.astimezone(self.zone))).astimezone(UTC)
        step = self.step()
        if moment < self.anchor:
            return self.anchor
        return self.anchor + step * (math.floor((moment - self.anchor) / step) + 1)

    def latest(self, start: datetime, now: datetime) -> tuple[datetime, int]:
        """The last occurrence from `start` (an occurrence, <= now) up to `now`, and how many came before it."""
        if not self.cron:
            step = self.step()
            count = math.floor((now - start) / step)
            return start + step * count, count
        latest, count = start, 0
        for moment in CronSim(self.cron, start.astimezone(self.zone)):
            if moment > now:
                return latest.astimezone(UTC), count
            latest, count = moment, count + 1
            if count >= WALK_LIMIT:
                break
        # Down for a very long time: the last occurrence, counted backwards from now.
        last = next(CronSim(self.cron, (now + timedelta(microseconds=1)).astimezone(self.zone), reverse=True))
        return last.astimezone(UTC), count

    def step(self) -> timedelta:
        """A fixed interval's step (a timing without cron has its interval: checked when saved)."""
        assert self.interval_seconds is not None, "an interval schedule without its interval"
        return timedelta(seconds=self.interval_seconds)

    def upcoming(self, now: datetime, count: int = PREVIEW_COUNT) -> list[datetime]:
        moments, moment = [], now
        for _ in range(count):
            moment = self.after(moment)
            moments.append(moment)
        return moments

    def describe(self) -> str:
        if not self.cron:
            return f"Every {_seconds_text(self.interval_seconds or 0)}"
        try:
            return f"{CronSim(self.cron, datetime.now(self.zone)).explain()} ({self.time_zone})"
        except Exception:
            return f"{self.cron} ({self.time_zone})"


def _seconds_text(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0 and seconds >= size:
            value = seconds // size
            return f"{value} {unit}{'s' if value != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


@functools.cache
def zone_names() -> frozenset[str]:
    """Every IANA name this host knows (a walk of the tz database: read once per process)."""
    return frozenset(available_timezones())


def zone(name: str) -> ZoneInfo:
    try:
        if name not in zone_names():
            raise ZoneInfoNotFoundError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise invalid(f"Unknown time zone {name!r}: use an IANA name such as 'Europe/Paris' or 'UTC'.") from None


def timing_check(*, cron: str, interval_seconds: int | None, time_zone: str, now: datetime | None = None) -> Timing:
    """The schedule's timing, or a 400 (code 1061) saying what is wrong with it."""
    now = now or timezone.now()
    cron = (cron or "").strip()
    zone(time_zone)
    minimum = settings.OMLWEB_SCHEDULE_MIN_INTERVAL_SECONDS
    if bool(cron) == bool(interval_seconds):
        raise invalid("Give either a cron expression or an interval in seconds (one of them, not both).")
    if interval_seconds is not None and interval_seconds < minimum:
        raise invalid(f"The interval must be at least {minimum} seconds (OMLWEB_SCHEDULE_MIN_INTERVAL_SECONDS).")
    timing = Timing(cron, interval_seconds, time_zone, now)
    if cron:
        if len(cron) > 200:
            raise invalid("The cron expression is longer than 200 characters.")
        try:
            moments = timing.upcoming(now, PREVIEW_COUNT + 1)
        except (CronSimError, StopIteration, ValueError, OverflowError) as error:
            raise invalid(f"The cron expression {cron!r} does not parse: {error}") from None
        gaps = [(later - earlier).total_seconds() for earlier, later in zip(moments, moments[1:], strict=False)]
        if gaps and min(gaps) < minimum:
            raise invalid(f"The cron expression runs more often than every {minimum} seconds, the minimum interval.")
    return timing


# Reading and changing


def schedules_visible_to(user):
    """Admins and auditors see every schedule; an analyst their own."""
    schedules = Schedule.objects.select_related("owner", "script", "version", "last_run")
    return schedules if roles.sees_everything(user) else schedules.filter(owner=user)


def schedule_get(*, user, pk) -> Schedule:
    schedule = schedules_visible_to(user).filter(pk=pk).first() if _is_uuid(pk) else None
    if schedule is None:
        raise NotFound(f"Schedule {pk} does not exist.")
    return schedule


def schedule_for_change(*, user, pk) -> Schedule:
    """A schedule the user may change, pause or delete: their own, or any for an admin; never an auditor's (403)."""
    schedule = schedule_get(user=user, pk=pk)
    check_writer(user)
    if schedule.owner_id != user.pk and not roles.is_admin(user):
        raise PermissionDenied("Only its owner or an admin may change this schedule.")
    return schedule


def check_writer(user) -> None:
    if roles.is_read_only(user):
        raise PermissionDenied("Auditors have read-only access: they do not create or change schedules.")


def _is_uuid(value) -> bool:
    import uuid

    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


EDITABLE = (
    "name",
    "script",
    "version",
    "parameters",
    "env_name",
    "service",
    "timeout_seconds",
    "cron",
    "interval_seconds",
    "time_zone",
    "enabled",
    "missed_policy",
    "overlap_policy",
    "max_retries",
    "retry_backoff_seconds",
    "retry_backoff_factor",
    "retry_user_errors",
)


@transaction.atomic
def schedule_save(*, user, schedule: Schedule | None = None, **fields) -> Schedule:
    """Create (schedule None) or change a schedule after checking every field; its next run is computed anew."""
    check_writer(user)
    creating = schedule is None
    if schedule is None:
        schedule = Schedule(owner=user)
    for name, value in fields.items():
        if name not in EDITABLE:
            raise invalid(f"Unknown schedule field {name!r}.")
        setattr(schedule, name, value)
    schedule.cron = (schedule.cron or "").strip()
    schedule.name = (schedule.name or "").strip() or schedule.script.name
    if not roles.can_run_script(schedule.owner, schedule.script):
        raise PermissionDenied("The schedule's owner may not run this script.")
    if schedule.version is not None and schedule.version.script_id != schedule.script.pk:
        raise invalid(f"Version {schedule.version.number} is not a version of script {schedule.script.name!r}.")
    if not isinstance(schedule.parameters, dict):
        raise invalid("parameters must be a JSON object.")
    if schedule.env_name:
        environments.environment_for_run(schedule.env_name)
    if schedule.timeout_seconds is not None and not 1 <= schedule.timeout_seconds <= 43200:
        raise invalid("timeout must be 1 to 43200 seconds.")
    retries.check_policy(
        max_retries=schedule.max_retries,
        backoff_seconds=schedule.retry_backoff_seconds,
        backoff_factor=schedule.retry_backoff_factor,
    )
    now = timezone.now()
    timing = timing_check(cron=schedule.cron, interval_seconds=schedule.interval_seconds, time_zone=schedule.time_zone)
    before = None if creating else Schedule.objects.get(pk=schedule.pk)
    timing_changed = before is None or any(
        getattr(schedule, name) != getattr(before, name) for name in ("cron", "interval_seconds", "time_zone")
    )
    # Enabled again: like resume, it runs from now on (what fell while paused was not missed).
    resumed = before is not None and schedule.enabled and not before.enabled
    if timing_changed or resumed or schedule.next_run_at is None:
        schedule.anchor_at = now
        schedule.next_run_at = dataclasses.replace(timing, anchor=now).after(now)
    schedule.full_clean(exclude=["owner", "script", "version", "last_run", "parameters"])
    schedule.save()
    after = audit.schedule_state(schedule)
    if before is None:
        audit.record("schedule.create", obj=schedule, actor=user, after=after)
    elif (earlier := audit.schedule_state(before)) != after:
        audit.record("schedule.update", obj=schedule, actor=user, before=earlier, after=after)
    return schedule


@transaction.atomic
def schedule_pause(*, schedule: Schedule) -> Schedule:
    schedule.enabled = False
    schedule.pending_for = None
    schedule.save(update_fields=["enabled", "pending_for", "updated_at"])
    audit.record("schedule.pause", obj=schedule)
    return schedule


@transaction.atomic
def schedule_resume(*, schedule: Schedule) -> Schedule:
    """Runs again from now on: occurrences that fell while it was paused are not missed runs."""
    now = timezone.now()
    schedule.enabled = True
    if not schedule.cron:
        schedule.anchor_at = now
    schedule.next_run_at = Timing.of(schedule).after(now)
    schedule.save(update_fields=["enabled", "anchor_at", "next_run_at", "updated_at"])
    audit.record("schedule.resume", obj=schedule)
    return schedule


def schedule_delete(*, schedule: Schedule) -> None:
    """Delete the schedule; the runs it started stay (their `schedule` becomes empty)."""
    with transaction.atomic():
        audit.record("schedule.delete", obj=schedule, before=audit.schedule_state(schedule))
        schedule.delete()


def preview(*, cron: str, interval_seconds: int | None, time_zone: str) -> dict:
    """What the form and the API show before saving: the next five run times, or what is wrong."""
    now = timezone.now()
    timing = timing_check(cron=cron, interval_seconds=interval_seconds, time_zone=time_zone, now=now)
    return {"description": timing.describe(), "nextRuns": timing.upcoming(now)}


# Firing (in the scheduler process)


def start_run(schedule: Schedule, scheduled_for: datetime) -> Run:
    """Start one run of a schedule as an async job (services.pipeline). A second scheduler's copy of
    the same occurrence fails on the unique (schedule, scheduled_for) of first attempts: IntegrityError."""
    if not roles.can_run_script(schedule.owner, schedule.script):
        raise PermissionDenied(f"{schedule.owner.get_username()} may no longer run script {schedule.script.name!r}.")
    return pipeline.start_run(
        RunRequest(
            script=schedule.script,
            user=schedule.owner,
            parameters=schedule.parameters,
            env_name=schedule.env_name or None,
            service=schedule.service,
            version=schedule.version,
            asynchronous=True,
            timeout_seconds=schedule.timeout_seconds,
            comments=f"Schedule {schedule.name}, {scheduled_for.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC",
            schedule=schedule,
            scheduled_for=scheduled_for,
        )
    )


@dataclasses.dataclass
class FireReport:
    started: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    queued: list[str] = dataclasses.field(default_factory=list)
    refused: list[str] = dataclasses.field(default_factory=list)
    examined: int = 0


def fire_due(*, now: datetime | None = None) -> FireReport:
    """One scheduler pass: fire every schedule that is due, or whose queued occurrence may now start."""
    report = FireReport()
    while True:
        now_pass = now or timezone.now()
        due = Schedule.objects.filter(enabled=True).filter(Q(next_run_at__lte=now_pass) | Q(pending_for__isnull=False))
        ids = list(due.order_by("next_run_at").values_list("pk", flat=True)[:BATCH])
        for pk in ids:
            _fire_one(pk, now=now_pass, report=report)
        report.examined += len(ids)
        if len(ids) < BATCH or now is not None:
            return report


def _fire_one(pk, *, now: datetime, report: FireReport) -> None:
    with transaction.atomic():
        rows = Schedule.objects.filter(pk=pk, enabled=True)
        if connection.features.has_select_for_update_skip_locked:
            # Another scheduler holds it: it is that one's to fire.
            rows = rows.select_for_update(skip_locked=True, of=("self",))
        schedule = rows.select_related("script__owner", "owner", "version").first()
        if schedule is None:
            return
        note = None
        if schedule.pending_for is not None and not _active(schedule):
            when = schedule.pending_for
            if Schedule.objects.filter(pk=pk, pending_for=when).update(pending_for=None):
                schedule.pending_for = None
                note = _start(schedule, when, now, report)
        if schedule.next_run_at is not None and schedule.next_run_at <= now:
            due = schedule.next_run_at
            timing = Timing.of(schedule)
            latest, earlier = timing.latest(due, now)
            following = timing.after(now)
            if not Schedule.objects.filter(pk=pk, next_run_at=due).update(next_run_at=following):
                return  # another scheduler fired it first
            schedule.next_run_at = following
            note = _fire_occurrence(schedule, latest, earlier, now, report)
        if note:
            # The last noteworthy thing (a skip, a refusal, missed runs), kept until the next one.
            Schedule.objects.filter(pk=pk).update(last_note=note[:2000])


def _fire_occurrence(schedule: Schedule, when: datetime, earlier: int, now: datetime, report: FireReport) -> str:
    late = (now - when).total_seconds() > settings.OMLWEB_SCHEDULE_MISSED_GRACE_SECONDS
    missed = earlier + (1 if late else 0)
    missed_text = f"{missed} run(s) missed while the scheduler was not running" if missed else ""
    if late and schedule.missed_policy == Schedule.Missed.SKIP:
        report.skipped.append(str(schedule.pk))
        return f"{_stamp(now)}: {missed_text}: skipped (missed-runs policy: skip)."
    if late:
        missed_text += f"; ran once for {_stamp(when)} (missed-runs policy: run once)"
    elif missed_text:
        missed_text += f": skipped; the run for {_stamp(when)} is on time"
    if schedule.overlap_policy != Schedule.Overlap.ALLOW and _active(schedule):
        if schedule.overlap_policy == Schedule.Overlap.SKIP:
            report.skipped.append(str(schedule.pk))
            return f"{_stamp(now)}: the run for {_stamp(when)} was skipped: the previous run has not finished."
        if schedule.overlap_policy == Schedule.Overlap.QUEUE:
            if Schedule.objects.filter(pk=schedule.pk, pending_for__isnull=True).update(pending_for=when):
                report.queued.append(str(schedule.pk))
                return f"{_stamp(now)}: the run for {_stamp(when)} waits for the previous run to finish."
            report.skipped.append(str(schedule.pk))
            return f"{_stamp(now)}: the run for {_stamp(when)} was skipped: one run already waits for the previous."
    note = _start(schedule, when, now, report)
    if missed_text and not note:
        return f"{_stamp(now)}: {missed_text}."
    return note


def _start(schedule: Schedule, when: datetime, now: datetime, report: FireReport) -> str:
    """Start the run for `when`; "" when it started, else why not."""
    try:
        with transaction.atomic():
            run = start_run(schedule, when)
    except IntegrityError:
        return ""  # another scheduler started this very occurrence
    except OmlError as error:
        report.refused.append(str(schedule.pk))
        logger.warning("Schedule %s: the run for %s was refused: %s", schedule.pk, when, error.message)
        return f"{_stamp(now)}: the run for {_stamp(when)} was refused: {error.message}"
    Schedule.objects.filter(pk=schedule.pk).update(last_run_at=now, last_run=run)
    report.started.append(str(run.pk))
    return ""


def _active(schedule: Schedule) -> bool:
    return Run.objects.filter(schedule=schedule, status__in=ACTIVE).exists()


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def warm_up() -> None:
    """What the first run of a process would otherwise pay for when it is due: the default environment's
    packages (read once per process, a subprocess) are read before the first pass."""
    from scripts_app.services import environments

    try:
        environments.default_lock()
    except Exception:
        logger.exception("Could not read the default environment's packages yet")


def seconds_to_next(*, now: datetime | None = None) -> float | None:
    """Seconds until the earliest enabled schedule is due (0 when one waits on a running one), None: none."""
    now = now or timezone.now()
    earliest = Schedule.objects.filter(enabled=True).aggregate(first=Min("next_run_at"))["first"]
    return None if earliest is None else max((earliest - now).total_seconds(), 0.0)
