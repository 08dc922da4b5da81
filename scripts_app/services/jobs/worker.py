"""Jobs in a Celery worker: claim a queued run, run it while heartbeating, record the outcome."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import random
import threading
import time
import uuid
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection, connections, transaction
from django.db.models import Field
from django.db.models.query import get_related_populators
from django.utils import timezone

from scripts_app import runner
from scripts_app.errors import Busy, ErrorCode
from scripts_app.models import Run, RunTakenAway, StorageUsage
from scripts_app.services import execution, live, retries, runs, shares
from scripts_app.services.jobs import submission

logger = logging.getLogger(__name__)

# A job deferred because its user runs their share waits this long (up to twice, with jitter) before
# a worker tries it again.
DEFER_SECONDS = 2.0


def job_execute(*, run_id: str, worker: str) -> Run | None:
    """Claim a queued run, run it (do-eval or apply) while heartbeating, record the outcome.

    Returns None when there was nothing to do (the run is gone, finished, or held by another worker),
    when its user is at their share of running jobs (it goes back to the queue), or when the run was
    taken from this attempt while it ran (deleted, or reaped and requeued).
    """
    try:
        run = job_claim(run_id=run_id, worker=worker)
    except JobDeferred:
        job_defer(run_id=run_id)
        return None
    if run is None:
        return None
    # One thread beside the runner per job: it heartbeats, polls for a cancel and writes live output.
    live_run = live.maybe_live(run)
    if live_run is not None:
        live_run.start(flushed_by_caller=True)
    watch = RunWatch(run=run, live=live_run)
    watch.start()
    try:
        execution.execute_run(run, is_cancelled=watch.is_cancelled, limits=job_limits(run), live=live_run)
    except RunTakenAway:
        logger.warning("Run %s: taken from this attempt while it ran; its outcome is dropped", run.pk)
        return None
    except Busy:
        # Recorded FAILED with the busy code by execution.execute_run: a worker process runs one job at a time,
        # so its runner slots are only ever taken by this job's own pieces.
        pass
    except Exception as error:
        logger.exception("Run %s: the service failed to run it", run.pk)
        job_fail(run=run, message=f"The service failed to run the job: {error}")
    finally:
        watch.stop()
        if live_run is not None:
            live_run.stop()
    # A failed run whose script or schedule has a retry policy is tried again as a new run.
    retries.after_finish(run)
    return run


def job_limits(run: Run) -> runner.Limits:
    """The run's service level's limits; an async run's own timeout bounds both wall clock and CPU."""
    limits = runs.limits_from_settings(wall_seconds=run.timeout_seconds)
    level = settings.OMLWEB_SERVICE_LEVELS[run.service]
    return dataclasses.replace(
        limits,
        cpu_seconds=max(limits.cpu_seconds, int(run.timeout_seconds or 0)),
        memory_bytes=level["memory_mb"] * 1024**2,
    )


class JobDeferred(Exception):
    """The job's user already runs their share of jobs: it must wait in the queue."""


def job_claim(*, run_id: str, worker: str) -> Run | None:
    """Mark a queued run RUNNING for this worker; None when it is not queued any more. Raises
    JobDeferred, claiming nothing, when its user already has their share of jobs running.

    The row is read once, before the claim; the claim is conditional on the attempt read, so the run
    returned is the row as claimed without reading it again. The user's limits are read once too: the
    share here, the storage quota when the outcome is recorded (`Run.share_limits`)."""
    run = _read_queued(run_id)
    if run is None:
        logger.info("Run %s: not queued any more (finished, held by another worker, or deleted); skipped", run_id)
        return None
    limits = shares.limits_for(run.user_id)
    now = timezone.now()
    outcome = _claim_in_one_round_trip(run, worker=worker, now=now, max_running_jobs=limits.max_running_jobs)
    if outcome is None:
        with transaction.atomic():
            _lock_user_for_claim(run.user_id)
            # Counted and claimed in one statement, under the user's lock: two workers cannot both take
            # the last share (running async jobs of the user at the run's level).
            claimed = _claim_under_share(run, worker=worker, now=now, max_running_jobs=limits.max_running_jobs)
            deferred = not claimed and _attempt_queued(run)
    else:
        claimed, deferred = outcome
    if deferred:
        raise JobDeferred(run_id)
    if not claimed:
        logger.info("Run %s: not queued any more (claimed by another worker, or deleted); skipped", run_id)
        return None
    # What `RunQuerySet.claim` wrote.
    run.status, run.started_at, run.heartbeat_at, run.worker = Run.Status.RUNNING, now, now, worker
    run.attempts += 1
    run.share_limits = limits
    return run


