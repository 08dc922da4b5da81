"""Schedules benchmark: a burst of due schedules, and the scheduler's own CPU while idle.

Prints figures; it passes or fails nothing. Run from the repository root:

    .venv/bin/python bench/schedules_bench.py
    .venv/bin/python bench/schedules_bench.py --only idle --idle-seconds 60
    BENCH_REDIS_URL=redis://127.0.0.1:6379/5 BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres ...

1. Burst: 1,000 schedules of one trivial script, all due at the same second, one scheduler process
   (`manage.py run_scheduler`, as `serve` runs it) and 2 worker processes. For each run: how long after
   its time the scheduler recorded it (fired), and how long until a worker started it (started). The
   issue's number: all started within 10 s of their time.
2. Idle: 10,000 enabled schedules, none due during the measurement; the scheduler's own CPU time
   (user + system, from /proc) over the measurement, as a share of one core. The issue's number: < 2 %.

Each part runs on PostgreSQL + Redis (the production set-up) and on SQLite + the embedded broker, in
child processes with their own fresh database, data dir and queues.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import jobs  # noqa: E402
from jobs import drop_postgres_database, drop_queues, fresh_postgres_database, start_workers  # noqa: E402

TRIVIAL = "def trivial():\n    return 1\n"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["burst", "idle"])
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--idle-schedules", type=int, default=10000)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--sqlite", action="store_true", help="Also on SQLite and the embedded broker.")
    parser.add_argument("--schedulers", type=int, default=1, help="Scheduler processes for the burst.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5")
    postgres_url = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    setups = {"PostgreSQL + Redis": (postgres_url, redis_url)}
    if args.sqlite:
        setups["SQLite + embedded"] = ("sqlite", "filesystem://")
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; Python {sys.version.split()[0]}")
    if args.only in (None, "burst"):
        print(
            f"\n1. {args.schedules} schedules due at the same second, {args.schedulers} scheduler process(es), "
            "2 worker processes"
        )
        rows = {
            name: run_child(
                part="burst", database=database, broker=broker, schedules=args.schedules, schedulers=args.schedulers
            )
            for name, (database, broker) in setups.items()
        }
        names = list(rows)
        print(f"{'seconds after their time':34}" + "".join(f"{name:>22}" for name in names))
        for label, key in (
            ("fired: p50", "fired_p50"),
            ("fired: p95", "fired_p95"),
            ("fired: last", "fired_max"),
            ("started by a worker: p50", "started_p50"),
            ("started by a worker: last", "started_max"),
            ("finished: last", "finished_max"),
        ):
            print(f"{label:34}" + "".join(f"{rows[name][key]:>20.2f} s" for name in names))
        for label, key in (
            ("runs fired", "runs"),
            ("runs started by a worker", "started"),
            ("runs started within 10 s", "started_within_10s"),
        ):
            print(f"{label:34}" + "".join(f"{rows[n][key]:>22}" for n in names))
        print(f"{'scheduler CPU per run fired':34}" + "".join(f"{rows[n]['cpu_ms_per_fire']:>19.1f} ms" for n in names))
        print("(fired: the run recorded QUEUED by the scheduler; started: claimed by a worker; trivial script)")
    if args.only in (None, "idle"):
        print(f"\n2. Scheduler CPU while idle: {args.idle_schedules} schedules, none due, {args.idle_seconds:g} s")
        for name, (database, broker) in setups.items():
            result = run_child(
                part="idle", database=database, broker=broker, schedules=args.idle_schedules, seconds=args.idle_seconds
            )
            print(
                f"{name:24} {result['cpu_percent']:6.2f} % of one core "
                f"({result['cpu_seconds']:.2f} s CPU in {result['wall_seconds']:.0f} s; "
                f"{result['passes_per_second']:.1f} passes/s)"
            )


def run_child(**config) -> dict:
    return jobs.run_child(child_script=__file__, timeout=3600, **config)


def child(config: dict) -> dict:
    data_dir = Path(tempfile.mkdtemp(prefix="omlweb-sched-bench-"))
    os.environ.update(
        OMLWEB_DATA_DIR=str(data_dir),
        CELERY_BROKER_URL=config["broker"],
        OMLWEB_QUEUE_PREFIX=f"schedbench{uuid.uuid4().hex[:8]}",
        OMLWEB_LOG_LEVEL="WARNING",
        # One user owns every schedule: the machinery is measured, not one user's fair share (which would
        # refuse runs past 100 queued and note it on the schedule).
        OMLWEB_USER_MAX_RUNNING_JOBS="1000",
        OMLWEB_USER_MAX_QUEUED_JOBS="1000000",
        # A run up to 60 s late still runs (the default grace).
        OMLWEB_SCHEDULE_MISSED_GRACE_SECONDS="60",
    )
    database = None
    if config["database"] == "sqlite":
        os.environ.pop("DATABASE_URL", None)
    else:
        database = fresh_postgres_database(config["database"])
        os.environ["DATABASE_URL"] = database
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "omlweb.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    try:
        return burst(config, data_dir) if config["part"] == "burst" else idle(config, data_dir)
    finally:
        drop_queues()
        if database:
            from django.db import connections

            connections.close_all()
            drop_postgres_database(config["database"], database.rsplit("/", 1)[1])


def make_schedules(count: int, due) -> None:
    """`count` schedules of one trivial script, each due at `due` (a daily cron at that minute)."""
    from django.contrib.auth import get_user_model

    from scripts_app.models import Schedule
    from scripts_app.services import schedules
    from scripts_app.services.scripts import script_create

    user = get_user_model().objects.create_user("bench", password="bench-password-1")
    script = script_create(owner=user, name="trivial", source=TRIVIAL)
    template = schedules.schedule_save(
        user=user, script=script, name="s0", cron=f"{due.minute} {due.hour} * * *", overlap_policy="allow"
    )
    fields = {f.name: getattr(template, f.name) for f in Schedule._meta.concrete_fields if f.name != "id"}
    fields["next_run_at"] = due
    Schedule.objects.filter(pk=template.pk).update(next_run_at=due)
    Schedule.objects.bulk_create([Schedule(**{**fields, "name": f"s{n}"}) for n in range(1, count)], batch_size=1000)


def start_scheduler(data_dir: Path, number: int = 1) -> subprocess.Popen:
    log = (data_dir / ("scheduler.log" if number == 1 else f"scheduler-{number}.log")).open("w")
    return subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "run_scheduler"],
        cwd=ROOT,
        env=os.environ.copy(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_started(data_dir: Path) -> None:
    deadline = time.monotonic() + 60
    while "Scheduler started" not in (data_dir / "scheduler.log").read_text():
        if time.monotonic() > deadline:
            raise SystemExit("the scheduler did not start")
        time.sleep(0.1)


def burst(config: dict, data_dir: Path) -> dict:
    from django.utils import timezone

    from scripts_app.models import Run

    count = config["schedules"]
    # Due at the start of a minute at least 40 s away: time to create them and start every process.
    now = timezone.now()
    due = (now + timedelta(seconds=100)).replace(second=0, microsecond=0)
    if (due - now).total_seconds() > 100:
        due -= timedelta(minutes=1)
    make_schedules(count, due)
    workers = start_workers(2, data_dir)
    extra = [start_scheduler(data_dir, n) for n in range(2, config.get("schedulers", 1) + 1)]
    scheduler = start_scheduler(data_dir)
    try:
        wait_started(data_dir)
        # Warm the workers' runners first (not counted): each starts its template on its first run.
        from scripts_app.models import Script
        from scripts_app.services.pipeline import RunRequest, start_run

        script = Script.objects.get(name="trivial")
        warm = [start_run(RunRequest(script=script, user=script.owner, asynchronous=True)).pk for _ in range(4)]
        deadline = time.monotonic() + 600
        while Run.objects.filter(schedule__isnull=True, pk__in=warm, status__in=Run.FINISHED).count() < 4:
            if time.monotonic() > deadline:
                raise SystemExit("warm-up runs did not finish")
            time.sleep(0.2)
        # The scheduler's own CPU from just before the schedules are due to the last run fired.
        while timezone.now() < due - timedelta(seconds=1):
            time.sleep(0.2)
        cpu_before = sum(cpu_seconds(process.pid) for process in [scheduler, *extra])
        while Run.objects.filter(schedule__isnull=False).count() < count and timezone.now() < due + timedelta(
            seconds=300
        ):
            time.sleep(0.2)
        cpu_fire = sum(cpu_seconds(process.pid) for process in [scheduler, *extra]) - cpu_before
        # Until every run finished, or 300 s after their time: then what happened so far is reported.
        give_up = due + timedelta(seconds=300)
        while timezone.now() < give_up:
            scheduled = Run.objects.filter(schedule__isnull=False)
            if scheduled.count() >= count and not scheduled.exclude(status__in=Run.FINISHED).exists():
                break
            time.sleep(0.5)
        runs = list(Run.objects.filter(schedule__isnull=False))
    finally:
        for process in [*workers, scheduler, *extra]:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def seconds(moment, run) -> float:
        return (moment - run.scheduled_for).total_seconds()

    fired = sorted(seconds(run.created_at, run) for run in runs)
    started = sorted(seconds(run.started_at, run) for run in runs if run.started_at)
    finished = [seconds(run.finished_at, run) for run in runs if run.finished_at]
    failed = [run for run in runs if run.status not in (Run.Status.SUCCEEDED, Run.Status.QUEUED, Run.Status.RUNNING)]
    if failed:
        raise SystemExit(f"{len(failed)} runs did not succeed: {failed[0].error_message}")
    missing = float("nan")
    return {
        "runs": len(runs),
        "started": len(started),
        "fired_p50": statistics.median(fired),
        "fired_p95": statistics.quantiles(fired, n=100)[94],
        "fired_max": max(fired),
        "started_p50": statistics.median(started) if started else missing,
        "started_max": max(started) if len(started) == count else missing,
        "finished_max": max(finished) if len(finished) == count else missing,
        "started_within_10s": sum(value <= 10 for value in started),
        "cpu_ms_per_fire": 1000 * cpu_fire / max(len(runs), 1),
    }


def idle(config: dict, data_dir: Path) -> dict:
    from django.utils import timezone

    # Due in a day: nothing fires while measured.
    make_schedules(config["schedules"], (timezone.now() + timedelta(days=1)).replace(second=0, microsecond=0))
    scheduler = start_scheduler(data_dir)
    try:
        wait_started(data_dir)
        time.sleep(3)  # past its start-up
        cpu_before, wall_before = cpu_seconds(scheduler.pid), time.monotonic()
        time.sleep(config["seconds"])
        cpu_after, wall_after = cpu_seconds(scheduler.pid), time.monotonic()
    finally:
        os.killpg(scheduler.pid, signal.SIGKILL)
        scheduler.wait()
    from django.conf import settings

    wall = wall_after - wall_before
    cpu = cpu_after - cpu_before
    return {
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "cpu_percent": 100 * cpu / wall,
        "passes_per_second": 1 / settings.OMLWEB_SCHEDULER_POLL_SECONDS,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


if __name__ == "__main__":
    main()
