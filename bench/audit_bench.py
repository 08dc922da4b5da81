"""The audit trail at 1,000,000 events: CSV export time and memory, page times, the cost of one event.

    .venv/bin/python bench/audit_bench.py [number of events] [export,pages,cost,verify]
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/omlweb_bench .venv/bin/python bench/audit_bench.py
    OMLWEB_BENCH_DATA_DIR=/tmp/omlweb-bench-xyz .venv/bin/python bench/audit_bench.py 1000000 cost

Builds a throw-away database (SQLite in a temporary data dir, or the PostgreSQL database named by
DATABASE_URL, which it empties first unless it already holds the events), appends the events
through audit.record_many (chained and hashed as record() does), then prints:

- the CSV export of every event through the real view (/audit/export.csv, streamed): seconds,
  rows per second, and the process's resident memory before and at its peak during the export
  (sampled every 10,000 rows), to show it stays flat;
- the audit page (/audit/) for filter combinations that use an index: median server time of 15
  requests, and the number of queries;
- the cost of one event: a change (a script's description saved in a transaction) with and without
  audit.record in that transaction, median over 2,000 each; and audit_verify's time.

Targets (issue 14): export < 60 s and flat; page < 150 ms; one event < 1 ms.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# OMLWEB_BENCH_DATA_DIR: reuse a data dir an earlier run filled (the fill is the slow part).
os.environ["OMLWEB_DATA_DIR"] = os.environ.get("OMLWEB_BENCH_DATA_DIR") or tempfile.mkdtemp(prefix="omlweb-bench-")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "omlweb.settings")
os.environ["DJANGO_ALLOWED_HOSTS"] = "testserver"

import django  # noqa: E402

django.setup()

import datetime as dt  # noqa: E402

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402

from scripts_app.models import AuditEvent, Script  # noqa: E402
from scripts_app.services import audit  # noqa: E402
from scripts_app.services.scripts import script_create  # noqa: E402

ACTORS = [f"user{i}" for i in range(200)]
ACTIONS = ("script.create", "script.new_version", "dataset.delete", "run.submit", "token.issue", "auth.sign_in")
TYPES = {"script": "script", "dataset": "dataset", "run": "run", "token": "token", "auth": "user"}


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024**2


def fill(count: int) -> dt.datetime:
    start = timezone.now() - dt.timedelta(seconds=count)

    def rows():
        for i in range(count):
            action = ACTIONS[i % len(ACTIONS)]
            yield {
                "created_at": start + dt.timedelta(seconds=i),
                "actor_id": i % len(ACTORS) + 1,
                "actor_name": ACTORS[i % len(ACTORS)],
                "action": action,
                "object_type": TYPES[action.split(".")[0]],
                "object_id": str(i % 50_000),
                "object_name": f"{ACTORS[i % len(ACTORS)]}/thing{i % 50_000}",
                "client_address": f"10.0.{i % 256}.{i % 250}",
                "user_agent": "omlweb-client/1.0",
                "before": {"version": i % 7} if i % 3 == 0 else None,
                "after": {"version": i % 7 + 1, "parameters": {"n": i}},
            }

    audit.record_many(rows(), batch=10_000)
    return start


def export(client: Client) -> None:
    before = rss_mb()
    peak = before
    start = time.perf_counter()
    cpu = time.process_time()
    response = client.get("/audit/export.csv")
    assert response.status_code == 200
    lines = 0
    size = 0
    for chunk in response.streaming_content:
        lines += chunk.count(b"\n")
        size += len(chunk)
        if lines % 10_000 < 600:
            peak = max(peak, rss_mb())
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu
    print(
        f"CSV export: {lines - 1:,} events, {size / 1024**2:.0f} MB in {seconds:.1f} s wall, {cpu:.1f} s CPU "
        f"({(lines - 1) / seconds:,.0f} events/s); RSS {before:.0f} MB before, peak {peak:.0f} MB"
    )


def page_times(client: Client, count: int, start: dt.datetime) -> None:
    middle_id = count // 2
    day = (start + dt.timedelta(seconds=count // 2)).date().isoformat()
    cases = {
        "no filter, newest": {},
        "no filter, deep page (before=middle)": {"before": str(middle_id)},
        "actor": {"actor": "user17"},
        "action": {"action": "dataset.delete"},
        "action family (script.)": {"action": "script."},
        "object type + id": {"object_type": "run", "object_id": "4321"},
        "one day (since+until)": {"since": day, "until": day},
        "actor + action": {"actor": "user17", "action": "run.submit"},
        "actor, deep page": {"actor": "user17", "before": str(middle_id)},
    }
    print(f"{'audit page, filters':40} {'median':>9} {'p95':>9} {'CPU median':>11} queries")
    for name, query in cases.items():
        client.get("/audit/", query)
        times, cpu = [], []
        for _ in range(15):
            with CaptureQueriesContext(connection) as queries:
                begin, begin_cpu = time.perf_counter(), time.process_time()
                response = client.get("/audit/", query)
                times.append((time.perf_counter() - begin) * 1000)
                cpu.append((time.process_time() - begin_cpu) * 1000)
            assert response.status_code == 200, response.status_code
        times.sort()
        print(
            f"{name:40} {statistics.median(times):7.1f} ms {times[13]:7.1f} ms "
            f"{statistics.median(cpu):8.1f} ms {len(queries)}"
        )


def event_cost(user) -> None:
    script = Script.objects.filter(owner=user, name="bench").first() or script_create(
        owner=user, name="bench", source="def bench():\n    return 1\n"
    )
    rounds = 2000

    def change(with_event: bool) -> tuple[float, float]:
        begin, begin_cpu = time.perf_counter(), time.process_time()
        with transaction.atomic():
            Script.objects.filter(pk=script.pk).update(description=str(begin))
            if with_event:
                audit.record("script.update", obj=script, actor=user, before={"d": 1}, after={"d": 2})
        return (time.perf_counter() - begin) * 1000, (time.process_time() - begin_cpu) * 1000

    for with_event in (False, True):
        change(with_event)
    # Interleaved, so both see the same load.
    plain, audited = [], []
    for _ in range(rounds):
        plain.append(change(False))
        audited.append(change(True))
    for label, index in (("wall", 0), ("CPU", 1)):
        p = statistics.median(sample[index] for sample in plain)
        a = statistics.median(sample[index] for sample in audited)
        print(f"one change ({label}): {p:.3f} ms without its event, {a:.3f} ms with it: +{a - p:.3f} ms (median)")


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    parts = sys.argv[2].split(",") if len(sys.argv) > 2 else ["export", "pages", "cost", "verify"]
    call_command("migrate", verbosity=0)
    if connection.vendor == "postgresql" and AuditEvent.objects.count() < count:
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE scripts_app_auditevent, scripts_app_auditchainhead, scripts_app_auditanchor")
    print(f"database: {connection.vendor}")
    users = get_user_model().objects
    admin = users.filter(username="admin").first() or users.create_superuser("admin", "", "x")
    first = AuditEvent.objects.order_by("id").first()
    if first is not None and AuditEvent.objects.count() >= count:
        start = first.created_at
        print(f"reusing {AuditEvent.objects.count():,} events in {os.environ['OMLWEB_DATA_DIR']}")
    else:
        begin = time.perf_counter()
        start = fill(count)
        print(f"{count:,} events appended (hashed and chained) in {time.perf_counter() - begin:.1f} s")
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("ANALYZE scripts_app_auditevent")
        else:
            # The fill is one transaction: fold its WAL into the database first, as SQLite's
            # autocheckpoint does after the small transactions of a running service.
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    client = Client()
    client.force_login(admin)
    if "export" in parts:
        export(client)
    if "pages" in parts:
        page_times(client, count, start)
    if "cost" in parts:
        event_cost(admin)
    if "verify" in parts:
        begin, begin_cpu = time.perf_counter(), time.process_time()
        result = audit.verify()
        print(
            f"audit_verify: {result.checked:,} events, ok={result.ok}, {time.perf_counter() - begin:.1f} s wall, "
            f"{time.process_time() - begin_cpu:.1f} s CPU"
        )
    print(f"events now: {AuditEvent.objects.count():,}")


if __name__ == "__main__":
    main()
