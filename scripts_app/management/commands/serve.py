"""Run the web server (gunicorn), one Celery worker per service level and the reaper, in the foreground.

Ctrl-C or SIGTERM stops them all cleanly: workers finish (or hand back) what they run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from scripts_app.services import jobs

PRUNE_EVERY_SECONDS = 3600
# Workers get this long to finish their runs on a stop; then they are killed and the reaper requeues.
STOP_GRACE_SECONDS = 30


def worker_command(level: str, concurrency: int) -> list[str]:
    """The Celery worker of one service level: its own queue and process pool, so levels never share slots."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "omlweb",
        "worker",
        "--queues",
        f"{jobs.queue_name(level)},{settings.OMLWEB_BUILD_QUEUE}",
        "--concurrency",
        str(concurrency),
        "--hostname",
        f"{level.lower()}@{socket.gethostname()}",
        "--pool",
        "prefork",
        # Workers talk through the database, not through each other: faster start, less broker traffic.
        "--without-mingle",
        "--without-gossip",
        "--loglevel",
        "INFO",
    ]


class Command(BaseCommand):
    help = "Serve omlweb: gunicorn on --bind, a Celery worker per service level and the reaper, until Ctrl-C."

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

    def handle(self, *args, bind, web_workers, web_threads, no_web, no_worker, services, no_reaper, **options):
        python = sys.executable
        commands: dict[str, list[str]] = {}
        if not no_web:
            commands["web"] = [
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
        if not no_worker:
            for level in [name.strip().upper() for name in services.split(",") if name.strip()]:
                if level not in settings.OMLWEB_SERVICE_LEVELS:
                    raise CommandError(f"Unknown service level {level!r}: use LOW, MEDIUM or HIGH.")
                concurrency = settings.OMLWEB_SERVICE_LEVELS[level]["concurrency"]
                if concurrency > 0:
                    commands[f"worker-{level.lower()}"] = worker_command(level, concurrency)
        if not commands:
            raise CommandError("Nothing to run: no web tier and no worker.")
        # Own sessions: Ctrl-C reaches only this command, which stops the others in order.
        processes = {name: subprocess.Popen(command, start_new_session=True) for name, command in commands.items()}
        if "web" in processes:
            self.stdout.write(f"omlweb is serving on http://{bind}/ (Ctrl-C stops it)")
        self.stdout.write(f"Started: {', '.join(processes)}")

        stopping = False

        def stop(signum, frame) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        next_reap = time.monotonic() + 5
        next_prune = time.monotonic() + 60
        try:
            while not stopping:
                for name, process in processes.items():
                    if process.poll() is not None:
                        self.stderr.write(f"{name} exited with code {process.returncode}; stopping.")
                        stopping = True
                if not no_reaper and time.monotonic() >= next_reap:
                    next_reap = time.monotonic() + settings.OMLWEB_REAPER_INTERVAL_SECONDS
                    self._quietly(jobs.reap_runs)
                if not no_reaper and time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
                    self._quietly(jobs.prune_runs)
                time.sleep(0.2)
        finally:
            for process in processes.values():
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            for process in processes.values():
                try:
                    process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        self.stdout.write("omlweb stopped.")

    def _quietly(self, task) -> None:
        try:
            task()
        except Exception as error:
            # A reaper pass that fails (database locked, broker down) is retried on the next one.
            self.stderr.write(f"{task.__name__} failed: {error!r}")
