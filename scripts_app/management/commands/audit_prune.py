"""Retention: remove the audit events older than a date, leaving an anchor the kept chain verifies from."""

from __future__ import annotations

from datetime import datetime, time

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from scripts_app.services import audit


class Command(BaseCommand):
    help = "Remove audit events recorded before DATE (YYYY-MM-DD or an ISO date-time) and leave an anchor."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--before", required=True, help="Remove events recorded before this moment.")

    def handle(self, *args, before: str, **options) -> None:
        moment = parse_moment(before)
        if moment is None:
            raise CommandError(f"--before {before!r} is not a date (YYYY-MM-DD) or an ISO date-time.")
        if moment > timezone.now():
            raise CommandError("--before is in the future: that would remove the whole trail.")
        anchor = audit.prune(before=moment)
        if anchor is None:
            self.stdout.write(f"No audit events before {moment.isoformat()}.")
            return
        self.stdout.write(
            f"Removed {anchor.removed_count} audit events up to #{anchor.last_removed_id}; "
            f"the chain now starts after anchor {anchor.last_removed_hash[:16]}."
        )


def parse_moment(text: str) -> datetime | None:
    try:
        moment = parse_datetime(text)
        if moment is None:
            day = parse_date(text)
            moment = datetime.combine(day, time.min) if day else None
    except ValueError:
        return None
    if moment is not None and timezone.is_naive(moment):
        moment = timezone.make_aware(moment)
    return moment
