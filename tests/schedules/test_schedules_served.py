"""Schedules and retries through the real service: `manage.py serve` with its workers, its reaper and real
scheduler processes (started and stopped here), on SQLite and, when DATABASE_URL names PostgreSQL, on a
PostgreSQL database of their own. Everything is read back through the API.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.supervised import ROOT, Service, wait_for

pytestmark = pytest.mark.worker

V2 = "/oml/api/py-scripts/v2"
SLEEPER = "import time\ndef nap(seconds=0.2):\n    time.sleep(seconds)\n    return seconds\n"
FAILING = "def boom():\n    raise ValueError('boom')\n"
# Fast scheduler clocks: a pass at least every 0.2 s, intervals down to 1 s, late after 1 s.
SCHEDULER = {
    "OMLWEB_SCHEDULER_POLL_SECONDS": "0.2",
    "OMLWEB_SCHEDULE_MIN_INTERVAL_SECONDS": "1",
    "OMLWEB_SCHEDULE_MISSED_GRACE_SECONDS": "1",
}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request):
    if request.param == "sqlite":
        yield None
        return
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        pytest.skip("DATABASE_URL does not name PostgreSQL: the PostgreSQL run is made when it does")
    import psycopg

    base, _, _ = url.rpartition("/")
    name = f"omlweb_sched_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield f"{base}/{name}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def service(tmp_path: Path, database_url):
    extra = {"DATABASE_URL": database_url} if database_url else {}
    service = Service.prepare(
        tmp_path,
        OMLWEB_LOW_CONCURRENCY="2",
        OMLWEB_MEDIUM_CONCURRENCY="0",
        OMLWEB_HIGH_CONCURRENCY="0",
        # The admin owns every schedule here: two of their runs may run at once (the overlap test).
        OMLWEB_USER_MAX_RUNNING_JOBS="4",
        **SCHEDULER,
        **extra,
    )
    schedulers: list[subprocess.Popen] = []
    service.schedulers = schedulers
    yield service
    for process in schedulers:
        if process.poll() is None:
            process.kill()
            process.wait()
    service.stop()


def start(service: Service, *options: str) -> None:
    """serve, signed in as its admin; once its scheduler (unless --no-scheduler) makes its passes."""
    service.start(*options)
    service.sign_in()
    if "--no-scheduler" not in options:
        wait_for(lambda: "Scheduler started" in service.log_text(), timeout=60, what="the scheduler", on=service)


def start_scheduler(service: Service, name: str) -> subprocess.Popen:
    """One more `manage.py run_scheduler` process on the service's database: a second one started by mistake."""
    log = (service.data_dir / f"{name}.log").open("a")
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "run_scheduler"],
        env=service.env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    service.schedulers.append(process)
    wait_for(lambda: "Scheduler started" in Path(log.name).read_text(), timeout=60, what=f"{name} to start")
    return process


