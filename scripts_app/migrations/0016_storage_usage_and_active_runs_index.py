"""The storage quota and the shares without reading a user's history (issue 11).

- StorageUsage: one row per user with what they keep (their runs' stored_bytes and their datasets'
  size_bytes), kept in step by services.shares; filled here from the runs and datasets. The quota
  read one SUM over every run of the user, twice a run, and no longer needs run_storage_of_user.
- run_active_of_user: a partial index on the active runs only, for the shares' counts.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models
from django.db.models import Sum


def fill_storage_usage(apps, schema_editor):
    Run = apps.get_model("scripts_app", "Run")
    Dataset = apps.get_model("scripts_app", "Dataset")
    StorageUsage = apps.get_model("scripts_app", "StorageUsage")
    used: dict[int, int] = {}
    for user, total in Run.objects.order_by().values("user").annotate(total=Sum("stored_bytes")).values_list(
        "user", "total"
    ):
        used[user] = used.get(user, 0) + (total or 0)
    for owner, total in Dataset.objects.order_by().values("owner").annotate(total=Sum("size_bytes")).values_list(
        "owner", "total"
    ):
        used[owner] = used.get(owner, 0) + (total or 0)
    StorageUsage.objects.bulk_create(
        [StorageUsage(user_id=user, used_bytes=total) for user, total in used.items()], batch_size=1000
    )


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("scripts_app", "0015_history_search_indexes"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="StorageUsage",
            fields=[
                (
                    "user",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="storage_usage",
                        serialize=False,
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                ("used_bytes", models.BigIntegerField(default=0)),
            ],
        ),
        # Filled while run_storage_of_user still covers the runs' sum.
        migrations.RunPython(fill_storage_usage, migrations.RunPython.noop),
        migrations.RemoveIndex(model_name="run", name="run_storage_of_user"),
        migrations.AddIndex(
            model_name="run",
            index=models.Index(
                condition=models.Q(("status", "QUEUED"), ("status", "RUNNING"), _connector="OR"),
                fields=["user", "mode", "service"],
                name="run_active_of_user",
            ),
        ),
    ]
