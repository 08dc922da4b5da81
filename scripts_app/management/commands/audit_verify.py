"""Verify the audit trail's hash chain; exit 1 and name the first broken event if it is broken."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from scripts_app.services import audit


class Command(BaseCommand):
    help = "Check that every audit event follows the one before it and matches its hash."

    def handle(self, *args, **options) -> None:
        result = audit.verify()
        start = f" from the anchor after event #{result.anchor_id}" if result.anchor_id else ""
        if not result.ok:
            raise CommandError(
                f"Audit chain broken at event #{result.broken_id}: {result.reason} "
                f"({result.checked} events before it verified{start})."
            )
        self.stdout.write(f"Audit chain verified: {result.checked} events{start}.")
