"""Streamed exports as CSV and JSON Lines: the audit trail and the run history.

Rows are read in keyset chunks (never OFFSET, never the whole result), turned into text line by
line, and handed to a StreamingHttpResponse by the caller: memory stays flat however many rows
there are.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import NotSupportedError, connection
from django.db.models import BooleanField, F, Func, Q, QuerySet, TextField
from django.db.models.functions import Cast
from django.utils import timezone

from scripts_app import roles
from scripts_app.errors import BadRequest
from scripts_app.models import Run

FORMATS = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson; charset=utf-8"}

RUN_FIELDS = (
    "id",
    "created_at",
    "started_at",
    "finished_at",
    "queue_seconds",
    "run_seconds",
    "user",
    "script_owner",
    "script_name",
    "script_version",
    "kind",
    "mode",
    "service",
    "env_name",
    "env_lock",
    "status",
    "error_code",
    "parameters",
    "client_address",
)
RUN_FILTERS = ("script", "params", "user", "status", "since", "until")


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise BadRequest(f"Unknown export format {fmt!r}: use csv or jsonl.")
    return fmt


def lines(rows: Iterable[dict], *, fmt: str, fields: tuple[str, ...]) -> Iterator[str]:
    """The rows as CSV (a header first; JSON values as JSON text) or as one JSON object per line."""
    if fmt == "jsonl":
        for row in rows:
            yield json.dumps(row, cls=DjangoJSONEncoder, ensure_ascii=False) + "\n"
        return
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(fields)
    for count, row in enumerate(rows, start=1):
        writer.writerow([_cell(row.get(field)) for field in fields])
        if count % 500 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, cls=DjangoJSONEncoder, ensure_ascii=False, sort_keys=True)
    if isinstance(value, bool | int | float):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    text = str(value)
    # A cell a spreadsheet would run as a formula starts with a quote instead (CSV injection).
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


# The run history


def runs_for(*, user, filters: dict) -> QuerySet[Run]:
    """The runs `user` may see, with the history page's filters (script, params, user, status, since, until)."""
    sees_all = roles.sees_everything(user)
    runs = roles.runs_visible_to(user, Run.objects.all())
    if filters.get("script"):
        names = script_names_containing(filters["script"], user_id=None if sees_all else user.pk)
        if names is None:
            runs = runs.filter(script_name__icontains=filters["script"])
        else:
            runs = runs.filter(script_name__in=names)
    if filters.get("params"):
        if is_short_word(filters["params"]):
            runs = runs.filter(HasShortParameterWord("parameters", filters["params"]))
        else:
            text = Cast("parameters", TextField())
            runs = runs.annotate(parameters_text=text).filter(parameters_text__icontains=filters["params"])
    if filters.get("user") and sees_all:
        runs = runs.filter(user__username=filters["user"])
    if filters.get("status") in Run.Status.values:
        runs = runs.filter(status=filters["status"])
    since, until = _day(filters.get("since")), _day(filters.get("until"))
    if since:
        runs = runs.filter(created_at__gte=_start_of(since))
    if until:
        runs = runs.filter(created_at__lt=_start_of(until + dt.timedelta(days=1)))
    return runs


# pg_trgm indexes three characters at a time: a shorter value cannot use its index.
TRIGRAM = 3


def is_short_word(text: str) -> bool:
    """A "parameters contain" value no trigram holds: matched as a whole value or name, not as a part."""
    return len(text) < TRIGRAM


# The run's parameter words: its scalar values and object keys at any depth, as one jsonb array. Migration
# 0017 indexes exactly this expression (GIN), with the bare column name where this has `{parameters}`.
PARAMETER_WORDS = (
    '(jsonb_path_query_array({parameters}, \'strict $.** ? (@.type() != "object" && @.type() != "array")\')'
    " || jsonb_path_query_array({parameters}, 'strict $.** ? (@.type() == \"object\").keyvalue().key'))"
)


