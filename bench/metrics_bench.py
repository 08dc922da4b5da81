"""How long a scrape of /metrics takes with 1,000,000 runs in the database.

    .venv/bin/python bench/metrics_bench.py [--runs 1000000] [--database-url postgres://...]

Fills a throw-away database (PostgreSQL by default: a database named omlweb_metrics_bench, dropped and
created anew; or SQLite with --database-url sqlite:///path) with that many runs in one INSERT ... SELECT,
then times GET /metrics through Django's whole request stack (token check, collectors, text format):

- the first scrape (it starts counting: no fold);
- a steady scrape (nothing finished since the last one);
- scrapes that fold 1,000 and 20,000 runs finished since the last one (a busy minute, a long outage);

and, side by side, what a scrape would cost if it counted runs with a GROUP BY over the whole table
(what folding avoids). Prints milliseconds (median of the repeats) and queries per scrape.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

parser = argparse.ArgumentParser()
parser.add_argument("--runs", type=int, default=1_000_000)
parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/omlweb_metrics_bench")
parser.add_argument("--repeat", type=int, default=15)
parser.add_argument("--reuse", action="store_true", help="Time again on the database the last run filled.")
args = parser.parse_args()

os.environ["OMLWEB_DATA_DIR"] = tempfile.mkdtemp(prefix="omlweb-metrics-bench-")
os.environ["DATABASE_URL"] = args.database_url
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "omlweb.settings")
os.environ["DJANGO_ALLOWED_HOSTS"] = "testserver"
os.environ["OMLWEB_METRICS_TOKEN"] = "bench-token"
os.environ["OMLWEB_METRICS_FOLD_LAG_SECONDS"] = "0"


def fresh_postgres(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')


if args.reuse:
    pass
elif args.database_url.startswith("postgres"):
    fresh_postgres(args.database_url)
elif args.database_url.startswith("sqlite:///"):
    Path(args.database_url.removeprefix("sqlite:///")).unlink(missing_ok=True)

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.db.models import Count  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402

from scripts_app.models import MetricCounter, Run  # noqa: E402
from scripts_app.services import jobs, metrics  # noqa: E402, F401 - jobs: imported as in a running service
from scripts_app.services.scripts import script_create  # noqa: E402

# Runs that overwrite the template row's values: (column, SQL expression of the row number i).
STATUSES = ["SUCCEEDED"] * 7 + ["FAILED", "TIMED_OUT", "CANCELLED"]
KINDS = ["do-eval"] * 6 + ["table-apply", "row-apply", "group-apply", "index-apply"]


def expressions(count: int, vendor: str) -> dict[str, str]:
    def pick(values: list[str], modulo_of: str) -> str:
        cases = " ".join(f"WHEN {n} THEN '{v}'" for n, v in enumerate(values))
        return f"CASE ({modulo_of}) % {len(values)} {cases} END"

    if vendor == "postgresql":
        now = "now()"
        uuid = "md5(g.i::text)::uuid"

        def seconds(expr):
            return f"({expr}) * interval '1 second'"

        def ago(a, b):
            return f"{a} - {b}"
    else:
        now = "strftime('%Y-%m-%d %H:%M:%f', 'now')"
        uuid = "lower(hex(randomblob(16)))"

        def seconds(expr):
            return f"'-' || ({expr}) || ' seconds'"

        def ago(a, b):
            return f"strftime('%Y-%m-%d %H:%M:%f', {a}, {b})"

    # Newest first: the 300 newest are active (250 queued, 50 running), the rest finished.
    created = ago(now, seconds("g.i * 3"))
    started = ago(now, seconds("g.i * 3 - (g.i % 7)")) if vendor == "postgresql" else None
    active = "g.i <= 300"
    status = f"CASE WHEN g.i <= 250 THEN 'QUEUED' WHEN {active} THEN 'RUNNING' ELSE {pick(STATUSES, 'g.i')} END"
    exprs = {
        "id": uuid,
        "status": status,
        "kind": pick(KINDS, "g.i"),
        "service": pick(["LOW", "LOW", "MEDIUM", "HIGH"], "g.i"),
        "mode": pick(["SYNC", "ASYNC", "ASYNC"], "g.i"),
        "created_at": created,
        "error_code": "CASE WHEN g.i % 10 = 8 THEN 1031 WHEN g.i % 10 = 7 THEN 1033 ELSE NULL END",
    }
    if vendor == "postgresql":
        exprs["started_at"] = f"CASE WHEN g.i <= 250 THEN NULL ELSE {started} END"
        exprs["finished_at"] = f"CASE WHEN {active} THEN NULL ELSE {started} + ((g.i % 13) * interval '1 second') END"
    else:
        exprs["started_at"] = f"CASE WHEN g.i <= 250 THEN NULL ELSE {ago(now, seconds('g.i * 3 - (g.i % 7)'))} END"
        exprs["finished_at"] = (
            f"CASE WHEN {active} THEN NULL ELSE {ago(now, seconds('g.i * 3 - (g.i % 7) - (g.i % 13)'))} END"
        )
    return exprs


def fill(count: int) -> None:
    admin = get_user_model().objects.create_superuser("admin", "", "x")
    script = script_create(owner=admin, name="s", source="def s():\n    return 1\n")
    template = Run(script_version=script.current_version, script_name="s", script_owner="admin", user=admin)
    exprs = expressions(count, connection.vendor)
    columns, values, params = [], [], []
    for field in Run._meta.concrete_fields:
        columns.append(connection.ops.quote_name(field.column))
        if field.column in exprs:
            values.append(exprs[field.column].replace("%", "%%"))
        else:
            values.append("%s")
            params.append(field.get_db_prep_save(getattr(template, field.attname), connection))
    if connection.vendor == "postgresql":
        source = f"generate_series(1, {count}) AS g(i)"
        prefix = ""
    else:
        prefix = f"WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < {count}) "
        source = "g"
    sql = f"{prefix}INSERT INTO {Run._meta.db_table} ({', '.join(columns)}) SELECT {', '.join(values)} FROM {source}"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        cursor.execute("ANALYZE")


def scrape(client: Client) -> tuple[float, int]:
    with CaptureQueriesContext(connection) as queries:
        start = time.perf_counter()
        response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer bench-token")
        took = (time.perf_counter() - start) * 1000
    assert response.status_code == 200, response.content[:300]
    return took, len(queries)


def rewind(runs: int) -> None:
    """Move the watermark back so that the next scrape folds the `runs` most recently finished runs."""
    finished = Run.objects.filter(finished_at__isnull=False).order_by("-finished_at")
    at = finished.values_list("finished_at", flat=True)[runs]
    MetricCounter.objects.filter(name=metrics.RUNS_WATERMARK).update(at=at)


def main() -> None:
    call_command("migrate", verbosity=0)
    started = time.perf_counter()
    if args.reuse:
        MetricCounter.objects.all().delete()
    else:
        fill(args.runs)
    print(f"{connection.vendor}: {Run.objects.count():,} runs, inserted in {time.perf_counter() - started:.0f} s")
    client = Client()
    client.get("/metrics")  # warm Django's request stack (a 403): the figures are the scrape's own
    rows = []
    first = scrape(client)
    rows.append(("first scrape (starts counting)", first[0], first[1]))
    steady = [scrape(client) for _ in range(args.repeat)]
    rows.append(("steady scrape, nothing new", statistics.median(t for t, _ in steady), steady[-1][1]))
    for runs in (min(1_000, args.runs // 2), min(20_000, args.runs // 2)):
        folds = []
        for _ in range(max(3, args.repeat // 3)):
            rewind(runs)
            folds.append(scrape(client))
        rows.append((f"scrape folding {runs:,} finished runs", statistics.median(t for t, _ in folds), folds[-1][1]))
    # Side by side: counting by GROUP BY over every run at each scrape, as a naive collector would.
    naive = []
    for _ in range(max(3, args.repeat // 3)):
        start = time.perf_counter()
        list(Run.objects.values("kind", "status", "service", "mode").annotate(n=Count("pk")).order_by())
        naive.append((time.perf_counter() - start) * 1000)
    rows.append(("(for comparison) GROUP BY over all runs", statistics.median(naive), 1))
    width = max(len(name) for name, _, _ in rows)
    print(f"{'':{width}}  {'ms':>9}  queries")
    for name, ms, queries in rows:
        print(f"{name:{width}}  {ms:9.1f}  {queries:7d}")
    size = len(client.get("/metrics", HTTP_AUTHORIZATION="Bearer bench-token").content)
    print(f"response: {size:,} bytes")
    # Counting ages: the counters hold what the folds added, whatever the number of runs.
    print(f"counter rows: {MetricCounter.objects.count()}")
    print(
        f"oldest queued job: {timezone.now() - Run.objects.filter(status='QUEUED').earliest('created_at').created_at}"
    )


if __name__ == "__main__":
    main()