def stop_scheduler(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def api(service: Service, method: str, path: str, body: dict | None = None, expect: int = 200) -> dict:
    status, _, answer = service.request(method, f"{V2}{path}", body)
    assert status == expect, answer
    return json.loads(answer)


def add_script(service: Service, name: str, source: str) -> None:
    status, _, body = service.request("POST", f"{V2}/scripts", {"name": name, "script": source})
    assert status == 201, body


def schedule(service: Service, **body) -> dict:
    return api(service, "POST", "/schedules", body, expect=201)["result"]


def schedule_runs(service: Service, schedule_id: str) -> list[dict]:
    return sorted(api(service, "GET", f"/schedules/{schedule_id}/runs?limit=1000")["result"], key=_created)


def _created(row: dict):
    return row["createdAt"]


def when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def finished(rows: list[dict]) -> bool:
    return bool(rows) and all(row["status"] not in ("QUEUED", "RUNNING") for row in rows)


def test_a_schedule_every_two_seconds_runs_at_its_times(service: Service):
    """Each run is started within a second of its time, one per occurrence, every one finished."""
    start(service)
    add_script(service, "nap", SLEEPER)
    row = schedule(service, scriptName="nap", intervalSeconds=2, overlap="allow", parameters={"seconds": 0.1})
    wait_for(lambda: len(schedule_runs(service, row["id"])) >= 5, timeout=60, what="five runs", on=service)
    api(service, "POST", f"/schedules/{row['id']}/pause")
    runs = schedule_runs(service, row["id"])
    wait_for(lambda: finished(schedule_runs(service, row["id"])), timeout=60, what="the runs to end", on=service)
    runs = schedule_runs(service, row["id"])
    due = [when(run["scheduledFor"]) for run in runs]
    assert due[0] == when(row["nextRunAt"])
    assert [(later - earlier).total_seconds() for earlier, later in zip(due, due[1:], strict=False)] == [2.0] * (
        len(due) - 1
    )
    late = [(when(run["createdAt"]) - when(run["scheduledFor"])).total_seconds() for run in runs]
    print(f"\nStarted after their time (s): {', '.join(f'{value:.2f}' for value in late)}")
    assert all(0 <= value < 1.0 for value in late), late
    assert {run["status"] for run in runs} == {"SUCCEEDED"}


def test_three_schedulers_at_once_start_each_occurrence_once(service: Service):
    """serve's scheduler and two more, started by mistake, on five schedules every second for 8 s."""
    start(service)
    add_script(service, "nap", SLEEPER)
    extra = [start_scheduler(service, f"scheduler-{n}") for n in (2, 3)]
    rows = [
        schedule(service, scriptName="nap", name=f"s{n}", intervalSeconds=1, overlap="allow", parameters={"seconds": 0})
        for n in range(5)
    ]
    time.sleep(8)
    for row in rows:
        api(service, "POST", f"/schedules/{row['id']}/pause")
    for process in extra:
        stop_scheduler(process)
    total = 0
    for row in rows:
        due = [when(run["scheduledFor"]) for run in schedule_runs(service, row["id"])]
        total += len(due)
        assert len(due) == len(set(due)), f"an occurrence ran twice: {due}"
        assert len(due) >= 6
        # One run per occurrence, none left out.
        assert sorted(due) == [min(due) + timedelta(seconds=n) for n in range(len(due))]
    logs = "".join((service.data_dir / f"scheduler-{n}.log").read_text() for n in (2, 3))
    print(f"\n{total} runs, each once; runs started by the two extra schedulers: {logs.count('started ')}")


def test_runs_missed_while_the_scheduler_was_stopped_follow_each_policy(service: Service):
    """Every 8 s. The scheduler is stopped after a first run and started again (a new process) about 18 s
    later: by its first pass at least one occurrence was missed. When the latest one is late too (past the
    1 s grace: 7 times in 8), `skip` starts nothing for the gap and `run_once` one run, for the latest
    missed time; when the first pass happens to fall within the grace of an occurrence, both run that one
    on time and the earlier ones are skipped."""
    start(service, "--no-scheduler")
    add_script(service, "nap", SLEEPER)
    scheduler = start_scheduler(service, "scheduler")
    rows = {
        policy: schedule(service, scriptName="nap", name=policy, intervalSeconds=8, missedRuns=policy)
        for policy in ("skip", "run_once")
    }
    wait_for(lambda: all(schedule_runs(service, row["id"]) for row in rows.values()), timeout=30, what="first runs")
    stop_scheduler(scheduler)
    stopped = datetime.now(UTC)
    time.sleep(16)
    start_scheduler(service, "scheduler-again")
    # It says it started just before its first pass.
    first_pass = datetime.now(UTC)
    time.sleep(0.5)
    for row in rows.values():
        api(service, "POST", f"/schedules/{row['id']}/pause")
    outcomes = {}
    for policy, row in rows.items():
        first = when(row["nextRunAt"])
        latest = first + timedelta(seconds=8) * int((first_pass - first).total_seconds() // 8)
        lateness = (first_pass - latest).total_seconds()
        in_gap = [when(run["scheduledFor"]) for run in schedule_runs(service, row["id"])]
        in_gap = [moment for moment in in_gap if stopped < moment <= first_pass]
        note = api(service, "GET", f"/schedules/{row['id']}")["result"]["lastNote"]
        outcomes[policy] = (round(lateness, 1), in_gap, note)
        if 0.8 < lateness < 1.4 or lateness > 7.7:
            continue  # too near the grace, or the next occurrence, to tell which side the scheduler saw
        if lateness >= 1.4 and policy == "skip":
            assert in_gap == [], outcomes
            assert "skipped (missed-runs policy: skip)" in note
        else:
            assert in_gap == [latest], outcomes
            assert "missed" in note
            assert ("ran once for" in note) if lateness >= 1.4 else ("is on time" in note)
    print(f"\nafter the restart (lateness of the latest occurrence, runs for the gap, note): {outcomes}")


def test_each_overlap_policy_on_runs_longer_than_the_interval(service: Service):
    """Runs of 3 s every 1 s: skip never overlaps and leaves occurrences out; queue runs them one after
    the other, each as soon as the previous ends; allow overlaps them."""
    start(service)
    add_script(service, "nap", SLEEPER)
    rows = {
        policy: schedule(
            service, scriptName="nap", name=policy, intervalSeconds=1, overlap=policy, parameters={"seconds": 3}
        )
        for policy in ("skip", "queue")
    }
    wait_for(
        lambda: all(len(schedule_runs(service, row["id"])) >= 3 for row in rows.values()),
        timeout=60,
        what="three runs of each",
        on=service,
    )
    for row in rows.values():
        api(service, "POST", f"/schedules/{row['id']}/pause")
    wait_for(
        lambda: all(finished(schedule_runs(service, row["id"])) for row in rows.values()),
        timeout=60,
        what="the runs to end",
    )
    for policy, row in rows.items():
        runs = schedule_runs(service, row["id"])
        for earlier, later in zip(runs, runs[1:], strict=False):
            assert when(later["createdAt"]) >= when(earlier["finishedAt"]), f"{policy}: runs overlap"
        note = api(service, "GET", f"/schedules/{row['id']}")["result"]["lastNote"]
        print(f"\n{policy}: {len(runs)} runs; last note: {note}")
    # allow: on a quiet service, two runs of the same schedule at once.
    api(service, "PATCH", f"/schedules/{rows['skip']['id']}", {"overlap": "allow", "enabled": True})
    api(service, "POST", f"/schedules/{rows['skip']['id']}/resume")

    def overlapping() -> bool:
        runs = schedule_runs(service, rows["skip"]["id"])
        return sum(run["status"] == "RUNNING" for run in runs) >= 2

    wait_for(overlapping, timeout=30, what="two runs of one schedule at once", on=service)
    api(service, "POST", f"/schedules/{rows['skip']['id']}/pause")


def test_a_run_whose_worker_is_killed_is_retried_as_a_new_attempt(service: Service):
    """kill -9 of the worker mid-run: that attempt ends with code 1060, the retry (attempt 2) succeeds;
    the run page lists both."""
    start(service)
    add_script(service, "nap", SLEEPER)
    api(service, "PUT", "/scripts/nap/retries", {"maxRetries": 2, "retryBackoffSeconds": 1})
    status, headers, body = service.request(
        "POST", f"{V2}/do-eval/nap", {"asyncFlag": True, "parameters": json.dumps({"seconds": 4})}
    )
    assert status == 201, body
    job_id = headers["Location"].rsplit("/", 1)[1]

    def running_on() -> str | None:
        attempts = api(service, "GET", f"/jobs/{job_id}/attempts")["result"]
        return attempts[0]["worker"] if attempts[0]["status"] == "RUNNING" else None

    node = wait_for(running_on, timeout=60, what="the job to run", on=service)
    name = next(child for child, state in service.children().items() if state["node"] == node)
    service.kill9(name)
    wait_for(
        lambda: (
            finished(api(service, "GET", f"/jobs/{job_id}/attempts")["result"])
            and len(api(service, "GET", f"/jobs/{job_id}/attempts")["result"]) == 2
        ),
        timeout=90,
        what="the retry to finish",
        on=service,
    )
    first, second = api(service, "GET", f"/jobs/{job_id}/attempts")["result"]
    assert (first["attempt"], first["status"], first["errorCode"]) == (1, "FAILED", 1060)
    assert (second["attempt"], second["status"], second["retryOf"]) == (2, "SUCCEEDED", job_id)
    assert when(second["startedAt"]) >= when(first["finishedAt"]) + timedelta(seconds=1)
    # The run page lists both attempts.
    page = page_text(service, f"/runs/{job_id}/")
    assert "Attempt 1 of 2" in page
    assert second["jobId"] in page


def page_text(service: Service, path: str) -> str:
    """A page of the web UI, signed in as the admin through the login form."""
    import http.cookiejar
    import re
    import urllib.parse
    import urllib.request

    from tests.supervised import ADMIN_PASSWORD

    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    login = opener.open(f"{service.base}/accounts/login/").read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login).group(1)
    form = urllib.parse.urlencode(
        {"username": "admin", "password": ADMIN_PASSWORD, "csrfmiddlewaretoken": token}
    ).encode()
    opener.open(urllib.request.Request(f"{service.base}/accounts/login/", data=form, headers={"Referer": service.base}))
    return opener.open(f"{service.base}{path}").read().decode()


@pytest.mark.parametrize("asked", [True, False])
def test_a_user_code_error_is_retried_only_when_asked(service: Service, asked: bool):
    """With retryUserErrors, an exception is tried 3 times, 1 s then 2 s apart; without, once."""
    start(service)
    add_script(service, "boom", FAILING)
    api(
        service,
        "PUT",
        "/scripts/boom/retries",
        {"maxRetries": 2, "retryBackoffSeconds": 1, "retryBackoffFactor": 2, "retryUserErrors": asked},
    )
    status, headers, body = service.request("POST", f"{V2}/do-eval/boom", {"asyncFlag": True})
    assert status == 201, body
    job_id = headers["Location"].rsplit("/", 1)[1]
    expected = 3 if asked else 1
    wait_for(
        lambda: len(rows := api(service, "GET", f"/jobs/{job_id}/attempts")["result"]) == expected and finished(rows),
        timeout=60,
        what=f"{expected} attempts to end",
        on=service,
    )
    time.sleep(3)  # no further attempt comes
    attempts = api(service, "GET", f"/jobs/{job_id}/attempts")["result"]
    assert [(row["attempt"], row["status"], row["errorCode"]) for row in attempts] == [
        (n, "FAILED", 1030) for n in range(1, expected + 1)
    ]
    gaps = [
        (when(later["startedAt"]) - when(earlier["finishedAt"])).total_seconds()
        for earlier, later in zip(attempts, attempts[1:], strict=False)
    ]
    print(f"\nretryUserErrors={asked}: {len(attempts)} attempts, waits between them (s): {gaps}")
    assert all(gap >= backoff for gap, backoff in zip(gaps, (1, 2), strict=False)), gaps
