"""The runs history: filters, a capped total, and keyset pagination.

Pages are cut by the last row shown, never by OFFSET: `?after=<cursor>` gives the runs older than the
cursor, `?before=<cursor>` the runs newer than it, both along the index (created_at DESC, id DESC).
A page costs the same on the first or the 20,000th page, and runs added meanwhile do not shift the
pages a reader is walking (they appear on the first page, not as a repeated row further on).
"""

from __future__ import annotations

import datetime as dt
from uuid import UUID

from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.db import OperationalError, connections, transaction
from django.db.models import Q
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from scripts_app import roles
from scripts_app.models import Run
from scripts_app.services import exports
from scripts_app.services import shares as share_services
from scripts_app.views.base import HtmxHttpRequest

RUNS_PER_PAGE = 50
RUN_FILTERS = ("script", "params", "user", "status", "since", "until")
# The total is counted up to here; beyond it the page says "more than". Counting a million rows on
# every page view would cost more than the page itself (bench/pages_bench.py).
COUNT_CAP = 10_000
# With a "parameters contain" search the count reads each matching run's parameters (no index holds
# them whole): counted up to here, so the page stays within its 150 ms on a million runs.
SEARCH_COUNT_CAP = 1_000
# And counting stops after this long (PostgreSQL): a search no index serves (a value of one or two
# characters, which trigrams cannot hold) may read every run before it finds enough to stop. The page
# then says it did not count, rather than taking a second. docs/ui.md, "Numbers".
COUNT_TIMEOUT_MS = 60
# SQLite has no index of the parameters (PostgreSQL has two, migrations 0015 and 0017): there a parameter
# search reads only the newest this many runs the other filters leave, and the page says so. Reading them
# all took a second on a million (bench/pages_sqlite_bench.py); narrowing by script, user, status or date
# moves the window.
SQLITE_SEARCH_WINDOW = 50_000


EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
MICROSECOND = dt.timedelta(microseconds=1)


def encode_cursor(run: Run) -> str:
    """created_at in whole microseconds (exact, as PostgreSQL keeps it) and the id: one row's place."""
    return f"{(run.created_at - EPOCH) // MICROSECOND}_{run.pk.hex}"


def decode_cursor(value: str) -> tuple[dt.datetime, UUID] | None:
    try:
        micros, _, pk = value.partition("_")
        return EPOCH + int(micros) * MICROSECOND, UUID(hex=pk)
    except (ValueError, OverflowError, OSError):
        return None


class KeysetPage:
    """One page of runs, with the cursors of its neighbours (what the template's links need)."""

    def __init__(
        self, rows: list[Run], *, has_next: bool, has_previous: bool, total: int | None, count_cap: int = COUNT_CAP
    ) -> None:
        self.object_list = rows
        self.has_next = has_next and bool(rows)
        self.has_previous = has_previous and bool(rows)
        self.next_cursor = encode_cursor(rows[-1]) if rows else ""
        self.previous_cursor = encode_cursor(rows[0]) if rows else ""
        self.total = total
        # None: not counted (the count took longer than COUNT_TIMEOUT_MS).
        self.total_capped = total is not None and total > count_cap


def keyset_page(
    runs,
    *,
    after: str,
    before: str,
    per_page: int = RUNS_PER_PAGE,
    count_cap: int | None = None,
    count_timeout: bool = False,
) -> KeysetPage:
    """The page of `runs` (any filtered queryset) after or before a cursor, newest first; with
    count_timeout the total is None when counting takes longer than COUNT_TIMEOUT_MS."""
    count_cap = COUNT_CAP if count_cap is None else count_cap

    def total() -> int | None:
        counted = runs.order_by()[: count_cap + 1]
        return bounded_count(counted) if count_timeout else counted.count()

    cursor = decode_cursor(before) if before else decode_cursor(after) if after else None
    if cursor and before:
        moment, pk = cursor
        # A range on created_at (the index's leading column) minus the tie's older rows: PostgreSQL
        # starts the index scan at the cursor. Written as an OR it scanned from the top.
        newer = runs.filter(created_at__gte=moment).exclude(Q(created_at=moment, pk__lte=pk))
        rows = list(newer.order_by("created_at", "id")[: per_page + 1])
        has_previous = len(rows) > per_page
        rows = rows[:per_page][::-1]
        return KeysetPage(rows, has_next=True, has_previous=has_previous, total=total(), count_cap=count_cap)
    if cursor:
        moment, pk = cursor
        older = runs.filter(created_at__lte=moment).exclude(Q(created_at=moment, pk__gte=pk))
    else:
        older = runs
    rows = list(older.order_by("-created_at", "-id")[: per_page + 1])
    has_next = len(rows) > per_page
    # A search's first page that holds every match is its count: a rare value's count would read again
    # every run the page just read (on SQLite, or a search no index serves).
    lone_page = count_timeout and cursor is None and not has_next
    return KeysetPage(
        rows[:per_page],
        has_next=has_next,
        has_previous=cursor is not None,
        total=min(len(rows), count_cap + 1) if lone_page else total(),  # what the capped count says
        count_cap=count_cap,
    )