def _attempt_queued(run: Run) -> bool:
    """Whether the attempt read is still queued (and not cancelled)."""
    return Run.objects.filter(
        pk=run.pk, status=Run.Status.QUEUED, cancel_requested_at__isnull=True, attempts=run.attempts
    ).exists()


def _read_queued(run_id: str) -> Run | None:
    """The queued run with its script version, as `Run.objects.filter(pk=run_id, status=QUEUED,
    cancel_requested_at__isnull=True).select_related("script_version")` reads it (no ORDER BY: one row by
    its key), through that query compiled once per process (`_queued_read`): compiling it took about a
    millisecond of every job, more than the database takes to answer. The row goes through the
    compiler's own converters and Django's own model and related-object construction."""
    read = _queued_read(connection.alias)
    params = list(read.params)
    params[read.key_at] = _field("id").get_db_prep_value(_uuid(run_id), connection)
    with connection.cursor() as cursor:
        cursor.execute(read.sql, params)
        rows = cursor.fetchmany(1)
    if not rows:
        return None
    [row] = read.compiler.results_iter(results=[rows])
    run = Run.from_db(connection.alias, read.init_list, row[read.start : read.end])
    for populator in read.related:
        populator.populate(row, run)
    return run


def _uuid(value: str) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


@dataclasses.dataclass(frozen=True)
class _CompiledRead:
    sql: str
    params: tuple
    key_at: int
    compiler: Any
    init_list: list[str]
    start: int
    end: int
    related: list


# A key no run has: compiled in its place, then replaced by each job's run id.
_NO_RUN = uuid.UUID(int=0)


@functools.cache
def _queued_read(alias: str) -> _CompiledRead:
    """`_read_queued`'s query compiled once, with what ModelIterable takes from its compiler to build rows."""
    query = (
        Run.objects.using(alias)
        .filter(pk=_NO_RUN, status=Run.Status.QUEUED, cancel_requested_at__isnull=True)
        .select_related("script_version")
        .order_by()[:1]
    ).query
    compiler = query.get_compiler(using=alias)
    sql, params = compiler.as_sql()
    key = _field("id").get_db_prep_value(_NO_RUN, connections[alias])
    [key_at] = [position for position, param in enumerate(params) if param == key]
    klass_info, select = compiler.klass_info, compiler.select
    fields = klass_info["select_fields"]
    start, end = fields[0], fields[-1] + 1
    return _CompiledRead(
        sql=sql,
        params=tuple(params),
        key_at=key_at,
        compiler=compiler,
        init_list=[column[0].target.attname for column in select[start:end]],
        start=start,
        end=end,
        # django-stubs describe Django 6's signature (a fetch mode); 5.2's has none.
        related=get_related_populators(klass_info, select, alias),  # type: ignore[call-arg]
    )


def _claim_under_share(run: Run, *, worker: str, now, max_running_jobs: int) -> int:
    """`RunQuerySet.claim` of this attempt of the run, on condition that its user runs fewer than
    `max_running_jobs` async jobs at its level: 1 when claimed, else 0.

    The statement `Run.objects.filter(pk=..., attempts=...).filter(LessThan(Subquery(count), n)).claim()`
    would send, written once per process (`_claim_sql`): building it through the ORM took 1 to 5 ms of
    every job (resolving the subquery's filters and expressions), five times what the database takes to
    run it. Parameters go through the fields' own conversion, as the ORM's would."""
    with connection.cursor() as cursor:
        cursor.execute(
            _claim_sql(connection.vendor),
            _claim_params(run, worker=worker, now=now, max_running_jobs=max_running_jobs),
        )
        return cursor.rowcount


