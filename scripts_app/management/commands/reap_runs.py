"""Take back runs whose worker or web process died: requeue them, or fail them after too many tries."""

from __future__ import annotations

import time

from django.conf import settings
from django.core.management.base import BaseCommand

from scripts_app.services import jobs


class Command(BaseCommand):
    help = "Requeue or fail runs left RUNNING by a dead worker, and republish queued jobs whose message was lost."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--loop",
            action="store_true",
            help=f"Keep reaping every OMLWEB_REAPER_INTERVAL_SECONDS ({settings.OMLWEB_REAPER_INTERVAL_SECONDS:g} s).",
        )

    def handle(self, *args, loop: bool, **options) -> None:
        while True:
            report = jobs.reap_runs()
            for label in ("requeued", "failed", "cancelled", "republished"):
                for run_id in getattr(report, label):
                    self.stdout.write(f"{label} {run_id}")
            if not loop:
                if not report:
                    self.stdout.write("Nothing to reap.")
                return
            time.sleep(settings.OMLWEB_REAPER_INTERVAL_SECONDS)
