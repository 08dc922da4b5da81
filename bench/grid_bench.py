"""The run page with a 5,000 x 31 DATA table, in a real browser (Debian's chromium through Playwright).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/omlweb_bench_grid .venv/bin/python bench/grid_bench.py

Targets (issue #13): the first screen in under 300 ms; sorting a column in under 200 ms.

Prints, side by side, the median of 10:
- server: GET /runs/<id>/ and the sort's htmx request (?sort=<column>, target #result-table) timed
  in-process (views, result decoding, sorting 5,000 rows, templates);
- browser: from navigation start to the first contentful paint and to DOMContentLoaded (the grid's
  first page is in the HTML), and from the click on a column's name to the sorted page swapped in.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ["OMLWEB_DATA_DIR"] = tempfile.mkdtemp(prefix="omlweb-bench-")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "omlweb.settings")
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/omlweb_bench_grid")
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
os.environ["DJANGO_ALLOWED_HOSTS"] = "127.0.0.1,localhost,testserver"


from bench_database import ensure_database  # noqa: E402 - the bench folder is on the path

ensure_database(os.environ["DATABASE_URL"])

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.contrib.staticfiles.handlers import StaticFilesHandler  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.testcases import LiveServerThread  # noqa: E402
from django.utils import timezone  # noqa: E402

from scripts_app.models import Run, Script  # noqa: E402
from scripts_app.services.scripts import script_create  # noqa: E402

ROWS, COLUMNS = 5000, 31


def table() -> list[dict]:
    """Records as a DataFrame comes back: an id, 20 floats, 5 ints, 5 strings."""
    records = []
    for i in range(ROWS):
        row: dict = {"id": i}
        row.update({f"x{j}": (i * 7919 + j * 104729) % 100003 / 7.0 for j in range(20)})
        row.update({f"n{j}": (i * 31 + j) % 997 for j in range(5)})
        row.update({f"s{j}": f"item-{(i * 13 + j) % 1009}" for j in range(5)})
        records.append(row)
    assert len(records[0]) == COLUMNS
    return records


def the_run(user) -> Run:
    script = Script.objects.filter(owner=user, name="wide").first() or script_create(
        owner=user, name="wide", source="def wide():\n    return None\n"
    )
    run = Run.objects.filter(user=user, script_name="wide").first()
    if run is None:
        now = timezone.now()
        run = Run.objects.create(
            script_version=script.current_version,
            script_name="wide",
            script_owner=user.username,
            user=user,
            status=Run.Status.SUCCEEDED,
            created_at=now,
            started_at=now,
            finished_at=now,
            client_address="127.0.0.1",
            parameters={},
            result=table(),
        )
    return run


def median_ms(call, repeat: int = 10) -> float:
    call()  # warm
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


FIRST_SCREEN_JS = """
() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const paint = performance.getEntriesByName("first-contentful-paint")[0]
    || performance.getEntriesByType("paint")[0];
  return [paint ? paint.startTime : null, nav.domContentLoadedEventEnd, nav.responseStart];
}
"""

SORT_JS = """
(column) => new Promise((resolve) => {
  const start = performance.now();
  document.body.addEventListener("htmx:afterSettle", function done(event) {
    if (!event.detail.target || event.detail.target.id !== "result-table") { return; }
    document.body.removeEventListener("htmx:afterSettle", done);
    requestAnimationFrame(() => resolve(performance.now() - start));
  });
  const link = Array.from(document.querySelectorAll("#result-table thead th a"))
    .find((a) => a.textContent.trim().startsWith(column));
  link.click();
})
"""


def main() -> None:
    from playwright.sync_api import sync_playwright

    call_command("migrate", verbosity=0)
    users = get_user_model().objects
    user = users.filter(username="bench").first() or users.create_user("bench", "", "x")
    run = the_run(user)
    client = Client()
    client.force_login(user)
    url = f"/runs/{run.pk}/"
    htmx = {"HX-Request": "true", "HX-Target": "result-table"}

    def get(query=None, headers=None):
        response = client.get(url, query or {}, headers=headers or {})
        assert response.status_code == 200, response.status_code

    from scripts_app import results

    grid = results.as_table(run.result)
    assert grid is not None

    def former_numeric_columns(table: results.Table) -> list[bool]:
        # As it was: a test per cell.
        def number_or_null(value) -> bool:
            return value is None or (isinstance(value, int | float) and not isinstance(value, bool))

        return [
            any(row[i] is not None for row in table.rows) and all(number_or_null(row[i]) for row in table.rows)
            for i in range(len(table.columns))
        ]

    assert former_numeric_columns(grid) == results.numeric_columns(grid)
    numeric_former = median_ms(lambda: former_numeric_columns(grid))
    numeric_now = median_ms(lambda: results.numeric_columns(grid))
    decode = median_ms(lambda: Run.objects.get(pk=run.pk))
    to_table = median_ms(lambda: results.as_table(run.result))
    server_page = median_ms(get)
    server_sort = median_ms(lambda: get({"sort": "x3"}, htmx))
    server_sort_desc = median_ms(lambda: get({"sort": "s2", "desc": "1"}, htmx))

    server = LiveServerThread("127.0.0.1", StaticFilesHandler, port=0)
    server.daemon = True
    server.start()
    server.is_ready.wait()
    base = f"http://127.0.0.1:{server.port}"
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    paints, loads, sorts = [], [], []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": cookie, "url": base}])
            page = context.new_page()
            page.goto(base + url)  # warm
            for _ in range(10):
                page.goto(base + url)
                page.wait_for_load_state("load")
                paint, loaded, _ = page.evaluate(FIRST_SCREEN_JS)
                paints.append(paint if paint is not None else float("nan"))
                loads.append(loaded)
            page.wait_for_function("() => window.htmx !== undefined")
            for i in range(10):
                sorts.append(page.evaluate(SORT_JS, "x3" if i % 2 else "s2"))
            browser.close()
    finally:
        server.terminate()

    print(f"\nRun page with a {ROWS:,} x {COLUMNS} table; targets: first screen < 300 ms, sort < 200 ms\n")
    print(f"{'':52} {'median ms':>10}")
    print(f"{'server: GET the run page':52} {server_page:10.1f}")
    print(f"{'server: sort a float column (htmx fragment)':52} {server_sort:10.1f}")
    print(f"{'server: sort a text column, descending':52} {server_sort_desc:10.1f}")
    print(f"{'  of which: load the run (its result decoded)':52} {decode:10.1f}")
    print(f"{'  of which: the result as a table':52} {to_table:10.1f}")
    print(f"{'  of which: which columns are numbers, now':52} {numeric_now:10.1f}")
    print(f"{'            the same, as it was (a test per cell)':52} {numeric_former:10.1f}")
    print(f"{'browser: navigation to first contentful paint':52} {statistics.median(paints):10.1f}")
    print(f"{'browser: navigation to DOMContentLoaded':52} {statistics.median(loads):10.1f}")
    print(f"{'browser: click a column name to the sorted rows':52} {statistics.median(sorts):10.1f}")
    print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