def _claim_params(run: Run, *, worker: str, now, max_running_jobs: int) -> list:
    started = _field("started_at").get_db_prep_value(now, connection)
    return [
        Run.Status.RUNNING,
        started,
        started,
        worker,
        _field("id").get_db_prep_value(run.pk, connection),
        Run.Status.QUEUED,
        run.attempts,
        Run.Status.QUEUED,
        Run.Status.RUNNING,
        Run.Mode.ASYNC,
        run.user_id,
        run.service,
        Run.Status.RUNNING,
        max_running_jobs,
    ]


def _claim_in_one_round_trip(run: Run, *, worker: str, now, max_running_jobs: int) -> tuple[bool, bool] | None:
    """PostgreSQL: the claim's transaction as one query string, one round trip where Django's atomic block
    takes four (BEGIN, the lock, the claim, COMMIT; and the deferral's check): `(claimed, deferred)`.

    The same statements in the same order: the user's lock (with the asynchronous commit,
    `_lock_user_for_claim`), then the claiming `UPDATE` (`_claim_under_share`), then whether this attempt
    is still queued. In PostgreSQL's READ COMMITTED each statement of the string reads a snapshot taken
    when it starts, so the claim's count, after the lock, sees every claim committed before it, as
    before. The claim holds only when the lock statement locked the user's row (it sets a setting local
    to this transaction that the claim checks). None, nothing done, when the general path must take it:
    not PostgreSQL, inside a transaction already, a cursor that binds on the server (one statement a
    query), or a user without the lock's row yet (shares.lock_user makes it)."""
    if (
        connection.vendor != "postgresql"
        or connection.in_atomic_block
        or not connection.get_autocommit()
        or connection.settings_dict.get("OPTIONS", {}).get("server_side_binding")
    ):
        return None
    key = _field("id").get_db_prep_value(run.pk, connection)
    token = str(run.pk)
    params = [token, run.user_id, *_claim_params(run, worker=worker, now=now, max_running_jobs=max_running_jobs)]
    params += [token, key, Run.Status.QUEUED, run.attempts]
    try:
        with connection.cursor() as cursor:
            cursor.execute(_claim_transaction_sql(), params)
            cursor.nextset()  # BEGIN -> the lock
            locked = cursor.fetchone() is not None
            cursor.nextset()  # -> the claim
            claimed = cursor.rowcount == 1
            cursor.nextset()  # -> this attempt still queued
            [still_queued] = cursor.fetchone()
    except BaseException:
        # A statement failed: the rest of the string was skipped, the transaction is open and aborted.
        with contextlib.suppress(Exception), connection.cursor() as cursor:
            cursor.execute("ROLLBACK")
        raise
    if not locked:
        assert not claimed
        return None
    return claimed, not claimed and still_queued


@functools.cache
def _claim_transaction_sql() -> str:
    quote = connection.ops.quote_name
    usage = StorageUsage._meta
    table = quote(Run._meta.db_table)
    lock = (
        "SELECT set_config('synchronous_commit', 'off', true), set_config('omlweb.claim_lock', %s, true) "
        f"FROM {quote(usage.db_table)} WHERE {quote(usage.pk.attname)} = %s FOR UPDATE"
    )
    claim = _claim_sql("postgresql") + " AND current_setting('omlweb.claim_lock', true) = %s"
    name = {field: quote(str(_field(field).column)) for field in ("id", "status", "cancel_requested_at", "attempts")}
    queued = (
        f"SELECT EXISTS (SELECT 1 FROM {table} WHERE {name['id']} = %s AND {name['status']} = %s "
        f"AND {name['cancel_requested_at']} IS NULL AND {name['attempts']} = %s)"
    )
    return f"BEGIN; {lock}; {claim}; {queued}; COMMIT"


def _field(name: str) -> Field:
    field = Run._meta.get_field(name)
    assert isinstance(field, Field)
    assert field.column
    return field