def bounded_count(runs) -> int | None:
    """runs.count(), or None when it takes longer than COUNT_TIMEOUT_MS (PostgreSQL; elsewhere it counts)."""
    connection = connections[runs.db]
    if connection.vendor != "postgresql":
        return runs.count()
    try:
        # A savepoint (or a transaction): a cancelled count rolls back with it, the setting too.
        with transaction.atomic(using=runs.db), connection.cursor() as cursor:
            cursor.execute(f"SET LOCAL statement_timeout = {int(COUNT_TIMEOUT_MS)}")
            total = runs.count()
            # Back to the connection's own (its settings or the server's) for the rest of a transaction.
            cursor.execute("SET LOCAL statement_timeout TO DEFAULT")
            return total
    except OperationalError as error:
        if getattr(error.__cause__, "sqlstate", None) == "57014":  # query_canceled
            return None
        raise


def sqlite_search_edge(*, user, filters: dict) -> dt.datetime | None:
    """When the other filters leave more than SQLITE_SEARCH_WINDOW runs, the moment of the oldest one a
    parameter search reads on SQLite; None when it reads them all (or on PostgreSQL, whose indexes find them).

    Read as created_at alone, which the indexes on (created_at), (user, created_at), (status, created_at)...
    hold, so finding it walks an index; the window takes that moment's ties whole."""
    if not filters["params"] or connections[Run.objects.db].vendor != "sqlite":
        return None
    others = exports.runs_for(user=user, filters={**filters, "params": ""})
    moments = others.order_by("-created_at").values_list("created_at", flat=True)
    edge = list(moments[SQLITE_SEARCH_WINDOW - 1 : SQLITE_SEARCH_WINDOW])
    return edge[0] if edge else None


@require_GET
@login_required
def run_list(request: HtmxHttpRequest) -> HttpResponse:
    user = request.user
    sees_all = roles.sees_everything(user)
    filters = {key: request.GET.get(key, "").strip() for key in RUN_FILTERS}
    # The same filters as the history's exports (CSV, JSON Lines) apply.
    runs = (
        exports.runs_for(user=user, filters=filters)
        .select_related("user", "script_version")
        .only(
            "id",
            "script_name",
            "script_owner",
            "status",
            "mode",
            "kind",
            "created_at",
            "started_at",
            "finished_at",
            "client_address",
            "parameters",
            "user__username",
            "script_version__number",
            "script_version__script_id",
        )
    )
    search_edge = sqlite_search_edge(user=user, filters=filters)
    if search_edge:
        # So the page and its count read at most the window.
        runs = runs.filter(created_at__gte=search_edge)
    page = keyset_page(
        runs,
        after=request.GET.get("after", ""),
        before=request.GET.get("before", ""),
        count_cap=min(COUNT_CAP, SEARCH_COUNT_CAP) if filters["params"] else COUNT_CAP,
        # The one filter no index fully serves (see SEARCH_COUNT_CAP and COUNT_TIMEOUT_MS).
        count_timeout=bool(filters["params"]),
    )
    template = "runs/list.html"
    if request.htmx and not request.htmx.boosted:
        template += "#results"
    return render(
        request,
        template,
        {
            "page": page,
            # Queued or running runs on the page: the list refreshes itself until they end.
            "has_active": any(not run.is_finished for run in page.object_list),
            "filtered": any(filters.values()),
            # A value of one or two characters is matched whole, not as a part: the page says so.
            "params_whole_word": bool(filters["params"]) and exports.is_short_word(filters["params"]),
            "search_window": f"{SQLITE_SEARCH_WINDOW:,}" if search_edge else "",
            "search_edge": search_edge,
            "filters": filters,
            "sees_all": sees_all,
            "statuses": Run.Status.choices,
            "usernames": get_user_model().objects.order_by("username").values_list("username", flat=True)
            if sees_all and not request.htmx
            else [],
            # The caller's own storage against their quota; not for the htmx refreshes of the list.
            "storage": None if request.htmx else share_services.storage_summary(user=request.user),
        },
    )
