"""Server time of the history and compare pages with 1,000,000 runs (PostgreSQL). Target: under 150 ms.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/omlweb_bench_pages .venv/bin/python bench/pages_bench.py [runs]

Uses the database DATABASE_URL names (created if missing; its runs table is filled once with
INSERT ... SELECT generate_series and reused by later runs of the bench). Times each page through
Django's test client in-process (URL resolution, views, queries, templates: the server's time,
not the network's), the median of 10 after one warm-up, and prints them side by side with the
number of SQL queries. The history pages include a deep page (the 10,000th) reached by keyset
cursor, which costs what the first costs; OFFSET would read every row before it.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ["OMLWEB_DATA_DIR"] = tempfile.mkdtemp(prefix="omlweb-bench-")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "omlweb.settings")
os.environ["DJANGO_ALLOWED_HOSTS"] = "testserver"
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/omlweb_bench_pages")


from bench_database import ensure_database  # noqa: E402 - the bench folder is on the path

ensure_database(os.environ["DATABASE_URL"])

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from scripts_app.models import Run  # noqa: E402
from scripts_app.services.scripts import script_create  # noqa: E402
from scripts_app.services.shares import recount_storage  # noqa: E402
from scripts_app.views.history import encode_cursor  # noqa: E402

ANALYSTS, SCRIPTS = 50, 20


def fill(count: int) -> None:
    users = get_user_model().objects
    if not users.filter(username="admin").exists():
        admin = users.create_superuser("admin", "", "x")
        for i in range(ANALYSTS):
            users.create_user(f"user{i}", "", "x")
        for i in range(SCRIPTS):
            source = (
                f"import pandas as pd\n\n\ndef s{i}(n: int = 3):\n"
                "    return pd.DataFrame({'k': range(n), 'v': [x * 1.5 for x in range(n)]})\n"
            )
            script_create(owner=admin, name=f"s{i}", source=source)
    have = Run.objects.count()
    if have >= count:
        return
    print(f"filling {count - have} runs (once) ...", flush=True)
    start = time.perf_counter()
    user_ids = list(users.filter(username__startswith="user").order_by("id").values_list("id", flat=True))
    versions = list(
        Run._meta.get_field("script_version")
        .related_model.objects.order_by("script__name")
        .values_list("id", "script__name")
    )
    table = Run._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            insert into {table} (id, script_version_id, script_name, script_owner, user_id, status, mode, kind,
                parameters, result_json, stdout, stderr, error_message, traceback, graphics, env_name, service,
                client_address, created_at, started_at, finished_at, comments, pieces, input_query,
                apply_options, stored_bytes, attempts, worker, retry_number)
            select gen_random_uuid(),
                   (%(versions)s::uuid[])[1 + g %% {len(versions)}],
                   (%(names)s::text[])[1 + g %% {len(versions)}],
                   'admin',
                   (%(users)s::int[])[1 + g %% {len(user_ids)}],
                   (array['SUCCEEDED','SUCCEEDED','SUCCEEDED','SUCCEEDED','FAILED','CANCELLED'])[1 + g %% 6],
                   'SYNC', 'do-eval',
                   jsonb_build_object('n', g %% 97, 'region', (array['EU','US','APAC'])[1 + g %% 3]),
                   jsonb_build_object('columns', jsonb_build_array('k','v'),
                                      'data', jsonb_build_array(jsonb_build_array(0, g %% 11),
                                                                jsonb_build_array(1, g %% 7)))::text,
                   '', '', '', '', false, 'default', 'LOW', '10.0.0.1',
                   now() - (g || ' seconds')::interval * 3,
                   now() - (g || ' seconds')::interval * 3 + interval '1 second',
                   now() - (g || ' seconds')::interval * 3 + interval '2 seconds',
                   '', '[]'::jsonb, '', '{{}}'::jsonb, 100, 1, '', 0
            from generate_series(%(start)s, %(stop)s) as g
            """,
            {
                "versions": [str(v) for v, _ in versions],
                "names": [n for _, n in versions],
                "users": user_ids,
                "start": have + 1,
                "stop": count,
            },
        )
    # Outside a transaction: VACUUM sets the visibility map, so index-only scans stay index-only, as
    # autovacuum would leave a long-lived table.
    connection.ensure_connection()
    previous = connection.connection.autocommit
    connection.connection.autocommit = True
    with connection.connection.cursor() as raw:
        raw.execute(f"vacuum analyze {table}")
    connection.connection.autocommit = previous
    # The runs went in by SQL, past the storage counters: rebuild them (the quota and the runs page read them).
    recount_storage()
    print(f"filled in {time.perf_counter() - start:.0f} s", flush=True)