@functools.cache
def _claim_sql(vendor: str) -> str:
    """The claiming UPDATE, as the ORM writes it. Its count reads the partial index of active runs
    (run_active_of_user) through the same OR of statuses as the index's condition (models.ACTIVE_RUNS),
    which SQLite needs to use it."""
    quote = connection.ops.quote_name
    table = quote(Run._meta.db_table)

    def name(field: str) -> str:
        return quote(str(_field(field).column))

    def column(field: str, alias: str = table) -> str:
        return f"{alias}.{name(field)}"

    return (
        f"UPDATE {table} SET {name('status')} = %s, {name('started_at')} = %s, {name('heartbeat_at')} = %s, "
        f"{name('worker')} = %s, {name('attempts')} = ({column('attempts')} + 1) "
        f"WHERE ({column('cancel_requested_at')} IS NULL AND {column('id')} = %s AND {column('status')} = %s "
        f"AND {column('attempts')} = %s "
        f"AND (SELECT COUNT({column('id', 'U0')}) FROM {table} U0 "
        f"WHERE (({column('status', 'U0')} = %s OR {column('status', 'U0')} = %s) "
        f"AND {column('mode', 'U0')} = %s AND {column('user', 'U0')} = %s AND {column('service', 'U0')} = %s "
        f"AND {column('status', 'U0')} = %s)) < %s)"
    )


def _lock_user_for_claim(user_id: int) -> None:
    """Take the user's lock (shares.lock_user's row) until the transaction ends, serialising their claims.

    PostgreSQL: in the statement that also lets this transaction's commit not wait for its WAL to reach
    the disk (3-4 ms of every job). That is safe for the claim alone: losing it takes a crash of the
    database server itself, and then the run is QUEUED again and runs again (the worker's outcome cannot
    be recorded without that server either); the outcome's commit waits for the disk as always and
    flushes the claim's WAL with its own. A user without the row yet (never locked) gets it from
    shares.lock_user. SQLite: the transaction is IMMEDIATE, so it holds the database's one write lock
    from its start: nothing to add."""
    if connection.vendor != "postgresql":
        return
    usage = StorageUsage._meta
    table, key = connection.ops.quote_name(usage.db_table), connection.ops.quote_name(usage.pk.attname)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT set_config('synchronous_commit', 'off', true) FROM {table} WHERE {key} = %s FOR UPDATE", [user_id]
        )
        locked = cursor.fetchone() is not None
    if not locked:
        shares.lock_user(user_id)


def job_defer(*, run_id: str) -> None:
    """Put a job whose user is at their share back on the queue, to be tried again a little later.

    Its slot goes to the next message meanwhile, so other users' jobs behind it run. `enqueued_at` is
    renewed with each deferral: a job that keeps being deferred is not waiting on a lost message, and
    the reaper must not publish it again (each copy would be deferred and published again in turn).
    """
    run = Run.objects.filter(pk=run_id, status=Run.Status.QUEUED).first()
    if run is None or not Run.objects.filter(pk=run.pk).published(now=timezone.now()):
        return
    logger.info("Run %s: its user already runs their share of jobs; back in the queue", run_id)
    submission.job_enqueue(run=run, countdown=DEFER_SECONDS + random.uniform(0, DEFER_SECONDS))


def job_fail(*, run: Run, message: str, code: int = ErrorCode.INTERNAL) -> None:
    Run.objects.held_by(run).finish(Run.Status.FAILED, error_code=code, error_message=message)


