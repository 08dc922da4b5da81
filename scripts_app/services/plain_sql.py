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

from django.db import connection, connections, models


def columns(model: type[models.Model], alias: str) -> str:
    """`alias."column", ...` for every concrete field of `model`, in `_meta.concrete_fields` order."""
    key = (connection.vendor, model, alias)
    text = _columns.get(key)
    if text is None:
        quote = connection.ops.quote_name
        text = ", ".join(f"{quote(alias)}.{quote(_column(field))}" for field in model._meta.concrete_fields)
        _columns[key] = text
    return text


_columns: dict[tuple[str, type[models.Model], str], str] = {}


def row_of(sql: str, params: list[Any], *models_: type[models.Model]) -> list[models.Model] | None:
    """Run `sql`, which selects `columns(model, ...)` of each of `models_` in turn, and return the first
    row as one instance per model (None: no row)."""
    wrapper = connections[connection.alias]
    with wrapper.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return None
    instances = []
    position = 0
    for model in models_:
        names, converters = _readers(wrapper, model)
        values = list(row[position : position + len(names)])
        position += len(names)
        for index, expression, convert in converters:
            value = values[index]
            if value is not None:
                for each in convert:
                    value = each(value, expression, wrapper)
                values[index] = value
        instances.append(model.from_db(wrapper.alias, names, values))
    return instances


def _readers(wrapper, model: type[models.Model]) -> tuple[list[str], list[tuple[int, Any, list]]]:
    """The model's attribute names and, for each column that has any, its converters: made once per
    connection object (each thread has its own), as the ORM's compiler makes them per query."""
    cache = wrapper.__dict__.setdefault("_omlweb_plain_sql_readers", {})
    readers = cache.get(model)
    if readers is None:
        fields = model._meta.concrete_fields
        converters = []
        for index, field in enumerate(fields):
            expression = field.get_col(model._meta.db_table)
            convert = wrapper.ops.get_db_converters(expression) + field.get_db_converters(wrapper)
            if convert:
                converters.append((index, expression, convert))
        readers = cache[model] = ([field.attname for field in fields], converters)
    return readers


def insert(instance: models.Model) -> None:
    """`instance.save(force_insert=True)` as one plain INSERT of every concrete column, for a model whose
    primary key is set before the insert (no auto-increment) and which no signal watches: what
    `Model.objects.create` writes, without the ORM's cost of building it. Each field's `pre_save` runs as
    it does in the ORM (auto_now_add and the like)."""
    model = type(instance)
    assert instance.pk is not None, "the primary key is set before the insert"
    wrapper = connections[connection.alias]
    key = (wrapper.vendor, model)
    sql = _inserts.get(key)
    if sql is None:
        quote = wrapper.ops.quote_name
        fields = model._meta.concrete_fields
        sql = _inserts[key] = (
            f"INSERT INTO {quote(model._meta.db_table)} ({', '.join(quote(_column(field)) for field in fields)}) "
            f"VALUES ({', '.join(['%s'] * len(fields))})"
        )
    params = [field.get_db_prep_save(field.pre_save(instance, True), wrapper) for field in model._meta.concrete_fields]
    with wrapper.cursor() as cursor:
        cursor.execute(sql, params)
    instance._state.adding = False
    instance._state.db = wrapper.alias


_inserts: dict[tuple[str, type[models.Model]], str] = {}


def _column(field: models.Field) -> str:
    assert field.column, field.name  # a concrete field always has its column
    return field.column