def _like_escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class HasShortParameterWord(Func):
    """The run's parameters hold `word` (one or two characters) as a whole value or name, at any depth: a
    string or an object key equal to it ignoring case, or a number equal to it. "96" matches {"n": 96} and
    {"ids": ["96"]}, not {"n": 196}; "eu" matches {"region": "EU"}. On PostgreSQL from the GIN index of
    migration 0017; on SQLite with json_tree, reading the runs.

    Why not a part of a value, as longer searches are: no index finds two characters inside a text (a
    trigram holds three), so "96" read the runs newest first until it had a page, every run of a user whose
    runs rarely hold it; and a part that short matches nearly anything ("9" is in most dates and ids).
    """

    output_field = BooleanField()

    def __init__(self, parameters: str, word: str) -> None:
        super().__init__(F(parameters))
        # Every spelling that equals the word ignoring case (at most four for two letters): the index holds
        # the values as they were written. Only one-character case forms, as SQL's UPPER() maps them.
        forms = [{char, *(form for form in (char.lower(), char.upper()) if len(form) == 1)} for char in word]
        self.spellings = sorted("".join(letters) for letters in itertools.product(*forms))
        self.number = int(word) if re.fullmatch(r"-?[0-9]+", word) and str(int(word)) == word else None

    def as_postgresql(self, compiler, connection, **extra_context):
        parameters, params = compiler.compile(self.source_expressions[0])
        words = PARAMETER_WORDS.format(parameters=parameters)
        # ?| : any of these strings is an element of the array; @> [n]: the number is (96 = 96.0, as jsonb
        # compares numbers). Both are jsonb_ops operators the GIN index answers.
        sql = f"({words} ?| %s::text[]"
        values = [*params, *params, self.spellings]
        if self.number is not None:
            sql += f" OR {words} @> %s::jsonb"
            values += [*params, *params, f"[{self.number}]"]
        return sql + ")", tuple(values)

    def as_sqlite(self, compiler, connection, **extra_context):
        parameters, params = compiler.compile(self.source_expressions[0])
        # First a LIKE on the JSON text, cheap, which every match passes: the word as Django's json.dumps
        # writes it (ensure_ascii: é as \u00e9, a quote as \") or as it is (SQLite's own json()). LIKE
        # ignores ASCII case, so the spellings reduce to a few texts.
        forms = {form for spelling in self.spellings for form in (spelling, json.dumps(spelling)[1:-1])}
        texts = sorted({"".join(c.lower() if c.isascii() else c for c in form): form for form in forms}.values())
        likes = " OR ".join([f"{parameters} LIKE %s ESCAPE '\\'"] * len(texts))
        # Then the words themselves: scalar atoms (a string without its quotes) and the keys of objects
        # (an array element's key is its index, an integer).
        marks = ", ".join(["%s"] * len(self.spellings))
        sql = (
            f"({likes}) AND EXISTS (SELECT 1 FROM json_tree({parameters}) AS item WHERE "
            f"(item.type = 'text' AND item.atom IN ({marks})) "
            f"OR (typeof(item.key) = 'text' AND item.key IN ({marks}))"
        )
        values = [*(value for text in texts for value in (*params, f"%{_like_escaped(text)}%"))]
        values += [*params, *self.spellings, *self.spellings]
        if self.number is not None:
            sql += " OR (item.type IN ('integer', 'real') AND item.atom = %s)"
            values.append(self.number)
        return sql + ")", tuple(values)

    def as_sql(self, compiler, connection, function=None, template=None, arg_joiner=None, **extra_context):
        raise NotSupportedError(f"Searching parameters for a short word is not written for {connection.vendor}.")


# Beyond this many distinct script names the name filter is a plain `icontains` on every run.
NAMES_FIRST_MAX = 2000