class RunWatch:
    """What a job's watch does beside the runner: heartbeats the run, turns a cancel request into
    `is_cancelled()` and writes the run's live output (`live`, flushed every `live.interval`).

    The work is done by the worker process's one watch thread (`_Watcher`), started with its first job
    and reused by every job after it: starting and stopping a watch starts, wakes and joins no thread (a
    `Thread.start` and its `join` cost 0.3 to 2 ms of every job). It reads the row at most every
    OMLWEB_CANCEL_POLL_SECONDS, whatever the runner polls. The run counts as cancelled when a cancel was
    requested, or the row was deleted or taken away from this attempt. Once `stop()` returns, nothing
    more is done for the run: a poll or flush under way is waited for, and none starts after.
    """

    def __init__(self, *, run: Run, live: live.LiveRun | None = None) -> None:
        self.run = run
        self.live = live
        self._cancelled = threading.Event()
        self._stopped = False
        # Held by the watch thread while it works for this run; `stop()` takes it to end the watch.
        self._busy = threading.Lock()
        self._next_beat = self._next_poll = 0.0
        self._next_flush = time.monotonic() + self.flush_every()

    def start(self) -> None:
        self._next_poll = time.monotonic() + self.poll_every()
        _watcher().watch(self)

    def stop(self) -> None:
        taken = self._busy.acquire(timeout=10)
        self._stopped = True
        if taken:
            self._busy.release()
        _watcher().forget(self)

    def is_cancelled(self) -> bool:
        return self._cancelled.is_set()

    @staticmethod
    def poll_every() -> float:
        return min(settings.OMLWEB_CANCEL_POLL_SECONDS, settings.OMLWEB_HEARTBEAT_SECONDS)

    def flush_every(self) -> float:
        return self.live.interval if self.live is not None else self.poll_every()

    def tick(self) -> None:
        """Called by the watch thread every `min(poll_every, flush_every)` or sooner: do what is due."""
        with self._busy:
            if self._stopped:
                return
            now = time.monotonic()
            if self.live is not None and now >= self._next_flush:
                self._next_flush = now + self.flush_every()
                self.live.flush_quietly()
            if now < self._next_poll:
                return
            self._next_poll = now + self.poll_every()
            try:
                if now >= self._next_beat:
                    self._next_beat = now + settings.OMLWEB_HEARTBEAT_SECONDS
                    if not Run.objects.held_by(self.run).update(heartbeat_at=timezone.now()):
                        self._cancelled.set()
                if Run.objects.held_by(self.run).filter(cancel_requested_at__isnull=False).exists():
                    self._cancelled.set()
            except Exception:
                # A locked or unreachable database must not kill the run; the next poll tries again.
                logger.exception("Run %s: heartbeat failed", self.run.pk)
                close_old_connections()


class _Watcher:
    """The worker process's one watch thread: ticks the watch of the job running now, if any.

    A worker process runs one job at a time (`--pool solo`), but watches are a set so that a caller
    running several at once (tests, an eager task) is served too. Between jobs it wakes every
    OMLWEB_CANCEL_POLL_SECONDS and does nothing. It opens its database connection only for a job that
    runs past its first poll and closes it once idle, as the thread of each job did before: a job
    shorter than a poll touches the database from this thread not at all.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: list[RunWatch] = []
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="run-watch", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def watch(self, run_watch: RunWatch) -> None:
        with self._lock:
            self._watches.append(run_watch)
        if run_watch.flush_every() < RunWatch.poll_every():
            # Its live output is flushed more often than the thread wakes by itself.
            self._wake.set()

    def forget(self, run_watch: RunWatch) -> None:
        with self._lock:
            if run_watch in self._watches:
                self._watches.remove(run_watch)

    def _loop(self) -> None:
        while True:
            with self._lock:
                watches = list(self._watches)
            wait = min([RunWatch.poll_every(), *(w.flush_every() for w in watches)])
            if watches:
                now = time.monotonic()
                due = min(min(w._next_poll, w._next_flush if w.live is not None else w._next_poll) for w in watches)
                wait = max(0.0, min(wait, due - now))
            self._wake.wait(wait)
            self._wake.clear()
            for run_watch in watches:
                try:
                    run_watch.tick()
                except Exception:
                    logger.exception("Run %s: its watch failed", run_watch.run.pk)
            if not watches and connection.connection is not None:
                # Idle: its connection (opened by a job longer than a poll) is not held between jobs.
                try:
                    connection.close()
                except Exception:
                    logger.exception("The run watch could not close its database connection")


_the_watcher: _Watcher | None = None
_the_watcher_lock = threading.Lock()


def _watcher() -> _Watcher:
    """The process's watch thread, started on first use (again after a fork, where it does not exist)."""
    global _the_watcher
    with _the_watcher_lock:
        if _the_watcher is None or not _the_watcher.alive():
            _the_watcher = _Watcher()
        return _the_watcher