def timed(client: Client, url: str, query: dict | None = None, repeat: int = 10) -> tuple[float, float, float, int]:
    """Median wall ms, CPU ms of this thread (Python: views, templates), SQL ms, and the query count."""
    response = client.get(url, query or {})  # warm
    assert response.status_code == 200, (url, response.status_code)
    walls, cpus, sqls = [], [], []
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as queries:
            start, cpu = time.perf_counter(), time.thread_time()
            response = client.get(url, query or {})
            walls.append((time.perf_counter() - start) * 1000)
            cpus.append((time.thread_time() - cpu) * 1000)
        sqls.append(sum(float(q["time"]) for q in queries.captured_queries) * 1000)
        assert response.status_code == 200, response.status_code
    return statistics.median(walls), statistics.median(cpus), statistics.median(sqls), len(queries)


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    call_command("migrate", verbosity=0)
    fill(count)
    total = Run.objects.count()
    admin = get_user_model().objects.get(username="admin")
    analyst = get_user_model().objects.get(username="user7")
    # The last run of page 10,000 (50 a page), found once with OFFSET: what a reader's cursor would hold.
    deep = Run.objects.order_by("-created_at", "-id")[min(total, 500_000) - 1]
    deep_cursor = encode_cursor(deep)
    # Two runs both users may see (the analyst's own), of the same script.
    old, new = Run.objects.filter(user=analyst, status="SUCCEEDED", script_name="s7").order_by("-created_at")[:2]
    cases = [
        ("history, first page", "/runs/", {}),
        ("history, page 10,000 (keyset)", "/runs/", {"after": deep_cursor}),
        ("history, back from page 10,000", "/runs/", {"before": deep_cursor}),
        ("history, status=FAILED", "/runs/", {"status": "FAILED"}),
        ("history, user=user3", "/runs/", {"user": "user3"}),
        ("history, script contains 's1'", "/runs/", {"script": "s1"}),
        ("history, parameters contain APAC", "/runs/", {"params": "APAC"}),
        # Rare and absent values: without an index these read every run (the count finds too few to stop).
        ("history, parameters contain 96", "/runs/", {"params": "96"}),
        ("history, parameters contain 'nowhere'", "/runs/", {"params": "nowhere"}),
        # One or two characters, matched as whole values and names: common, and nowhere.
        ("history, parameters contain EU", "/runs/", {"params": "EU"}),
        ("history, parameters contain 'zz'", "/runs/", {"params": "zz"}),
        ("history, script contains 'S7'", "/runs/", {"script": "S7"}),
        ("history, script contains 'zz'", "/runs/", {"script": "zz"}),
        ("history, from the deep run's day", "/runs/", {"since": str(deep.created_at.date())}),
        ("compare two runs", "/runs/compare/", {"a": str(old.pk), "b": str(new.pk)}),
    ]
    load = os.getloadavg()[0]
    print(
        f"\n{total:,} runs in PostgreSQL; median of 10 requests in-process; "
        f"load average {load:.1f} on {os.cpu_count()} cores"
    )
    print("wall: the request's time; cpu: this process's own (views, templates); sql: the queries' time\n")
    print(f"{'page':36} {'admin wall/cpu/sql ms':>24} {'q':>3}   {'analyst wall/cpu/sql ms':>24} {'q':>3}")
    for label, url, query in cases:
        cells = []
        for user in (admin, analyst):
            client = Client()
            client.force_login(user)
            wall, cpu, sql, count = timed(client, url, query)
            cells.append(f"{wall:8.1f} {cpu:7.1f} {sql:7.1f} {count:3d}")
        print(f"{label:36} {cells[0]}   {cells[1]}")
    print(
        "\ntarget: under 150 ms server time; on a loaded machine wall time counts the wait for a core, "
        "cpu + sql does not."
    )


if __name__ == "__main__":
    main()
