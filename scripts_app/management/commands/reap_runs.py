"""Take back runs whose worker or web process died: requeue them, or fail them after too many tries."""

from __future__ import annotations

import time

from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import close_old_connections

from scripts_app.services import environments, notifications
from scripts_app.services.jobs.reaper import ReapReport, prune_runs, reap_runs

PRUNE_EVERY_SECONDS = 3600


class Command(BaseCommand):
    help = "Requeue or fail runs left RUNNING by a dead worker, and republish queued jobs whose message was lost."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--loop",
            action="store_true",
            help=(
                f"Keep reaping every OMLWEB_REAPER_INTERVAL_SECONDS ({settings.OMLWEB_REAPER_INTERVAL_SECONDS:g} s), "
                "and prune old runs and this host's unused environment folders hourly (what `manage.py serve` runs)."
            ),
        )

    def handle(self, *args, loop: bool, **options) -> None:
        if not loop:
            self._report(reap_runs(), quiet=False)
            self._rebuilds()
            self._notifications()
            return
        next_prune = time.monotonic() + 60
        failing = ""
        while True:
            try:
                self._report(reap_runs(), quiet=True)
                self._rebuilds()
                self._notifications()
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
                    prune_runs()
                    # Environment folders are this host's own: each host's reaper clears its own.
                    for path in environments.environment_folders_sweep():
                        self.stdout.write(f"removed the environment folder {path}")
            except Exception as error:
                # The database (or broker) is down: say so once, not on every pass, and try again.
                why = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
                if why != failing:
                    self.stderr.write(f"Reaper pass failed, retrying every pass until it works: {why}")
                failing = why
            else:
                if failing:
                    self.stderr.write("Reaper passes work again.")
                failing = ""
            finally:
                close_old_connections()
            time.sleep(settings.OMLWEB_REAPER_INTERVAL_SECONDS)

    def _notifications(self) -> None:
        """Runs past a rule's 'longer than N seconds', and deliveries whose message or worker was lost."""
        for delivery in notifications.check_long_running():
            self.stdout.write(f"long-running {delivery.run_id} notified ({delivery.channel})")
        for delivery_id in notifications.sweep():
            self.stdout.write(f"republished notification {delivery_id}")

    def _rebuilds(self) -> None:
        for name in environments.environment_republish_lost_builds():
            self.stdout.write(f"republished the build of environment {name}")

    def _report(self, report: ReapReport, *, quiet: bool) -> None:
        for label in ("requeued", "failed", "cancelled", "republished"):
            for run_id in getattr(report, label):
                self.stdout.write(f"{label} {run_id}")
        if not report and not quiet:
            self.stdout.write("Nothing to reap.")
