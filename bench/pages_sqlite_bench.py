"""The history's searches with 1,000,000 runs on SQLite (what a small deployment without PostgreSQL gets).

    DATABASE_URL=sqlite:////tmp/omlweb-history-bench.sqlite3 .venv/bin/python bench/pages_sqlite_bench.py [runs]

Fills the file once (one INSERT ... WITH RECURSIVE, the same shape of data as bench/pages_bench.py: 50
analysts, 20 scripts, parameters {"n", "region"}), then times the history as bench/pages_bench.py does
(in-process, median of 5, wall / CPU / SQL ms), for the pages and searches PostgreSQL has indexes for.
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
os.environ.setdefault("DATABASE_URL", "sqlite:////tmp/omlweb-history-bench.sqlite3")

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from scripts_app.models import Run, ScriptVersion  # noqa: E402
from scripts_app.services.scripts import script_create  # noqa: E402
from scripts_app.services.shares import recount_storage  # noqa: E402

ANALYSTS, SCRIPTS = 50, 20


def timed(client: Client, url: str, query: dict, repeat: int = 5) -> tuple[float, float, float, int]:
    """Median wall ms, CPU ms of this thread, SQL ms, and the query count (as bench/pages_bench.py)."""
    response = client.get(url, query)  # warm
    assert response.status_code == 200, (url, response.status_code)
    walls, cpus, sqls = [], [], []
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as queries:
            start, cpu = time.perf_counter(), time.thread_time()
            response = client.get(url, query)
            walls.append((time.perf_counter() - start) * 1000)
            cpus.append((time.thread_time() - cpu) * 1000)
        sqls.append(sum(float(q["time"]) for q in queries.captured_queries) * 1000)
    return statistics.median(walls), statistics.median(cpus), statistics.median(sqls), len(queries)


def fill(count: int) -> None:
    users = get_user_model().objects
    if not users.filter(username="admin").exists():
        admin = users.create_superuser("admin", "", "x")
        for i in range(ANALYSTS):
            users.create_user(f"user{i}", "", "x")
        for i in range(SCRIPTS):
            script_create(owner=admin, name=f"s{i}", source=f"def s{i}(n: int = 3):\n    return n\n")
    have = Run.objects.count()
    if have >= count:
        return
    print(f"filling {count - have} runs (once) ...", flush=True)
    start = time.perf_counter()
    user_ids = list(users.filter(username__startswith="user").order_by("id").values_list("id", flat=True))
    versions = list(ScriptVersion.objects.order_by("script__name").values_list("id", "script__name"))
    table = Run._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute("create temp table bench_versions (k integer primary key, id text, name text)")
        cursor.executemany(
            "insert into bench_versions values (%s, %s, %s)",
            [(k, version.hex, name) for k, (version, name) in enumerate(versions)],
        )
        cursor.execute("create temp table bench_users (k integer primary key, id integer)")
        cursor.executemany("insert into bench_users values (%s, %s)", list(enumerate(user_ids)))
        cursor.execute(
            f"""
            insert into {table} (id, script_version_id, script_name, script_owner, user_id, status, mode, kind,
                parameters, result_json, stdout, stderr, error_message, traceback, graphics, env_name, service,
                client_address, created_at, started_at, finished_at, comments, pieces, input_query,
                apply_options, stored_bytes, attempts, worker, retry_number)
            with recursive g(i) as (select %s union all select i + 1 from g where i < %s)
            select lower(hex(randomblob(16))), v.id, v.name, 'admin', u.id,
                   case g.i %% 6 when 4 then 'FAILED' when 5 then 'CANCELLED' else 'SUCCEEDED' end,
                   'SYNC', 'do-eval',
                   json_object('n', g.i %% 97,
                               'region', case g.i %% 3 when 0 then 'EU' when 1 then 'US' else 'APAC' end),
                   json_object('columns', json_array('k', 'v'), 'data', json_array(json_array(0, g.i %% 11))),
                   '', '', '', '', 0, 'default', 'LOW', '10.0.0.1',
                   strftime('%%Y-%%m-%%d %%H:%%M:%%f', 'now', '-' || (g.i * 3) || ' seconds'),
                   null, null, '', '[]', '', '{{}}', 100, 1, '', 0
            from g
            join bench_versions v on v.k = g.i %% {len(versions)}
            join bench_users u on u.k = g.i %% {len(user_ids)}
            """,
            [have + 1, count],
        )
        cursor.execute("analyze")
    # The runs went in by SQL, past the storage counters: rebuild them (the quota and the runs page read them).
    recount_storage()
    print(f"filled in {time.perf_counter() - start:.0f} s", flush=True)


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    call_command("migrate", verbosity=0)
    fill(count)
    admin = get_user_model().objects.get(username="admin")
    analyst = get_user_model().objects.get(username="user7")
    cases = [
        ("history, first page", {}),
        ("history, script contains 's1'", {"script": "s1"}),
        ("history, script contains 'zz'", {"script": "zz"}),
        ("history, parameters contain APAC", {"params": "APAC"}),
        ("history, parameters contain 96", {"params": "96"}),
        ("history, parameters contain 'nowhere'", {"params": "nowhere"}),
        ("history, parameters contain EU", {"params": "EU"}),
        ("history, parameters contain 'zz'", {"params": "zz"}),
    ]
    print(
        f"\n{Run.objects.count():,} runs in SQLite; median of 5 requests in-process; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n"
    )
    print(f"{'page':40} {'admin wall/cpu/sql ms':>24} {'q':>3}   {'analyst wall/cpu/sql ms':>24} {'q':>3}")
    for label, query in cases:
        cells = []
        for user in (admin, analyst):
            client = Client()
            client.force_login(user)
            wall, cpu, sql, queries = timed(client, "/runs/", query, repeat=5)
            cells.append(f"{wall:8.1f} {cpu:7.1f} {sql:7.1f} {queries:3d}")
        print(f"{label:40} {cells[0]}   {cells[1]}")


if __name__ == "__main__":
    main()
