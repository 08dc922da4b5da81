"""Delete finished runs older than the retention period (OMLWEB_RUN_RETENTION_DAYS)."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand

from scripts_app.services.jobs.reaper import prune_runs


class Command(BaseCommand):
    help = "Delete finished runs, and their images, older than OMLWEB_RUN_RETENTION_DAYS."

    def handle(self, *args, **options) -> None:
        deleted = prune_runs()
        self.stdout.write(f"Deleted {deleted} runs finished over {settings.OMLWEB_RUN_RETENTION_DAYS} days ago.")
