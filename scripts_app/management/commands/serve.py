"""Run the web server (gunicorn), the Celery workers of each service level, the reaper and the scheduler,
supervised.

`serve` is a small supervisor, in the manner of supervisord or systemd's `Restart=always`: a child that
exits is restarted after a backoff (1 s, doubling to 60 s while it keeps crashing, back to 1 s once it
has run for a minute), and never takes the others down. A worker process that dies has its run handed
back at once; a worker that is alive but takes no message (wedged) is killed and restarted. Ctrl-C or
SIGTERM stops them all cleanly: workers finish (or hand back) what they run.

Each worker process is one Celery worker with `--pool solo` (see `worker_command` for why), so a level
with concurrency N gets N worker processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import close_old_connections, connection

from scripts_app.services import notifications, supervision
from scripts_app.services.jobs.broker import broker_problem, broker_scheme, queue_name
from scripts_app.services.jobs.reaper import worker_lost

# Workers get this long to finish their runs on a stop; then they are killed and the reaper requeues.
STOP_GRACE_SECONDS = 30
# Backoff between restarts of a child that keeps exiting; a child that ran this long is healthy again.
BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0
STABLE_SECONDS = 60.0
# A child that exited this many times within CRASH_WINDOW_SECONDS is shown as crash-looping.
CRASH_LOOP_COUNT = 3
CRASH_WINDOW_SECONDS = 600.0
# Past its task's hard time limit a worker gets this much more before it counts as hung.
HUNG_MARGIN_SECONDS = 30.0
STATE_EVERY_SECONDS = 2.0
HAND_BACK_RETRY_SECONDS = 5.0
TICK_SECONDS = 0.2


def worker_command(*, node: str, queues: list[str], loglevel: str = "INFO") -> list[str]:
    """The command line of one Celery worker process: serve, the tests and the benchmark all use it.

    `--pool solo`: the worker runs one task at a time in its own process; concurrency comes from more
    processes, each supervised on its own. The prefork pool is not safe here: on a broker without an
    event loop (the embedded filesystem one) Celery gives its pool processes one shared inqueue, guarded
    by a lock that a pool process holds while it waits for work; a process killed then (kill -9, the OOM
    killer) leaves the lock held for ever and every replacement blocks on it: the worker is alive and
    answers pings but runs nothing. With solo there is no pool, no shared queue and no lock: a process
    that dies takes only itself, and its supervisor restarts it and hands its run back.
    """
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "omlweb",
        "worker",
        "--queues",
        ",".join([*queues, supervision.probe_queue(node)]),
        "--concurrency",
        "1",
        "--hostname",
        node,
        "--pool",
        "solo",
        # Workers talk through the database, not through each other: faster start, less broker traffic.
        "--without-mingle",
        "--without-gossip",
        "--loglevel",
        loglevel,
    ]


@dataclasses.dataclass
class Child:
    """One supervised process and its history."""

    name: str
    kind: str  # web, worker, reaper or scheduler
    command: list[str]
    node: str = ""  # a worker's Celery node name: the `worker` its runs record
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    next_start: float = 0.0
    backoff: float = BACKOFF_FIRST_SECONDS
    restarts: int = 0
    exits: list[float] = dataclasses.field(default_factory=list)
    last_exit: str = ""
    wedged_kills: int = 0
    # The probe sent to a worker and not yet taken: its token and when it was sent.
    probe_token: str = ""
    probe_sent_at: float = 0.0
    next_probe: float = 0.0
    idle_since: float | None = None
    consumed_at: float | None = None

    def state(self) -> dict:
        now = time.time()
        recent = [moment for moment in self.exits if now - moment <= CRASH_WINDOW_SECONDS]
        status = "running" if self.process is not None else "restarting"
        return {
            "name": self.name,
            "kind": self.kind,
            "node": self.node or None,
            "pid": self.process.pid if self.process else None,
            "status": status,
            "crashLooping": len(recent) >= CRASH_LOOP_COUNT,
            "restarts": self.restarts,
            "exitsInLast10Minutes": len(recent),
            "lastExit": self.last_exit or None,
            "wedgedKills": self.wedged_kills,
            "lastConsumed": _iso(self.consumed_at),
        }


def _iso(moment: float | None) -> str | None:
    return None if moment is None else datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")


class Command(BaseCommand):
    help = (
        "Serve omlweb: gunicorn on --bind, Celery workers per service level, the reaper and the scheduler, "
        "supervised, until Ctrl-C."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--bind", default=os.environ.get("OMLWEB_BIND", "127.0.0.1:8000"))
        parser.add_argument("--web-workers", type=int, default=int(os.environ.get("OMLWEB_WEB_WORKERS", "2")))
        parser.add_argument("--web-threads", type=int, default=int(os.environ.get("OMLWEB_WEB_THREADS", "16")))
        parser.add_argument("--no-web", action="store_true", help="Run workers only (a worker host).")
        parser.add_argument("--no-worker", action="store_true", help="Serve the web tier only.")
        parser.add_argument(
            "--services",
            default=os.environ.get("OMLWEB_SERVICES", "LOW,MEDIUM,HIGH"),
            help="Service levels this machine's workers serve (comma-separated).",
        )
        parser.add_argument("--no-reaper", action="store_true", help="Don't run the reaper and pruning here.")
        parser.add_argument(
            "--no-scheduler", action="store_true", help="Don't run the scheduler here (it is safe to run several)."
        )

    def handle(
        self, *args, bind, web_workers, web_threads, no_web, no_worker, services, no_reaper, no_scheduler, **options
    ):
        children = self._children(bind, web_workers, web_threads, no_web, no_worker, services, no_reaper)
        if children and not no_scheduler:
            # Starts the runs of schedules; its own process, supervised like the others (docs/schedules.md).
            manage = str(settings.BASE_DIR / "manage.py")
            # More than one shares a burst of due schedules (each takes the rows the others have not locked).
            for number in range(1, settings.OMLWEB_SCHEDULER_PROCESSES + 1):
                name = "scheduler" if number == 1 else f"scheduler-{number}"
                children.append(Child(name=name, kind="scheduler", command=[sys.executable, manage, "run_scheduler"]))
        if not children:
            raise CommandError("Nothing to run: no web tier and no worker.")
        self._say_what_is_missing()
        Supervisor(children, out=self.stdout.write, err=self.stderr.write).run(
            serving=f"omlweb is serving on http://{bind}/ (Ctrl-C stops it)" if not no_web else ""
        )
        self.stdout.write("omlweb stopped.")

    def _children(self, bind, web_workers, web_threads, no_web, no_worker, services, no_reaper) -> list[Child]:
        python = sys.executable
        children = []
        if not no_web:
            command = [
                python,
                "-m",
                "gunicorn",
                "omlweb.wsgi:application",
                "--config",
                "python:omlweb.gunicorn_conf",
                "--bind",
                bind,
                "--workers",
                str(web_workers),
                "--threads",
                str(web_threads),
                "--access-logfile",
                "-",
            ]
            children.append(Child(name="web", kind="web", command=command))
        if not no_worker:
            for level in [name.strip().upper() for name in services.split(",") if name.strip()]:
                if level not in settings.OMLWEB_SERVICE_LEVELS:
                    raise CommandError(f"Unknown service level {level!r}: use LOW, MEDIUM or HIGH.")
                for slot in range(1, settings.OMLWEB_SERVICE_LEVELS[level]["concurrency"] + 1):
                    node = supervision.node_name(level, slot)
                    # Every worker also serves the builds' and the notifications' queues.
                    queues = [queue_name(level), settings.OMLWEB_BUILD_QUEUE, notifications.notify_queue()]
                    command = worker_command(node=node, queues=queues)
                    children.append(
                        Child(name=f"worker-{level.lower()}-{slot}", kind="worker", command=command, node=node)
                    )
        if children and not no_reaper:
            # Its own process, so a reaper pass that hangs or crashes never stalls the supervision.
            manage = str(settings.BASE_DIR / "manage.py")
            children.append(Child(name="reaper", kind="reaper", command=[python, manage, "reap_runs", "--loop"]))
        return children

    def _say_what_is_missing(self) -> None:
        """Start anyway when the database or the broker is down, but say what that means."""
        try:
            connection.ensure_connection()
        except Exception as error:
            self.stderr.write(
                f"The database does not answer ({_first_line(error)}): every call gets a 503 until it does; "
                "everything resumes by itself when it is back."
            )
        finally:
            close_old_connections()
        problem = broker_problem()
        if problem:
            self.stderr.write(
                f"The broker ({broker_scheme(settings.CELERY_BROKER_URL)}) does not answer ({problem}): async jobs "
                "are refused with a 503 until it does; synchronous runs work. Workers wait for it."
            )


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class Supervisor:
    def __init__(self, children: list[Child], *, out, err) -> None:
        self.children = children
        self.out = out
        self.err = err
        self.stopping = False
        # Worker nodes whose runs must be handed back, with when their process died (retried until the
        # database answers; a run the restarted process claimed since is not its predecessor's).
        self.hand_back: dict[str, datetime] = {}
        self.next_hand_back = 0.0
        self.hand_back_failing = False
        self.next_state = 0.0

    def run(self, *, serving: str = "") -> None:
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGTERM, self._stop)
        for child in self.children:
            self._start(child)
        if serving:
            self.out(serving)
        self.out(f"Started: {', '.join(child.name for child in self.children)}")
        try:
            while not self.stopping:
                self.tick()
                time.sleep(TICK_SECONDS)
        finally:
            self._stop_all()
            supervision.remove_state()

    def _stop(self, signum, frame) -> None:
        self.stopping = True

    def tick(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.process is not None and child.process.poll() is not None:
                self._exited(child, now)
            if child.process is None and now >= child.next_start and not self.stopping:
                self._start(child)
        self._watch_workers(now)
        if self.hand_back and now >= self.next_hand_back:
            self._hand_back(now)
        if now >= self.next_state:
            self.next_state = now + STATE_EVERY_SECONDS
            self._write_state()

    def _start(self, child: Child) -> None:
        if child.kind == "worker":
            supervision.forget(child.node)
            child.probe_token, child.idle_since, child.consumed_at = "", None, None
            child.next_probe = time.monotonic() + settings.OMLWEB_WORKER_PROBE_SECONDS
        # Its own session: Ctrl-C reaches only this command, which stops the others in order, and
        # killing the group takes whatever the child started.
        child.process = subprocess.Popen(child.command, start_new_session=True)
        child.started_at = time.monotonic()
        if child.restarts:
            self.out(f"{child.name} restarted (pid {child.process.pid}, restart {child.restarts})")

    def _exited(self, child: Child, now: float) -> None:
        assert child.process is not None  # its process just ended
        code = child.process.returncode
        _kill_group(child.process.pid)
        ran = now - child.started_at
        if ran >= STABLE_SECONDS:
            child.backoff = BACKOFF_FIRST_SECONDS
        # Crashing again soon after a start: wait longer each time, so a child that cannot start (a port
        # taken, a dependency down) does not spin.
        delay, child.backoff = child.backoff, min(child.backoff * 2, BACKOFF_MAX_SECONDS)
        child.restarts += 1
        child.exits.append(time.time())
        child.exits = child.exits[-50:]
        child.last_exit = f"{_iso(time.time())}: code {code} after {ran:.0f} s"
        child.process = None
        child.next_start = now + delay
        if child.kind == "worker":
            self.hand_back.setdefault(child.node, datetime.now(UTC))
        self.err(f"{child.name} exited with code {code} after {ran:.0f} s; restarting it in {delay:g} s.")

    def _hand_back(self, now: float) -> None:
        for node, died_at in sorted(self.hand_back.items()):
            try:
                runs = worker_lost(worker=node, died_at=died_at)
            except Exception as error:
                # The database is down: try again in a few seconds (the reaper would, later), say so once.
                if not self.hand_back_failing:
                    self.err(f"Could not hand back the runs of {node} yet, retrying: {_first_line(error)}")
                self.hand_back_failing = True
                self.next_hand_back = now + HAND_BACK_RETRY_SECONDS
                close_old_connections()
                return
            del self.hand_back[node]
            self.hand_back_failing = False
            if runs:
                self.err(f"Handed back {len(runs)} run(s) of {node}: {', '.join(runs)}")
        close_old_connections()

    def _watch_workers(self, now: float) -> None:
        """Prove that each worker takes messages; kill one that is alive but does not (wedged)."""
        wedged_after = settings.OMLWEB_WORKER_WEDGED_SECONDS
        workers = [c for c in self.children if c.kind == "worker" and c.process is not None]
        to_probe = []
        for child in workers:
            if child.process is None or supervision.ready_pid(child.node) != child.process.pid:
                continue  # still starting (or waiting for the broker): nothing to judge yet
            busy = supervision.busy(child.node)
            if busy is None:
                child.idle_since = child.idle_since or now
            else:
                child.idle_since = None
                limit = busy.get("limit")
                if limit and time.time() > busy["since"] + limit + HUNG_MARGIN_SECONDS:
                    self._kill_wedged(child, f"its task has run {time.time() - busy['since']:.0f} s, past its limit")
                    continue
            if child.probe_token:
                if supervision.probed(child.node) == child.probe_token:
                    child.probe_token, child.consumed_at = "", time.time()
                    child.next_probe = now + settings.OMLWEB_WORKER_PROBE_SECONDS
                elif (
                    now - child.probe_sent_at > wedged_after
                    and child.idle_since is not None
                    and now - child.idle_since > wedged_after / 2
                    and broker_problem() is None
                ):
                    self._kill_wedged(child, f"it has taken no message for {wedged_after:g} s while idle")
            elif now >= child.next_probe:
                to_probe.append(child)
        if to_probe:
            self._probe(to_probe, now)

    def _probe(self, children: list[Child], now: float) -> None:
        from scripts_app.tasks import probe

        if broker_problem() is not None:
            # The broker is down: the workers can take nothing, and that is not their fault.
            for child in children:
                child.next_probe = now + settings.OMLWEB_WORKER_PROBE_SECONDS
            return
        for child in children:
            token = uuid.uuid4().hex
            try:
                probe.apply_async(args=(token,), queue=supervision.probe_queue(child.node))
            except Exception as error:
                self.err(f"Could not probe {child.name}: {_first_line(error)}")
                child.next_probe = now + settings.OMLWEB_WORKER_PROBE_SECONDS
                continue
            child.probe_token, child.probe_sent_at = token, now

    def _kill_wedged(self, child: Child, why: str) -> None:
        self.err(f"{child.name} is wedged ({why}): killing it to restart it.")
        child.wedged_kills += 1
        if child.process is not None:
            _kill_group(child.process.pid)

    def _write_state(self) -> None:
        try:
            supervision.write_state(
                {"pid": os.getpid(), "host": os.uname().nodename, "children": [c.state() for c in self.children]}
            )
        except OSError as error:
            self.err(f"Could not record the supervisor's state: {error}")

    def _stop_all(self) -> None:
        running = [child.process for child in self.children if child.process is not None]
        for process in running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(process.pid)
                process.wait()


def _kill_group(pid: int) -> None:
    """Kill a child's whole process group: what it started must not outlive it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
