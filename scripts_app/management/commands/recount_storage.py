"""Rebuild each user's storage counter (what their quota reads) from their runs and datasets."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from scripts_app.services.shares import megabytes, recount_storage


class Command(BaseCommand):
    help = (
        "Recount what each user keeps (their runs' results and figures, their datasets) from the runs and "
        "datasets themselves, and correct the counters the storage quota reads. Safe while the service runs."
    )

    def handle(self, *args, **options) -> None:
        corrected = recount_storage()
        names = dict(get_user_model().objects.filter(pk__in=corrected).values_list("pk", "username"))
        for user_id, (counted, true) in corrected.items():
            self.stdout.write(f"{names.get(user_id, user_id)}: counted {megabytes(counted)}, keeps {megabytes(true)}")
        self.stdout.write(f"Corrected {len(corrected)} user(s).")
