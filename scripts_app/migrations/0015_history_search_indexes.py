"""Indexes for the history's searches on a million runs (issue #13, docs/ui.md "Numbers").

- (user, script_name, created_at): an analyst's "script name contains" (names first, then
  `script_name IN (...)`, see services/exports.script_names_containing) and its count, from the index.
- PostgreSQL only: a pg_trgm GIN index on the parameters' text, the very expression Django's
  `icontains` on `Cast(parameters, TextField())` writes (UPPER(("parameters")::text)), so "parameters
  contain" finds its rows without reading every run. Not a model index: SQLite has no such index,
  and the state stays the same for both (makemigrations sees nothing to do). Where the database user
  may not create the extension, the index is skipped (the search still works, by reading the rows).
"""

import logging

from django.db import migrations, models, transaction

logger = logging.getLogger(__name__)

TRIGRAM_INDEX = "run_parameters_trgm"


def add_trigram_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    table = schema_editor.quote_name(apps.get_model("scripts_app", "Run")._meta.db_table)
    try:
        with transaction.atomic(using=schema_editor.connection.alias):
            schema_editor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except Exception as error:  # noqa: BLE001 - a privilege the deployment may not grant
        logger.warning("pg_trgm is not available (%s): 'parameters contain' reads every run instead", error)
        return
    schema_editor.execute(
        f"CREATE INDEX IF NOT EXISTS {TRIGRAM_INDEX} ON {table} USING gin (UPPER((parameters)::text) gin_trgm_ops)"
    )
    # The planner learns how selective the expression is only from ANALYZE: until then it guessed that
    # "APAC" in a third of the runs was rare and read them all through the index (204 ms for 51 rows).
    schema_editor.execute(f"ANALYZE {table}")


def drop_trigram_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX IF EXISTS {TRIGRAM_INDEX}")


class Migration(migrations.Migration):

    dependencies = [
        ("scripts_app", "0014_run_result_json"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="run",
            index=models.Index(fields=["user", "script_name", "-created_at"], name="run_user_script_created"),
        ),
        migrations.RunPython(add_trigram_index, drop_trigram_index, elidable=False),
    ]
