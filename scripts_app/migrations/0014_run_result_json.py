"""A run's value is kept as the JSON text its run's process checked, not as a JSON column.

The rename keeps the data; the type change turns it into text in place: PostgreSQL casts jsonb to its
text form (`USING result_json::text`), and SQLite already holds JSON as text (the table is copied).
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("scripts_app", "0013_worker_heartbeats"),
    ]

    operations = [
        migrations.RenameField(model_name="run", old_name="result", new_name="result_json"),
        migrations.AlterField(model_name="run", name="result_json", field=models.TextField(blank=True, null=True)),
    ]