def script_names_containing(text: str, *, user_id: int | None) -> list[str] | None:
    """The distinct script names of runs (of that user, or of everyone) that contain `text`, ignoring case;
    None when this cannot answer exactly what `script_name__icontains` answers.

    The history's "script name contains" filter, names first: `icontains` cannot use a B-tree index, so on
    a million runs it read every row (and the capped count read up to 10,000 matching ones). The distinct
    names are few; they are read from an index by a "loose index scan" (one MIN() probe per name, a
    recursive CTE that PostgreSQL and SQLite both run), matched here, and the runs are then filtered by
    `script_name IN (...)`, which the (script_name, created_at) and (user, script_name, created_at)
    indexes serve. Matching in Python is exact because script names are ASCII (SCRIPT_NAME_PATTERN), as
    the ASCII-only text it is used for: SQL's UPPER(...) LIKE and SQLite's LIKE fold ASCII as str.upper().
    """
    if not text.isascii():
        return None
    table = connection.ops.quote_name(Run._meta.db_table)
    of_user = "user_id = %s AND " if user_id is not None else ""
    head = [user_id] if user_id is not None else []
    sql = f"""
        WITH RECURSIVE names(name, n) AS (
            SELECT (SELECT MIN(script_name) FROM {table} WHERE {of_user}script_name IS NOT NULL), 1
            UNION ALL
            SELECT (SELECT MIN(script_name) FROM {table} WHERE {of_user}script_name > names.name), n + 1
            FROM names WHERE names.name IS NOT NULL AND n <= %s
        )
        SELECT name FROM names WHERE name IS NOT NULL
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, [*head, *head, NAMES_FIRST_MAX])
        names = [row[0] for row in cursor.fetchall()]
    if len(names) > NAMES_FIRST_MAX or not all(name.isascii() for name in names):
        return None
    needle = text.upper()
    return [name for name in names if needle in name.upper()]


def iter_runs(runs: QuerySet[Run], *, chunk: int = 1000) -> Iterator[dict]:
    """Newest first, keyset on (created_at, id): each chunk is one indexed query, whatever the depth."""
    rows = runs.order_by("-created_at", "-id").values(
        "id",
        "created_at",
        "started_at",
        "finished_at",
        "enqueued_at",
        "user__username",
        "script_owner",
        "script_name",
        "script_version__number",
        "kind",
        "mode",
        "service",
        "env_name",
        "env_lock__sha256",
        "status",
        "error_code",
        "parameters",
        "client_address",
    )
    last = None
    while True:
        page = rows.filter(Q(created_at__lt=last[0]) | Q(created_at=last[0], id__lt=last[1])) if last else rows
        batch = list(page[:chunk])
        for row in batch:
            yield _run_row(row)
        if len(batch) < chunk:
            return
        last = (batch[-1]["created_at"], batch[-1]["id"])


def _run_row(row: Mapping[str, Any]) -> dict[str, Any]:
    created, started, finished = row["created_at"], row["started_at"], row["finished_at"]
    queued_from = row["enqueued_at"] or created
    return {
        "id": str(row["id"]),
        "created_at": _iso(created),
        "started_at": _iso(started),
        "finished_at": _iso(finished),
        "queue_seconds": round((started - queued_from).total_seconds(), 3) if started else None,
        "run_seconds": round((finished - started).total_seconds(), 3) if started and finished else None,
        "user": row["user__username"],
        "script_owner": row["script_owner"],
        "script_name": row["script_name"],
        "script_version": row["script_version__number"],
        "kind": row["kind"],
        "mode": row["mode"],
        "service": row["service"],
        "env_name": row["env_name"],
        "env_lock": row["env_lock__sha256"],
        "status": row["status"],
        "error_code": row["error_code"],
        "parameters": row["parameters"],
        "client_address": row["client_address"],
    }


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.astimezone(dt.UTC).isoformat() if moment else None


def _day(value: str | None) -> dt.date | None:
    try:
        return dt.date.fromisoformat(value) if value else None
    except ValueError:
        return None


def _start_of(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.min, tzinfo=timezone.get_current_timezone())
