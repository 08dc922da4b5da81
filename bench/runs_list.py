"""How fast the runs history page answers with 100,000 runs (SQLite, the default database).

    .venv/bin/python bench/runs_list.py [number of runs]

Builds a throw-away database in a temporary data dir, fills it, then times the page as an admin
(every run) and as an analyst (their own), unfiltered and with each filter. Prints milliseconds
and the number of queries per request.
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

import django  # noqa: E402

django.setup()

import datetime as dt  # noqa: E402

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402

from scripts_app.models import Run  # noqa: E402
from scripts_app.services.scripts import script_create  # noqa: E402


def fill(count: int) -> None:
    users = get_user_model().objects
    admin = users.create_superuser("admin", "", "x")
    analysts = [users.create_user(f"user{i}", "", "x") for i in range(50)]
    scripts = [script_create(owner=admin, name=f"s{i}", source=f"def s{i}():\n    return {i}\n") for i in range(20)]
    now = timezone.now()
    statuses = [Run.Status.SUCCEEDED] * 8 + [Run.Status.FAILED, Run.Status.CANCELLED]
    batch = []
    for i in range(count):
        script = scripts[i % len(scripts)]
        batch.append(
            Run(
                script_version=script.current_version,
                script_name=script.name,
                script_owner="admin",
                user=analysts[i % len(analysts)],
                status=statuses[i % len(statuses)],
                created_at=now - dt.timedelta(seconds=i * 30),
                client_address="10.0.0.1",
                parameters={"i": i},
            )
        )
        if len(batch) == 5000:
            Run.objects.bulk_create(batch)
            batch = []
    Run.objects.bulk_create(batch)


def timed(client: Client, query: dict, repeat: int = 10) -> tuple[float, int]:
    client.get("/runs/", query)  # warm
    times = []
    for _ in range(repeat):
        with CaptureQueriesContext(connection) as queries:
            start = time.perf_counter()
            response = client.get("/runs/", query)
            times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, response.status_code
    return statistics.median(times), len(queries)


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    call_command("migrate", verbosity=0)
    start = time.perf_counter()
    fill(count)
    print(f"{count} runs written in {time.perf_counter() - start:.1f} s")
    week_ago = (timezone.now() - dt.timedelta(days=7)).date().isoformat()
    cases = {
        "all runs, page 1": {},
        "all runs, page 1000": {"page": "1000"},
        "one script": {"script": "s3"},
        "one user": {"user": "user7"},
        "failed only": {"status": "FAILED"},
        "since a week ago": {"since": week_ago},
    }
    for role, username in (("admin", "admin"), ("analyst", "user7")):
        client = Client()
        client.force_login(get_user_model().objects.get(username=username))
        for name, query in cases.items():
            if role == "analyst" and name == "page 1000":
                continue
            ms, queries = timed(client, query)
            print(f"{role:8} {name:22} {ms:8.1f} ms  {queries} queries")


if __name__ == "__main__":
    main()
