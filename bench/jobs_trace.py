"""Where a trivial job's submit-to-finished time goes, step by step (issue 11's decomposition).

Submits trivial jobs one at a time through the run pipeline's two steps (the submission's transaction,
then the publish), to one worker process running production's command line with bench/jobs_trace_app.py
as its app, which timestamps each step inside the worker; polls the row every millisecond for when it
is seen finished. Prints the median of each step's time since the previous one.

    BENCH_REDIS_URL=redis://127.0.0.1:6379/14 .venv/bin/python bench/jobs_trace.py [--jobs 100]
        [--database postgres://postgres@127.0.0.1:5432/postgres] [--script nap]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import jobs  # noqa: E402  (bench/jobs.py: its child's set-up)

# Steps in the order a job goes through them: (step, where).
STEPS = [
    ("t0", "submit: pipeline.start_run called"),
    ("created", "submit: row's created_at"),
    ("committed", "submit: submission transaction committed"),
    ("published", "submit: publish returned"),
    ("worker_received", "worker: Celery received the message"),
    ("task_start", "worker: task starts (prerun)"),
    ("execute_start", "worker: job_execute called"),
    ("claim_start", "worker: claim starts"),
    ("claim_end", "worker: claimed (committed)"),
    ("live_end", "worker: live writer decided"),
    ("watch_started", "worker: watch thread started"),
    ("runner_start", "worker: runner.run called"),
    ("runner_end", "worker: runner.run returned"),
    ("record_start", "worker: outcome recording starts"),
    ("finish_start", "worker: Run.finish called"),
    ("finished_at", "worker: row's finished_at"),
    ("finish_end", "worker: Run.finish returned (run, storage UPDATEs)"),
    ("record_end", "worker: outcome committed, run_finished hook run"),
    ("watch_stopped", "worker: watch thread joined"),
    ("retries_end", "worker: retry policy checked"),
    ("execute_end", "worker: job_execute returned"),
    ("task_end", "worker: task ends (postrun)"),
    ("seen", "bench: row seen finished (1 ms polls)"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--database", default="sqlite")
    parser.add_argument("--script", default="trivial", choices=["trivial", "nap"])
    parser.add_argument("--workers", type=int, default=1, help="worker processes (each one traced)")
    parser.add_argument("--root", default=str(ROOT), help="the checkout whose code is traced")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.child:
        print(f"load {os.getloadavg()[0]:.2f}")
    result = trace(args)
    print_table(result)
    print(f"load {os.getloadavg()[0]:.2f}")


def trace(args) -> dict[str, list[float]]:
    data_dir = Path(tempfile.mkdtemp(prefix="omlweb-trace-"))
    root = Path(args.root)
    log = data_dir / "trace.log"
    os.environ["OMLWEB_DATA_DIR"] = str(data_dir)
    os.environ["CELERY_BROKER_URL"] = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
    os.environ["OMLWEB_QUEUE_PREFIX"] = f"trace{uuid.uuid4().hex[:8]}"
    os.environ["OMLWEB_LOG_LEVEL"] = "WARNING"
    os.environ["BENCH_TRACE_LOG"] = str(log)
    os.environ["OMLWEB_USER_MAX_RUNNING_JOBS"] = "1000"
    os.environ["OMLWEB_USER_MAX_QUEUED_JOBS"] = "1000000"
    database = None
    if args.database == "sqlite":
        os.environ.pop("DATABASE_URL", None)
    else:
        database = jobs.fresh_postgres_database(args.database)
        os.environ["DATABASE_URL"] = database
    sys.path.insert(0, str(root))
    os.chdir(root)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "omlweb.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "bench"), str(root)])
    workers = [start_traced_worker(data_dir, root, number) for number in range(args.workers)]
    try:
        return measure(args, log, [worker.pid for worker in workers])
    finally:
        for worker in workers:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        jobs.drop_queues()
        if database:
            from django.db import connections

            connections.close_all()
            jobs.drop_postgres_database(args.database, database.rsplit("/", 1)[1])


def start_traced_worker(data_dir: Path, root: Path, number: int):
    import socket
    import subprocess

    from scripts_app.management.commands.serve import worker_command
    from scripts_app.services.jobs.broker import queue_name

    command = worker_command(
        node=f"trace{number}@{socket.gethostname()}", queues=[queue_name("LOW")], loglevel="WARNING"
    )
    # The trace app in place of omlweb's.
    command[command.index("-A") + 1] = "jobs_trace_app"
    output = (data_dir / f"worker{number}.log").open("w")
    return subprocess.Popen(
        command, cwd=root, env=os.environ.copy(), stdout=output, stderr=subprocess.STDOUT, start_new_session=True
    )


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU of the worker processes (not of the runner's children)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def measure(args, log: Path, pids: list[int]) -> dict[str, list[float]]:
    from django.contrib.auth import get_user_model
    from django.db import transaction

    from scripts_app.models import Run
    from scripts_app.services.jobs.submission import job_publish_submitted
    from scripts_app.services.pipeline import RunRequest, record_run
    from scripts_app.services.scripts import script_create

    user = get_user_model().objects.create_user("trace", password="trace-password-1")
    script = script_create(owner=user, name=args.script, source=jobs.TRIVIAL if args.script == "trivial" else jobs.NAP)
    submit: dict[str, dict[str, float]] = {}

    def one() -> None:
        stamps = {"t0": time.time()}
        # pipeline.start_run's async branch, in its two steps.
        with transaction.atomic():
            run = record_run(RunRequest(script=script, user=user, parameters={}, asynchronous=True))
        stamps["committed"] = time.time()
        job_publish_submitted(run)
        stamps["published"] = time.time()
        finished = Run.objects.filter(pk=run.pk, status__in=Run.FINISHED)
        deadline = time.monotonic() + 60
        while True:
            row = finished.values("created_at", "finished_at").first()
            if row is not None:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"job {run.pk} not finished; see {log.parent}")
            time.sleep(0.001)
        stamps["seen"] = time.time()
        stamps["created"] = row["created_at"].timestamp()
        stamps["finished_at"] = row["finished_at"].timestamp()
        submit[str(run.pk)] = stamps

    for _ in range(10 * args.workers):  # warm-up: the runner's template, the connections
        one()
    submit.clear()
    time.sleep(0.5)
    cpu = cpu_seconds(pids)
    for _ in range(args.jobs):
        one()
        time.sleep(0.02)
    time.sleep(0.5)
    cpu = (cpu_seconds(pids) - cpu) / args.jobs * 1000
    for line in log.read_text().splitlines():
        run_id, step, when = line.split()
        if run_id in submit:
            submit[run_id].setdefault(step, float(when))
    deltas: dict[str, list[float]] = {}
    for stamps in submit.values():
        previous = None
        for step, _ in STEPS:
            if step not in stamps:
                continue
            if previous is not None:
                deltas.setdefault(step, []).append((stamps[step] - stamps[previous]) * 1000)
            previous = step
        deltas.setdefault("total created -> finished_at", []).append((stamps["finished_at"] - stamps["created"]) * 1000)
        deltas.setdefault("total t0 -> seen", []).append((stamps["seen"] - stamps["t0"]) * 1000)
    # The worker processes' CPU per job (its idle wake-ups included), outside the runner's children.
    deltas["worker CPU per job"] = [cpu]
    return deltas


def print_table(deltas: dict[str, list[float]]) -> None:
    where = dict(STEPS)
    print(f"{'step (time since the previous one)':58}{'p50 ms':>8}{'mean ms':>9}")
    for step, values in deltas.items():
        print(f"{where.get(step, step):58}{statistics.median(values):>8.2f}{statistics.mean(values):>9.2f}")
    print(json.dumps({k: round(statistics.median(v), 3) for k, v in deltas.items()}))


if __name__ == "__main__":
    main()
