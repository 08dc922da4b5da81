"""Run the web server (gunicorn) and a Celery worker in the foreground; Ctrl-C stops both cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Serve omlweb: gunicorn on --bind and one Celery worker, until Ctrl-C or SIGTERM."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--bind", default=os.environ.get("OMLWEB_BIND", "127.0.0.1:8000"))
        parser.add_argument("--web-workers", type=int, default=int(os.environ.get("OMLWEB_WEB_WORKERS", "2")))
        parser.add_argument("--web-threads", type=int, default=int(os.environ.get("OMLWEB_WEB_THREADS", "4")))
        parser.add_argument("--no-worker", action="store_true", help="Serve the web tier only.")

    def handle(self, *args, bind: str, web_workers: int, web_threads: int, no_worker: bool, **options) -> None:
        python = sys.executable
        commands = {
            "web": [
                python,
                "-m",
                "gunicorn",
                "omlweb.wsgi:application",
                "--bind",
                bind,
                "--workers",
                str(web_workers),
                "--threads",
                str(web_threads),
                # A sync run may take as long as the run's wall-clock limit.
                "--timeout",
                "0",
                "--access-logfile",
                "-",
            ],
        }
        if not no_worker:
            commands["worker"] = [python, "-m", "celery", "-A", "omlweb", "worker", "--loglevel", "INFO"]
        processes = {name: subprocess.Popen(command) for name, command in commands.items()}
        self.stdout.write(f"omlweb is serving on http://{bind}/ (Ctrl-C stops it)")

        stopping = False

        def stop(signum, frame) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            while not stopping:
                for name, process in processes.items():
                    if process.poll() is not None:
                        self.stderr.write(f"{name} exited with code {process.returncode}; stopping.")
                        stopping = True
                time.sleep(0.2)
        finally:
            for process in processes.values():
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 30
            for process in processes.values():
                try:
                    process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    process.kill()
        self.stdout.write("omlweb stopped.")
