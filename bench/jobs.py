"""Async job benchmark: latency and throughput per broker, and scaling with worker processes.

Prints figures and ratios; it passes or fails nothing. Run from the repository root:

    .venv/bin/python bench/jobs.py                      # everything (needs Redis and PostgreSQL)
    .venv/bin/python bench/jobs.py --only latency       # latency/throughput only
    BENCH_REDIS_URL=redis://127.0.0.1:6379/14 BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/postgres ...

1. Submit-to-finished latency (p50, p95) of a trivial job, one at a time on an idle system, and jobs per
   second for a burst of trivial jobs, with 2 worker processes: Redis and the embedded broker side by
   side (SQLite database).
2. Scaling: jobs per second for 100 ms jobs with 1, 2 and 4 worker processes, on Redis with PostgreSQL,
   as a ratio to the ideal of 10 jobs/s per worker process; beside it two floors through the same broker
   and worker command line (bench/celery_floor.py): a bare Celery task sleeping 0.1 s, and one running
   the same script through the runner, with no database and no run pipeline.

`--before PATH` runs every omlweb configuration twice, side by side: with the code of another checkout
(PATH, e.g. `git archive main | tar -x -C /tmp/before`) and with this one's.

Jobs are submitted through the run pipeline (`pipeline.start_run`), the same call the API makes after
parsing the request; times come from the Run rows (created_at to finished_at), so polling adds nothing.
Each configuration runs in a child process with its own settings, fresh database and worker processes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRIVIAL = "def trivial():\n    return 1\n"
NAP = "import time\ndef nap(seconds=0.1):\n    time.sleep(seconds)\n    return seconds\n"


# The parent: one child process per configuration, then the table.


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["latency", "scaling"])
    parser.add_argument("--latency-jobs", type=int, default=100)
    parser.add_argument("--burst-jobs", type=int, default=200)
    parser.add_argument("--scaling-jobs", type=int, default=120)
    parser.add_argument("--workers", default="1,2,4", help="worker process counts of the scaling figures")
    parser.add_argument("--before", help="another checkout to measure side by side with this one")
    parser.add_argument("--no-floor", action="store_true", help="skip the bare Celery floors")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
    postgres_url = os.environ.get("BENCH_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
    print(f"machine: {os.cpu_count()} cores; Python {sys.version.split()[0]}; load {os.getloadavg()[0]:.2f}")
    # (label, checkout) of each omlweb column: this checkout alone, or another one's beside it.
    roots = [("before", str(Path(args.before).resolve())), ("after", str(ROOT))] if args.before else [("", str(ROOT))]
    if args.only in (None, "latency"):
        rows = {}
        for name, broker in (("embedded (filesystem)", "filesystem://"), ("Redis", redis_url)):
            for label, root in roots:
                rows[f"{name} {label}".strip()] = run_child(
                    broker=broker,
                    database="sqlite",
                    workers=2,
                    script="trivial",
                    latency_jobs=args.latency_jobs,
                    burst_jobs=args.burst_jobs,
                    root=root,
                )
        print("\n1. Trivial job, 2 worker processes, SQLite database")
        names = list(rows)
        print(f"{'':26}" + "".join(f"{n:>28}" for n in names))
        for label, key, unit in (
            ("submit-to-finished p50", "p50", "ms"),
            ("submit-to-finished p95", "p95", "ms"),
            ("burst throughput", "jobs_per_second", "jobs/s"),
        ):
            print(f"{label:26}" + "".join(f"{rows[n][key]:>21.1f} {unit:<6}" for n in names))
        print(
            f"(latency over {args.latency_jobs} jobs one at a time; burst of {args.burst_jobs} jobs submitted at once)"
        )
    if args.only in (None, "scaling"):
        print("\n2. 100 ms jobs on Redis + PostgreSQL: jobs/s against the ideal of N x 10 jobs/s")
        print(
            f"{'':30}{'processes':>10}{'jobs/s':>8}{'ideal':>7}{'ratio':>7}{'run ms':>8}{'between ms':>12}{'load':>6}"
        )
        columns = [("floor: Celery task, sleep", "nap"), ("floor: Celery task, runner", "runner_nap")]
        if args.no_floor:
            columns = []
        columns += [(f"omlweb {label}".strip(), root) for label, root in roots]
        for workers in (int(n) for n in args.workers.split(",")):
            for name, what in columns:
                config = {"broker": redis_url, "workers": workers, "burst_jobs": args.scaling_jobs, "latency_jobs": 0}
                if what in ("nap", "runner_nap"):
                    result = run_child(floor=what, database="sqlite", script="nap", root=str(ROOT), **config)
                else:
                    result = run_child(database=postgres_url, script="nap", root=what, **config)
                rate, ideal = result["jobs_per_second"], workers * 10
                print(
                    f"{name:30}{workers:>10}{rate:>8.1f}{ideal:>7}{rate / ideal:>7.2f}{result['run_ms']:>8.0f}"
                    f"{result['gap_ms']:>12.1f}{os.getloadavg()[0]:>6.2f}"
                )
        print(
            "(run ms: claim to outcome inside the worker, for a floor the task's own time; between ms: median,\n"
            " per worker process, from one job's outcome to its next claim; load: 1-minute load average after)"
        )


def run_child(*, child_script: str = __file__, timeout: float = 1800, **config) -> dict:
    """Run `child_script --child <config>` in a fresh interpreter; its last line of output is the result."""
    output = subprocess.run(
        [sys.executable, child_script, "--child", json.dumps(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if output.returncode:
        sys.stderr.write(output.stderr[-5000:])
        raise SystemExit(f"benchmark child failed for {config}")
    return json.loads(output.stdout.strip().splitlines()[-1])


# A child: one configuration, with its own data dir, database and workers.


def child(config: dict) -> dict:
    data_dir = Path(tempfile.mkdtemp(prefix="omlweb-bench-"))
    root = Path(config.get("root") or ROOT)
    os.environ["OMLWEB_DATA_DIR"] = str(data_dir)
    os.environ["CELERY_BROKER_URL"] = config["broker"]
    os.environ["OMLWEB_QUEUE_PREFIX"] = f"bench{uuid.uuid4().hex[:8]}"
    os.environ["OMLWEB_LOG_LEVEL"] = "WARNING"
    # One user submits every job here: the machinery's throughput is measured, not one user's fair share
    # (which would run the jobs one at a time and refuse a burst past 100 queued).
    os.environ["OMLWEB_USER_MAX_RUNNING_JOBS"] = "1000"
    os.environ["OMLWEB_USER_MAX_QUEUED_JOBS"] = "1000000"
    database = None
    if config["database"] == "sqlite":
        os.environ.pop("DATABASE_URL", None)
    else:
        database = fresh_postgres_database(config["database"])
        os.environ["DATABASE_URL"] = database
    # The code measured is the checkout's at `root`: its modules here and its worker processes.
    sys.path.insert(0, str(root))
    os.chdir(root)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "omlweb.settings")
    import django

    django.setup()
    if config.get("floor"):
        workers = start_workers(config["workers"], data_dir, root=root, floor=True)
        try:
            return measure_floor(config, data_dir)
        finally:
            for process in workers:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            drop_queues()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    workers = start_workers(config["workers"], data_dir, root=root)
    try:
        return measure(config)
    finally:
        for process in workers:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        drop_queues()
        if database:
            from django.db import connections

            connections.close_all()
            drop_postgres_database(config["database"], database.rsplit("/", 1)[1])


def fresh_postgres_database(admin_url: str) -> str:
    import psycopg

    name = f"omlweb_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url.replace("postgres://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin_url.rsplit("/", 1)[0]
    return f"{base}/{name}"


def drop_postgres_database(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url.replace("postgres://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_workers(count: int, data_dir: Path, *, root: Path = ROOT, floor: bool = False) -> list[subprocess.Popen]:
    from scripts_app.management.commands.serve import worker_command
    from scripts_app.services.jobs.broker import queue_name

    env = os.environ.copy()
    if floor:
        # Production's command line with the floor's app (bench/celery_floor.py) in place of omlweb's.
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "bench"), str(ROOT)])
        env["BENCH_FLOOR_LOG"] = str(data_dir / "floor.log")
    processes = []
    for number in range(count):
        command = worker_command(
            node=f"bench{number}@{socket.gethostname()}", queues=[queue_name("LOW")], loglevel="WARNING"
        )
        if floor:
            command[command.index("-A") + 1] = "celery_floor"
        log = (data_dir / f"worker{number}.log").open("w")
        processes.append(
            subprocess.Popen(
                command,
                cwd=root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    return processes


def measure_floor(config: dict, data_dir: Path) -> dict:
    """The floor: bare Celery tasks through the same broker and worker command line, no database."""
    from omlweb.celery import app
    from scripts_app.services.jobs.broker import queue_name

    log = data_dir / "floor.log"
    task = f"floor.{config['floor']}"

    def lines() -> list[tuple[str, float, float]]:
        text = log.read_text() if log.exists() else ""
        return [(pid, float(start), float(end)) for pid, start, end in (row.split() for row in text.splitlines())]

    def burst(count: int, timeout: float = 600) -> tuple[float, list]:
        before = len(lines())
        first = time.time()
        for _ in range(count):
            app.send_task(task, args=(0.1,), queue=queue_name("LOW"))
        deadline = time.monotonic() + timeout
        while len(lines()) < before + count:
            if time.monotonic() > deadline:
                raise SystemExit(f"floor tasks not finished after {timeout} s")
            time.sleep(0.05)
        return first, lines()[before:]

    burst(4 * config["workers"])  # warm-up: workers start, the runner starts its template
    first, done = burst(config["burst_jobs"])
    result = {"jobs_per_second": len(done) / (max(end for _, _, end in done) - first)}
    result["run_ms"] = statistics.mean((end - start) * 1000 for _, start, end in done)
    gaps = []
    for pid in {pid for pid, _, _ in done}:
        mine = sorted((start, end) for p, start, end in done if p == pid)
        gaps += [(b[0] - a[1]) * 1000 for a, b in zip(mine, mine[1:], strict=False)]
    result["gap_ms"] = statistics.median(gaps) if gaps else 0.0
    return result


def measure(config: dict) -> dict:
    from django.contrib.auth import get_user_model

    from scripts_app.models import Run
    from scripts_app.services.pipeline import RunRequest, start_run
    from scripts_app.services.scripts import script_create

    user = get_user_model().objects.create_user("bench", password="bench-password-1")
    name = config["script"]
    script = script_create(owner=user, name=name, source=TRIVIAL if name == "trivial" else NAP)

    def submit() -> Run:
        return start_run(RunRequest(script=script, user=user, parameters={}, asynchronous=True))

    def wait_all(ids: list, timeout: float = 600) -> list[Run]:
        deadline = time.monotonic() + timeout
        finished = Run.objects.filter(pk__in=ids, status__in=Run.FINISHED)
        while time.monotonic() < deadline:
            # A count, and the rows once all are done: reading every finished row at each poll cost this
            # process about 3 ms of CPU per job of a burst, taken from the workers on the same cores
            # (the floors' bench reads a file).
            if finished.count() == len(ids):
                done = list(finished)
                failed = [run for run in done if run.status != Run.Status.SUCCEEDED]
                if failed:
                    raise SystemExit(f"{len(failed)} jobs did not succeed: {failed[0].error_message}")
                return done
            # Times come from the rows: polling slower biases nothing and leaves the CPU to the workers.
            time.sleep(0.05)
        raise SystemExit(f"jobs not finished after {timeout} s")

    # Warm-up: each worker process starts its runner template on its first job.
    wait_all([submit().pk for _ in range(4 * config["workers"])])
    result: dict = {}
    if config["latency_jobs"]:
        latencies = []
        for _ in range(config["latency_jobs"]):
            [run] = wait_all([submit().pk])
            latencies.append((run.finished_at - run.created_at).total_seconds() * 1000)
        cuts = statistics.quantiles(latencies, n=100)
        result.update(p50=statistics.median(latencies), p95=cuts[94])
    ids = [submit().pk for _ in range(config["burst_jobs"])]
    done = wait_all(ids)
    span = (max(r.finished_at for r in done) - min(r.created_at for r in done)).total_seconds()
    result["jobs_per_second"] = len(done) / span
    # Claim to outcome recorded, inside the worker: the rest of 1/rate per slot is queueing and Celery.
    result["run_ms"] = statistics.mean((r.finished_at - r.started_at).total_seconds() * 1000 for r in done)
    # Between jobs, per worker process: its last outcome recorded to its next claim (Celery, the broker,
    # and what the worker does after recording an outcome).
    gaps = []
    for worker in {r.worker for r in done}:
        mine = sorted((r for r in done if r.worker == worker), key=lambda r: r.started_at)
        gaps += [(b.started_at - a.finished_at).total_seconds() * 1000 for a, b in zip(mine, mine[1:], strict=False)]
    result["gap_ms"] = statistics.median(gaps) if gaps else 0.0
    return result


def drop_queues() -> None:
    from kombu import Queue

    from omlweb.celery import app
    from scripts_app.services.jobs.broker import queue_name, service_levels

    if not app.conf.broker_url.startswith(("redis", "amqp")):
        return
    with app.connection_for_write() as conn, conn.channel() as channel:
        for level in service_levels():
            Queue(queue_name(level), channel=channel).delete()


if __name__ == "__main__":
    main()
