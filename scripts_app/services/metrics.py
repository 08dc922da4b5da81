"""Prometheus metrics: what the service did (counters, histograms) and what it holds now (gauges).

omlweb runs as many processes (gunicorn threads in several web processes, one Celery worker process per
slot, `serve`'s supervisor) on one or more hosts, and the scraper reaches one web process of one host.
So no value lives in a process's memory; everything comes from the database, the one thing they share:

- Gauges (queued and running runs, queue depth and oldest job age, workers alive, environments) are read
  at scrape time with queries on indexed columns over the few active rows, whatever the number of runs.
- Counters and histograms of finished runs (by kind, status and level; durations; queue waits; limit
  hits) and environment builds are kept in MetricCounter rows. Each scrape first *folds* what finished
  since the last fold (a range of the `run_finished_at` index, up to OMLWEB_METRICS_FOLD_LAG_SECONDS ago)
  into those rows, in one transaction guarded by a watermark row, so two scrapes at once never count a
  run twice. Counters never go down when retention deletes old runs, and a histogram is the same
  whichever process is scraped: every process adds to one set of buckets.
- Events that happen inside a process and leave no row (a runner template restarted) are counted in
  that process's memory and added to MetricCounter rows by its heartbeat thread (services/heartbeats.py).

Counting starts when metrics are first scraped (the first fold sets the watermark to now): counters
are counters, a scraper sees them start at zero as after any restart.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, OperationalError, transaction
from django.db.models import Case, Count, F, FloatField, Func, IntegerField, Min, Sum, Value, When
from django.utils import timezone
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from scripts_app.errors import ErrorCode
from scripts_app.models import AuditChainHead, Environment, MetricCounter, Run, WorkerHeartbeat

logger = logging.getLogger(__name__)

RUN_DURATION_BUCKETS = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 10800.0,
)  # fmt: skip
QUEUE_WAIT_BUCKETS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 10800.0)
# How many finished runs one scrape folds at most: after a long pause the backlog is taken in steps,
# and a scrape never holds the database for long.
FOLD_BATCH = 20000

# Why a run stopped, when a runner limit stopped it.
LIMIT_KINDS = {
    ErrorCode.TIMED_OUT: "timeout",
    ErrorCode.CPU_LIMIT: "cpu",
    ErrorCode.MEMORY_LIMIT: "memory",
    ErrorCode.PROCESS_LIMIT: "processes",
    ErrorCode.FILE_TOO_LARGE: "file_size",
    ErrorCode.OUTPUT_TOO_LONG: "output",
    ErrorCode.RESULT_TOO_LARGE: "result_size",
    ErrorCode.IMAGE_TOO_LARGE: "image_size",
}

RUNS_FINISHED = "omlweb_runs_finished_total"
RUN_DURATION = "omlweb_run_duration_seconds"
QUEUE_WAIT = "omlweb_queue_wait_seconds"
LIMIT_HITS = "omlweb_runner_limit_hits_total"
ENV_BUILDS = "omlweb_environment_builds_total"
TEMPLATE_RESTARTS = "omlweb_runner_template_restarts_total"
RUNS_WATERMARK = "_runs_folded_until"
BUILDS_WATERMARK = "_builds_folded_until"


# Counter rows


def label_key(labels: dict[str, str]) -> str:
    return "\x1f".join(f"{key}={labels[key]}" for key in sorted(labels))


def parse_labels(key: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in key.split("\x1f")) if key else {}


def add(name: str, labels: dict[str, str], amount: float) -> None:
    """Add to a counter row, creating it at the first increment (safe against another process doing so)."""
    key = label_key(labels)
    rows = MetricCounter.objects.filter(name=name, labels=key)
    if rows.update(value=F("value") + amount):
        return
    try:
        with transaction.atomic():
            MetricCounter.objects.create(name=name, labels=key, value=amount)
    except IntegrityError:
        rows.update(value=F("value") + amount)


def add_many(deltas: dict[tuple[str, str], float]) -> None:
    """Add to many counter rows in two queries. Only for the folds, which run one at a time (the
    watermark row's lock) and are the only writers of the rows they touch."""
    deltas = {key: amount for key, amount in deltas.items() if amount}
    if not deltas:
        return
    names = {name for name, _ in deltas}
    current = {
        (name, key): value
        for name, key, value in MetricCounter.objects.filter(name__in=names).values_list("name", "labels", "value")
    }
    MetricCounter.objects.bulk_create(
        [
            MetricCounter(name=name, labels=key, value=current.get((name, key), 0.0) + amount)
            for (name, key), amount in deltas.items()
        ],
        update_conflicts=True,
        unique_fields=["name", "labels"],
        update_fields=["value"],
    )


# Folding finished runs and builds into counters


def fold(*, now: datetime | None = None) -> int:
    """Count what finished since the last fold; returns how many runs it counted. Never raises for a
    database that is busy: the next scrape folds what this one could not."""
    now = now or timezone.now()
    until = now - timedelta(seconds=settings.OMLWEB_METRICS_FOLD_LAG_SECONDS)
    try:
        counted = _fold_runs(until)
        _fold_builds(until)
    except OperationalError as error:
        logger.warning("Metrics: could not fold finished runs this time (%s)", error)
        return 0
    return counted


def _advance(name: str, until: datetime) -> datetime | None:
    """Claim the range (watermark, until] for this fold: None when there is nothing to fold, or when
    another fold holds it (its transaction commits first; this one then finds the watermark moved)."""
    mark = MetricCounter.objects.select_for_update().filter(name=name, labels="").first()
    if mark is None:
        # The first fold: count from now on (history is not replayed into counters).
        try:
            with transaction.atomic():
                MetricCounter.objects.create(name=name, labels="", at=until)
        except IntegrityError:
            pass
        return None
    if mark.at is None or mark.at >= until:
        return None
    return mark.at


def _fold_runs(until: datetime) -> int:
    with transaction.atomic():
        since = _advance(RUNS_WATERMARK, until)
        if since is None:
            return 0
        finished = Run.objects.filter(finished_at__gt=since)
        # At most FOLD_BATCH runs a fold: stop before the first instant past the batch (runs sharing
        # it are all counted next time). One indexed probe, OFFSET on the finished_at index.
        boundary = finished.filter(finished_at__lte=until).order_by("finished_at")
        finished_ats = boundary.values_list("finished_at", flat=True)
        past = [moment for moment in finished_ats[FOLD_BATCH : FOLD_BATCH + 1] if moment is not None]
        first = finished_ats[0] if past else None
        if past and first is not None:
            until = max(past[0] - timedelta(microseconds=1), first)
        groups = list(_aggregated(finished.filter(finished_at__lte=until)))
        moved = MetricCounter.objects.filter(name=RUNS_WATERMARK, labels="", at=since).update(at=until)
        if not moved:
            return 0
        add_many(_run_deltas(groups))
    return sum(group["n"] for group in groups)


class Seconds(Func):
    """Seconds from `start` to `end`, as a float computed by the database itself (SQLite's Django
    duration functions run in Python for each row, 20 times slower than the whole fold should be)."""

    output_field = FloatField()

    def __init__(self, end: str, start: str) -> None:
        super().__init__(F(end), F(start))

    def as_sql(self, compiler, connection, **extra):  # type: ignore[override]  # Func's is wider
        end, start = (compiler.compile(expression) for expression in self.get_source_expressions())
        return f"EXTRACT(EPOCH FROM ({end[0]} - {start[0]}))", [*end[1], *start[1]]

    def as_sqlite(self, compiler, connection, **extra):
        end, start = (compiler.compile(expression) for expression in self.get_source_expressions())
        return f"((julianday({end[0]}) - julianday({start[0]})) * 86400.0)", [*end[1], *start[1]]


def _bucket(field: str, buckets: tuple) -> Case:
    """The index of the first bucket a duration fits under (len(buckets) for +Inf; None without one)."""
    return Case(
        When(**{f"{field}__isnull": True}, then=Value(None)),
        *[When(**{f"{field}__lte": upper}, then=Value(i)) for i, upper in enumerate(buckets)],
        default=Value(len(buckets)),
        output_field=IntegerField(),
    )


def _aggregated(runs):
    """Finished runs counted in the database, per labels and histogram bucket: a few hundred rows at
    most, whatever the number of runs, so a fold of 20,000 runs costs one index range scan."""
    return (
        runs.annotate(
            run_seconds=Seconds("finished_at", "started_at"), wait_seconds=Seconds("started_at", "created_at")
        )
        .annotate(
            run_bucket=_bucket("run_seconds", RUN_DURATION_BUCKETS),
            wait_bucket=_bucket("wait_seconds", QUEUE_WAIT_BUCKETS),
        )
        .values("kind", "status", "service", "mode", "error_code", "run_bucket", "wait_bucket")
        .annotate(n=Count("pk"), run_sum=Sum("run_seconds"), wait_sum=Sum("wait_seconds"))
        .order_by()
    )


def _run_deltas(groups: Iterable[dict]) -> dict[tuple[str, str], float]:
    deltas: dict[tuple[str, str], float] = defaultdict(float)
    for group in groups:
        n, service, mode = group["n"], group["service"], group["mode"].lower()
        labels = {"kind": group["kind"], "status": group["status"], "service": service, "mode": mode}
        deltas[RUNS_FINISHED, label_key(labels)] += n
        limit = LIMIT_KINDS.get(group["error_code"])
        if limit:
            deltas[LIMIT_HITS, label_key({"limit": limit, "service": service, "mode": mode})] += n
        if group["run_bucket"] is not None:
            _observe(deltas, RUN_DURATION, RUN_DURATION_BUCKETS, {"service": service, "mode": mode}, group, "run")
            if mode == "async":
                _observe(deltas, QUEUE_WAIT, QUEUE_WAIT_BUCKETS, {"service": service}, group, "wait")
    return deltas


def _observe(deltas, name: str, buckets: tuple, labels: dict, group: dict, which: str) -> None:
    """A group's observations into a histogram kept as per-bucket (not cumulative) counts, a sum, a count."""
    index = group[f"{which}_bucket"]
    upper = floatToGoString(buckets[index]) if index < len(buckets) else "+Inf"
    total = group[f"{which}_sum"]
    deltas[f"{name}_bucket", label_key({**labels, "le": upper})] += group["n"]
    deltas[f"{name}_sum", label_key(labels)] += total or 0.0
    deltas[f"{name}_count", label_key(labels)] += group["n"]


def _fold_builds(until: datetime) -> None:
    with transaction.atomic():
        since = _advance(BUILDS_WATERMARK, until)
        if since is None:
            return
        finished = Environment.objects.filter(build_finished_at__gt=since, build_finished_at__lte=until)
        counts = Counter(finished.values_list("status", flat=True))
        if not MetricCounter.objects.filter(name=BUILDS_WATERMARK, labels="", at=since).update(at=until):
            return
        for status, count in counts.items():
            add(ENV_BUILDS, {"status": status.lower()}, count)


# Process-local events, added by the heartbeat thread


def add_template_restarts(host: str, restarts: dict[str, int]) -> None:
    for reason, count in restarts.items():
        if count:
            add(TEMPLATE_RESTARTS, {"reason": reason, "host": host}, count)


# The audit trail


def audit_event_count() -> int:
    """Events recorded so far: the chain head's last event id, one read, which neither pruning nor the
    table's size changes (on PostgreSQL an id a rolled-back change took is skipped, so it can run ahead)."""
    head = AuditChainHead.objects.values_list("last_id", flat=True).first()
    return int(head or 0)


# Scrape-time gauges


def workers_by_queue(now: datetime) -> dict[str, int]:
    """Worker processes with a fresh heartbeat, per queue they consume."""
    fresh = WorkerHeartbeat.objects.filter(
        kind="worker", beat_at__gte=now - timedelta(seconds=settings.OMLWEB_WORKER_GONE_SECONDS)
    )
    counts: dict[str, int] = Counter()
    for queues in fresh.values_list("queues", flat=True):
        for queue in queues or []:
            counts[queue] += 1
    return counts


def queue_levels(now: datetime) -> list[dict]:
    """Per service level: its queue, jobs queued, oldest queued job's age (s), worker processes alive."""
    from scripts_app.services.jobs import broker

    queued = Run.objects.filter(mode=Run.Mode.ASYNC, status=Run.Status.QUEUED)
    rows: dict[str, Any] = {
        row["service"]: row
        for row in queued.values("service").annotate(depth=Count("pk"), oldest=Min("created_at")).order_by()
    }
    alive = workers_by_queue(now)
    levels = []
    for level in broker.service_levels():
        row = rows.get(level) or {"depth": 0, "oldest": None}
        queue = broker.queue_name(level)
        levels.append(
            {
                "service": level,
                "queue": queue,
                "depth": row["depth"],
                "oldest_age": max((now - row["oldest"]).total_seconds(), 0.0) if row["oldest"] else 0.0,
                "workers": alive.get(queue, 0),
            }
        )
    return levels


class OmlwebCollector:
    """Reads everything at scrape time (see the module's docstring)."""

    def collect(self):
        started = time.perf_counter()
        now = timezone.now()
        fold(now=now)
        yield from self._active_runs()
        levels = queue_levels(now)
        depth = GaugeMetricFamily("omlweb_queue_depth", "Async jobs waiting in a queue.", labels=["queue", "service"])
        oldest = GaugeMetricFamily(
            "omlweb_queue_oldest_job_age_seconds",
            "How long the oldest job waiting in a queue has waited (0 when none waits).",
            labels=["queue", "service"],
        )
        alive = GaugeMetricFamily(
            "omlweb_workers_alive",
            "Worker processes that consume a queue and sent a heartbeat within OMLWEB_WORKER_GONE_SECONDS.",
            labels=["queue", "service"],
        )
        for level in levels:
            depth.add_metric([level["queue"], level["service"]], level["depth"])
            oldest.add_metric([level["queue"], level["service"]], level["oldest_age"])
            alive.add_metric([level["queue"], level["service"]], level["workers"])
        yield from (depth, oldest, alive)
        yield from self._stored_counters()
        environments = GaugeMetricFamily("omlweb_environments", "Environments by build status.", labels=["status"])
        by_status = dict(Environment.objects.values_list("status").annotate(n=Count("pk")).order_by())
        for status in Environment.Status.values:
            environments.add_metric([status.lower()], by_status.get(status, 0))
        yield environments
        yield CounterMetricFamily("omlweb_audit_events", "Audit events recorded.", value=audit_event_count())
        took = time.perf_counter() - started
        yield GaugeMetricFamily("omlweb_metrics_scrape_seconds", "How long gathering these metrics took.", value=took)

    def _active_runs(self):
        active = Run.objects.filter(status__in=(Run.Status.QUEUED, Run.Status.RUNNING))
        counts = active.values_list("status", "kind", "service", "mode").annotate(n=Count("pk")).order_by()
        families = {
            Run.Status.QUEUED: GaugeMetricFamily(
                "omlweb_runs_queued", "Runs waiting to start.", labels=["kind", "service", "mode"]
            ),
            Run.Status.RUNNING: GaugeMetricFamily(
                "omlweb_runs_running", "Runs running.", labels=["kind", "service", "mode"]
            ),
        }
        for status, kind, service, mode, n in counts:
            families[status].add_metric([kind, service, mode.lower()], n)
        yield from families.values()

    def _stored_counters(self):
        rows = MetricCounter.objects.exclude(name__startswith="_").values_list("name", "labels", "value")
        stored: dict[str, list[tuple[dict, float]]] = defaultdict(list)
        for name, key, value in rows:
            stored[name].append((parse_labels(key), value))
        yield _counter(
            stored,
            RUNS_FINISHED,
            "Runs finished, by kind, final status, service level and mode.",
            ["kind", "status", "service", "mode"],
        )
        yield _counter(
            stored,
            LIMIT_HITS,
            "Runs stopped by a runner limit, by limit (timeout, memory, output, ...).",
            ["limit", "service", "mode"],
        )
        yield _counter(stored, ENV_BUILDS, "Environment builds finished, by outcome.", ["status"])
        yield _counter(
            stored,
            TEMPLATE_RESTARTS,
            "Runner templates restarted (died, or their environment changed).",
            ["reason", "host"],
        )
        yield _histogram(
            stored, RUN_DURATION, "Run duration, start to finish.", ["service", "mode"], RUN_DURATION_BUCKETS
        )
        yield _histogram(
            stored,
            QUEUE_WAIT,
            "How long async jobs waited in their queue before they started.",
            ["service"],
            QUEUE_WAIT_BUCKETS,
        )


def _counter(stored, name: str, documentation: str, labels: list[str]) -> CounterMetricFamily:
    family = CounterMetricFamily(name.removesuffix("_total"), documentation, labels=labels)
    for values, value in stored.get(name, []):
        family.add_metric([values.get(label, "") for label in labels], value)
    return family


def _histogram(stored, name: str, documentation: str, labels: list[str], buckets: tuple) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=labels)
    counts: dict[tuple, dict[str, float]] = defaultdict(dict)
    for values, value in stored.get(f"{name}_bucket", []):
        counts[tuple(values.get(label, "") for label in labels)][values["le"]] = value
    sums = {tuple(v.get(label, "") for label in labels): value for v, value in stored.get(f"{name}_sum", [])}
    for key, per_bucket in sorted(counts.items()):
        cumulative, running = [], 0.0
        for upper in [*(floatToGoString(b) for b in buckets), "+Inf"]:
            running += per_bucket.get(upper, 0.0)
            cumulative.append((upper, running))
        family.add_metric(list(key), cumulative, sums.get(key, 0.0))
    return family


def render() -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OmlwebCollector())
    return generate_latest(registry)


# Who may scrape


def allowed(*, authorization: str, address: str) -> bool:
    """A bearer token equal to OMLWEB_METRICS_TOKEN, or an address in OMLWEB_METRICS_ALLOW; else no."""
    token = settings.OMLWEB_METRICS_TOKEN
    offered = authorization.removeprefix("Bearer ").strip() if authorization.startswith("Bearer ") else ""
    if token and offered and hmac.compare_digest(offered.encode(), token.encode()):
        return True
    if settings.OMLWEB_METRICS_ALLOW and address:
        try:
            client = ipaddress.ip_address(address)
        except ValueError:
            return False
        # A dual-stack socket reports an IPv4 client as ::ffff:a.b.c.d.
        client = getattr(client, "ipv4_mapped", None) or client
        for entry in settings.OMLWEB_METRICS_ALLOW:
            try:
                if client in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                logger.warning("OMLWEB_METRICS_ALLOW: %r is not an address or a network; ignored", entry)
    return False
