"""Start the runs of schedules when they are due (what `manage.py serve` runs as its `scheduler` child)."""

from __future__ import annotations

import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections

from scripts_app.services import schedules


class Command(BaseCommand):
    help = "Fire due schedules: once (--once), or in a loop that wakes when the next one is due."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--once", action="store_true", help="One pass, then exit.")

    def handle(self, *args, once: bool, **options) -> None:
        if once:
            self._report(schedules.fire_due())
            return
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        poll = settings.OMLWEB_SCHEDULER_POLL_SECONDS
        schedules.warm_up()
        # Said once ready: the first pass follows at once.
        self.stdout.write(f"Scheduler started (pass every {poll:g} s at most).")
        self.stdout.flush()
        failing = ""
        while not stop.is_set():
            wait = poll
            try:
                self._report(schedules.fire_due())
                upcoming = schedules.seconds_to_next()
                if upcoming is not None:
                    wait = min(poll, upcoming)
            except Exception as error:
                # The database is down: say so once, keep trying; missed occurrences follow their policy.
                why = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
                if why != failing:
                    self.stderr.write(f"Scheduler pass failed, retrying every pass until it works: {why}")
                failing = why
            else:
                if failing:
                    self.stderr.write("Scheduler passes work again.")
                failing = ""
            finally:
                close_old_connections()
            stop.wait(max(wait, 0.05))
        self.stdout.write("Scheduler stopped.")

    def _report(self, report: schedules.FireReport) -> None:
        for label in ("started", "skipped", "queued", "refused"):
            for item in getattr(report, label):
                self.stdout.write(f"{label} {item}")
