"""Whole rows read with plain SQL into model instances, as the ORM reads them: for the few statements
every sync run makes (issue #11), where building the queryset (filters, joins, select_related) cost
the web process more CPU than the database takes to answer.

`row_of` selects every concrete column of one or more models (a row and the rows its foreign keys
point to, joined by the caller's FROM clause) and hands each back as the ORM would: the database's
converters applied (SQLite returns datetimes as text, UUIDs as hex), built with `Model.from_db`, so
they are ordinary instances (saved, refreshed, related as any other).
"""

from __future__ import annotations

from typing import Any

from django.db import connection, models


def columns(model: type[models.Model], alias: str) -> str:
    """`alias."column", ...` for every concrete field of `model`, in `_meta.concrete_fields` order."""
    quote = connection.ops.quote_name
    return ", ".join(f"{quote(alias)}.{quote(field.column)}" for field in model._meta.concrete_fields)


def row_of(sql: str, params: list[Any], *models_: type[models.Model]) -> list[models.Model] | None:
    """Run `sql`, which selects `columns(model, ...)` of each of `models_` in turn, and return the first
    row as one instance per model (None: no row)."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    instances = []
    position = 0
    for model in models_:
        fields = model._meta.concrete_fields
        values = list(row[position : position + len(fields)])
        position += len(fields)
        for index, field in enumerate(fields):
            value = values[index]
            if value is None:
                continue
            expression = field.get_col(model._meta.db_table)
            for convert in connection.ops.get_db_converters(expression) + field.get_db_converters(connection):
                value = convert(value, expression, connection)
            values[index] = value
        instances.append(model.from_db(connection.alias, [field.attname for field in fields], values))
    return instances
