"""The scheduler's passes against the database, at chosen moments: timing, missed runs, overlap, no doubles.

The runs are published to this run's embedded broker and not executed: what is checked here is which runs
the scheduler starts and when. tests/worker/test_schedules_on_workers.py runs them for real.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from scripts_app.errors import BadRequest
from scripts_app.models import Run, Schedule
from scripts_app.services import schedules
from tests.factories import make_script

SOURCE = "def job(x=1):\n    return x\n"
T0 = datetime(2026, 11, 30, 6, 0, 0, tzinfo=UTC)


@pytest.fixture
def script(alice):
    return make_script(alice, "job", SOURCE)


def every(alice, script, seconds: int, **fields) -> Schedule:
    schedule = schedules.schedule_save(user=alice, script=script, interval_seconds=seconds, **fields)
    # Anchor at a known moment so the occurrences are T0 + k * seconds.
    Schedule.objects.filter(pk=schedule.pk).update(anchor_at=T0, next_run_at=T0 + timedelta(seconds=seconds))
    schedule.refresh_from_db()
    return schedule


@pytest.fixture(autouse=True)
def fast(settings):
    settings.OMLWEB_SCHEDULE_MIN_INTERVAL_SECONDS = 1
    settings.OMLWEB_SCHEDULE_MISSED_GRACE_SECONDS = 5


def fired(schedule) -> list[datetime]:
    return sorted(Run.objects.filter(schedule=schedule).values_list("scheduled_for", flat=True))


def test_a_cron_schedule_runs_at_its_times_in_its_time_zone(alice, script):
    """07:00 on weekdays in Paris is 06:00 UTC in winter, 05:00 UTC in summer; weekends are left out."""
    timing = schedules.timing_check(cron="0 7 * * 1-5", interval_seconds=None, time_zone="Europe/Paris", now=T0)
    winter = timing.upcoming(datetime(2026, 12, 4, 12, 0, tzinfo=UTC), 2)
    assert winter == [datetime(2026, 12, 7, 6, 0, tzinfo=UTC), datetime(2026, 12, 8, 6, 0, tzinfo=UTC)]
    summer = timing.upcoming(datetime(2026, 7, 1, 12, 0, tzinfo=UTC), 1)
    assert summer == [datetime(2026, 7, 2, 5, 0, tzinfo=UTC)]


@pytest.mark.parametrize(
    ("cron", "interval", "zone", "says"),
    [
        ("61 * * * *", None, "UTC", "does not parse"),
        ("* * * * *", None, "Mars/Olympus", "Unknown time zone"),
        ("", None, "UTC", "either a cron expression or an interval"),
        ("0 7 * * *", 60, "UTC", "either a cron expression or an interval"),
        ("", 0, "UTC", "either"),
        ("*/1 * * * * *", None, "UTC", "more often"),
        ("0 7 * * *" * 40, None, "UTC", "longer than 200"),
        ("\x00", None, "UTC", "does not parse"),
    ],
)
def test_a_bad_timing_is_refused_with_code_1061(settings, cron, interval, zone, says):
    settings.OMLWEB_SCHEDULE_MIN_INTERVAL_SECONDS = 60
    with pytest.raises(BadRequest) as refused:
        schedules.timing_check(cron=cron, interval_seconds=interval, time_zone=zone)
    assert refused.value.code == 1061
    assert says in refused.value.message


def test_each_due_occurrence_starts_one_run_and_passes_in_between_start_none(alice, script):
    schedule = every(alice, script, 10)
    for second in (5, 10, 11, 12, 19, 20, 20, 25):
        schedules.fire_due(now=T0 + timedelta(seconds=second))
        Run.objects.filter(schedule=schedule).update(status=Run.Status.SUCCEEDED)
    assert fired(schedule) == [T0 + timedelta(seconds=10), T0 + timedelta(seconds=20)]
    run = Run.objects.filter(schedule=schedule).first()
    assert run.mode == Run.Mode.ASYNC
    assert run.parameters == {}
    assert run.user == alice


def test_two_schedulers_at_the_same_moment_start_one_run(alice, script):
    """The second pass finds next_run_at moved on (compare-and-set); the unique constraint is the backstop."""
    schedule = every(alice, script, 10)
    moment = T0 + timedelta(seconds=10)
    first = schedules.fire_due(now=moment)
    second = schedules.fire_due(now=moment)
    assert len(first.started) == 1
    assert second.started == []
    # Even a scheduler that read the schedule before the other advanced it cannot start the occurrence again.
    with pytest.raises(Exception, match="unique|UNIQUE|duplicate"):
        schedules.start_run(schedule, moment)
    assert fired(schedule) == [moment]


@pytest.mark.parametrize(("policy", "expected"), [("skip", []), ("run_once", [60])])
def test_runs_missed_while_the_scheduler_was_down_follow_the_policy(alice, script, policy, expected):
    """Down from T0+5 to T0+63: six occurrences fell (10..60); the latest is 3 s late, within the grace,
    so it runs whatever the policy. Down until T0+75 instead, all are late: skip runs none, run_once one."""
    schedule = every(alice, script, 10, missed_policy=policy)
    schedules.fire_due(now=T0 + timedelta(seconds=63))
    assert fired(schedule) == [T0 + timedelta(seconds=60)]
    Run.objects.filter(schedule=schedule).update(status=Run.Status.SUCCEEDED)
    Schedule.objects.filter(pk=schedule.pk).update(next_run_at=T0 + timedelta(seconds=70))
    schedules.fire_due(now=T0 + timedelta(seconds=137))
    assert fired(schedule) == [T0 + timedelta(seconds=60)] + [T0 + timedelta(seconds=s) for s in expected and [130]]
    schedule.refresh_from_db()
    assert schedule.next_run_at == T0 + timedelta(seconds=140)
    assert "missed" in schedule.last_note


@pytest.mark.parametrize(("policy", "runs_at_20"), [("skip", 1), ("allow", 2), ("queue", 1)])
def test_a_run_that_would_overlap_the_previous_one_follows_the_policy(alice, script, policy, runs_at_20):
    schedule = every(alice, script, 10, overlap_policy=policy)
    schedules.fire_due(now=T0 + timedelta(seconds=10))
    schedules.fire_due(now=T0 + timedelta(seconds=20))  # the first is still QUEUED
    assert Run.objects.filter(schedule=schedule).count() == runs_at_20
    schedule.refresh_from_db()
    if policy == "queue":
        assert schedule.pending_for == T0 + timedelta(seconds=20)
        schedules.fire_due(now=T0 + timedelta(seconds=21))
        assert Run.objects.filter(schedule=schedule).count() == 1, "it waits while the first has not finished"
        Run.objects.filter(schedule=schedule).update(status=Run.Status.SUCCEEDED)
        schedules.fire_due(now=T0 + timedelta(seconds=22))
        assert fired(schedule) == [T0 + timedelta(seconds=10), T0 + timedelta(seconds=20)]
    if policy == "skip":
        assert "previous run has not finished" in schedule.last_note


def test_a_paused_schedule_starts_nothing_and_resumes_from_now(alice, script):
    schedule = every(alice, script, 10)
    schedules.schedule_pause(schedule=schedule)
    schedules.fire_due(now=T0 + timedelta(seconds=100))
    assert fired(schedule) == []
    schedules.schedule_resume(schedule=schedule)
    schedule.refresh_from_db()
    assert schedule.enabled
    assert schedule.next_run_at > timezone.now()


def test_a_refused_run_is_noted_and_the_schedule_goes_on(alice, script, settings):
    """The owner over their queued-jobs share: the run is refused (429), noted, the next one still comes."""
    settings.OMLWEB_USER_MAX_QUEUED_JOBS = 1
    schedule = every(alice, script, 10, overlap_policy="allow")
    schedules.fire_due(now=T0 + timedelta(seconds=10))
    report = schedules.fire_due(now=T0 + timedelta(seconds=20))
    assert report.refused == [str(schedule.pk)]
    schedule.refresh_from_db()
    assert "refused" in schedule.last_note
    assert schedule.next_run_at == T0 + timedelta(seconds=30)
