"""Build on this host every READY environment it lacks, now rather than on the first run there."""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandError

from scripts_app.errors import OmlError
from scripts_app.models import Environment
from scripts_app.services import environments


class Command(BaseCommand):
    help = "Build on this host every READY environment (from its lock) that this host does not have yet."

    def handle(self, *args, **options) -> None:
        failed = []
        for environment in Environment.objects.filter(status=Environment.Status.READY).select_related("lock"):
            started = time.monotonic()
            try:
                python = environments.environment_python(environment)
            except OmlError as error:
                failed.append(environment.name)
                self.stderr.write(error.message)
                continue
            self.stdout.write(f"{environment.name}: {python} ({time.monotonic() - started:.1f} s)")
        if failed:
            raise CommandError(f"Could not build on this host: {', '.join(failed)}")
