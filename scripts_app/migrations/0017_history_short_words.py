"""The history's search for a parameter value of one or two characters, on an index (docs/ui.md, "History").

A trigram holds three characters: the trigram index of migration 0015 cannot find "96" or "EU", so such a
search read the runs newest first until it had a page, every run when the value is rare. Such a value is
now matched as a whole value or name (services/exports.HasShortParameterWord), and on PostgreSQL a GIN
index (jsonb_ops) holds the words it is matched against: the parameters' scalar values and object keys,
at any depth, as one jsonb array ({"n": 96, "region": "EU"} gives [96, "EU", "n", "region"]). Built-in
functions only, so the index costs about 2 microseconds a run to keep. SQLite has no such index: it
matches the same words with json_tree.
"""

from django.db import migrations

SHORT_WORDS_INDEX = "run_parameter_words"

# Must stay the very expression services/exports.PARAMETER_WORDS writes (with the column qualified), or
# the planner will not use the index (tests/web/test_history_and_tokens.py checks that it does).
PARAMETER_WORDS = (
    '(jsonb_path_query_array(parameters, \'strict $.** ? (@.type() != "object" && @.type() != "array")\')'
    " || jsonb_path_query_array(parameters, 'strict $.** ? (@.type() == \"object\").keyvalue().key'))"
)


def add_words_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    table = schema_editor.quote_name(apps.get_model("scripts_app", "Run")._meta.db_table)
    schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {SHORT_WORDS_INDEX} ON {table} USING gin ({PARAMETER_WORDS})")
    # The planner's statistics of the new expression: without them it cannot tell a word the index should
    # find ("96", in 1 % of the runs) from one the newest-first scan meets at once ("EU", in a third).
    schema_editor.execute(f"ANALYZE {table}")


def drop_words_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX IF EXISTS {SHORT_WORDS_INDEX}")


class Migration(migrations.Migration):
    dependencies = [
        ("scripts_app", "0016_storage_usage_and_active_runs_index"),
    ]

    operations = [
        migrations.RunPython(add_words_index, drop_words_index, elidable=False),
    ]
