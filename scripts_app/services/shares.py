"""Fair shares: what one user may hold at once, so that no user can delay another's runs or the pages.

- Synchronous runs hold a web thread each while they run. A user may have at most
  `max_sync_runs` of them at once, counted in the database across every web process; one more is
  a 429 at once (not a wait for a thread), so the other threads stay free for other users and pages.
- Async jobs hold a worker slot each. A worker that picks a job whose user already has
  `max_running_jobs` running at that service level hands it back to the queue for a few seconds
  instead of running it, so the user's other jobs wait in the queue, not in other users' slots.
  A user may have at most `max_queued_jobs` jobs queued or running; one more is a 429 at submission.
- The results and figures a user's runs keep, and their datasets, count against `quota_bytes`. What
  a user keeps is one counter (StorageUsage), changed in the transaction of every change of a run's
  stored bytes or a dataset's size, under the user's lock; `recount_storage` rebuilds it from them.

Each limit is a setting, which an admin may override per group (`GroupLimits`, in Django's admin on
the group's page); a user in several groups gets the most generous override.
"""

from __future__ import annotations

import dataclasses

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection, transaction
from django.db.models import QuerySet, Sum
from django.db.models.functions import Coalesce

from scripts_app import roles
from scripts_app.errors import QuotaExceeded, TooManyRuns
from scripts_app.models import ACTIVE_RUNS, Dataset, GroupLimits, Run, StorageUsage

# A sync run over the share is refused at once; its client may try again after about this long.
SYNC_RETRY_AFTER_SECONDS = 5
QUEUE_RETRY_AFTER_SECONDS = 30


@dataclasses.dataclass(frozen=True)
class UserLimits:
    max_sync_runs: int
    max_running_jobs: int
    max_queued_jobs: int
    quota_bytes: int


LIMIT_FIELDS = ("max_sync_runs", "max_running_jobs", "max_queued_jobs", "quota_mb")


def limits_for(user_id: int) -> UserLimits:
    """The user's limits: the settings, or their groups' most generous overrides.

    Read by every job's claim, as one plain statement (`_hot`): building the ORM's aggregate took longer
    than the database takes to answer it."""
    with connection.cursor() as cursor:
        cursor.execute(_hot("limits"), [user_id])
        row = cursor.fetchone()
    return _limits(dict(zip(LIMIT_FIELDS, row, strict=True)))


def limits_of(user) -> UserLimits:
    """`limits_for` a signed-in user object, in the one statement that also reads their group names for
    the role checks of this request (scripts_app.roles)."""
    with connection.cursor() as cursor:
        cursor.execute(_hot("groups_and_limits"), [user.pk])
        rows = cursor.fetchall()
    names = []
    overrides: dict[str, int | None] = dict.fromkeys(LIMIT_FIELDS)
    for name, *values in rows:
        names.append(name)
        for field, value in zip(LIMIT_FIELDS, values, strict=True):
            if value is not None and (overrides[field] is None or value > overrides[field]):
                overrides[field] = value
    roles.remember_groups(user, names)
    return _limits(overrides)


def _limits(overrides: dict) -> UserLimits:
    def pick(name: str, default: int) -> int:
        value = overrides[name]
        return default if value is None else value

    return UserLimits(
        max_sync_runs=pick("max_sync_runs", settings.OMLWEB_USER_MAX_CONCURRENT_RUNS),
        max_running_jobs=pick("max_running_jobs", settings.OMLWEB_USER_MAX_RUNNING_JOBS),
        max_queued_jobs=pick("max_queued_jobs", settings.OMLWEB_USER_MAX_QUEUED_JOBS),
        quota_bytes=pick("quota_mb", settings.OMLWEB_USER_QUOTA_MB) * 1024**2,
    )


def lock_user(user_id: int) -> int:
    """Serialise this user's share checks, and every change of what they keep, until the transaction
    ends; returns the bytes they keep, read under the lock.

    The lock is a row lock on the user's StorageUsage (PostgreSQL); SQLite's IMMEDIATE transactions
    serialise every writer anyway. Counting and then inserting under the lock is what makes the share
    hold across processes, and what keeps the counter exact (`storage_add`). That row, not the user's:
    PostgreSQL returns a row locked FOR UPDATE as the last transaction that held it left it, which a
    value read through a join or a subquery of the locked statement is not.
    """
    used = _locked_bytes(user_id)
    if used is None:
        # The user's first lock: their row first (a concurrent first lock waits on this insert).
        StorageUsage.objects.bulk_create([StorageUsage(user_id=user_id)], ignore_conflicts=True)
        used = _locked_bytes(user_id)
        assert used is not None, "the row was just made, or another transaction made it"
    return used


def share_check(*, user, mode: str, limits: UserLimits | None = None) -> None:
    """Refuse a new run when what the user keeps already fills their quota (QuotaExceeded), or when they
    have no share left for it (429, TooManyRuns). Call inside a transaction that then records the run,
    so that the checks and the insert happen under the user's lock."""
    limits = limits or limits_for(user.pk)
    used = lock_user(user.pk)
    if used >= limits.quota_bytes:
        raise QuotaExceeded(
            f"You keep {megabytes(used)} (results and figures of your runs, and your datasets), your quota "
            f"is {megabytes(limits.quota_bytes)}: delete some runs or datasets to free space."
        )
    if mode == Run.Mode.SYNC:
        running = _count_active(user.pk, mode)
        if running >= limits.max_sync_runs:
            raise TooManyRuns(
                f"You already have {running} synchronous run{_s(running)} running, your share of runs at once "
                f"({limits.max_sync_runs}). Wait for one to finish, or submit it as an async job.",
                retry_after=SYNC_RETRY_AFTER_SECONDS,
            )
        return
    waiting = _count_active(user.pk, mode)
    if waiting >= limits.max_queued_jobs:
        raise TooManyRuns(
            f"You already have {waiting} async job{_s(waiting)} queued or running, the most you may have "
            f"({limits.max_queued_jobs}). Wait for some to finish, or cancel some.",
            retry_after=QUEUE_RETRY_AFTER_SECONDS,
        )


def active_runs(user_id: int, *, mode: str, service: str | None = None, status: str | None = None) -> QuerySet[Run]:
    """The user's QUEUED or RUNNING runs of this mode (and service level, and status): what the shares
    count, read from the partial index that holds only active runs (run_active_of_user), so a count
    never reads the user's history."""
    runs = Run.objects.filter(ACTIVE_RUNS, user=user_id, mode=mode)
    if service is not None:
        runs = runs.filter(service=service)
    if status is not None:
        runs = runs.filter(status=status)
    return runs.order_by()


# The statements every run makes under the user's lock, written once per database as plain SQL: built
# through the ORM, each cost the web process more CPU than SQLite takes to run it (issue #11). They read
# and write exactly what the querysets above do: `lock_user`'s row (FOR UPDATE where the database locks
# rows) and `active_runs(...).count()`, through the same partial index; and `limits_of`'s groups.
_hot_statements: dict[str, dict[str, str]] = {}


def _hot(name: str) -> str:
    statements = _hot_statements.get(connection.vendor)
    if statements is None:
        quote = connection.ops.quote_name
        usage, runs = quote(StorageUsage._meta.db_table), quote(Run._meta.db_table)
        used, user, status = quote("used_bytes"), quote("user_id"), quote("status")
        lock = f"SELECT {used} FROM {usage} WHERE {user} = %s"
        if connection.features.has_select_for_update:
            lock += " FOR UPDATE"
        groups, members = quote(Group._meta.db_table), quote(get_user_model().groups.through._meta.db_table)
        limits = quote(GroupLimits._meta.db_table)
        limit_columns = ", ".join(f"l.{quote(name)}" for name in LIMIT_FIELDS)
        statements = {
            # Group.objects.filter(user=...).values_list("name", "omlweb_limits__<each limit>").
            "groups_and_limits": f"SELECT g.{quote('name')}, {limit_columns} FROM {groups} g "
            f"INNER JOIN {members} m ON g.{quote('id')} = m.{quote('group_id')} "
            f"LEFT OUTER JOIN {limits} l ON g.{quote('id')} = l.{quote('group_id')} WHERE m.{user} = %s",
            # GroupLimits.objects.filter(group__user=...).aggregate(Max(each limit)), without the join of
            # auth_group: the membership row names the group's id.
            "limits": f"SELECT {', '.join(f'MAX(l.{quote(name)})' for name in LIMIT_FIELDS)} FROM {limits} l "
            f"INNER JOIN {members} m ON l.{quote('group_id')} = m.{quote('group_id')} WHERE m.{user} = %s",
            "lock": lock,
            # The OR of equalities, as ACTIVE_RUNS: SQLite matches it to run_active_of_user's condition.
            "count_active": f"SELECT COUNT(*) FROM {runs} WHERE ({status} = %s OR {status} = %s) "
            f"AND {quote('mode')} = %s AND {user} = %s",
        }
        _hot_statements[connection.vendor] = statements
    return statements[name]


def _locked_bytes(user_id: int) -> int | None:
    with connection.cursor() as cursor:
        cursor.execute(_hot("lock"), [user_id])
        row = cursor.fetchone()
    return None if row is None else row[0]


def _count_active(user_id: int, mode: str) -> int:
    """`active_runs(user_id, mode=mode).count()`, as one plain statement."""
    with connection.cursor() as cursor:
        cursor.execute(_hot("count_active"), [Run.Status.QUEUED, Run.Status.RUNNING, mode, user_id])
        return cursor.fetchone()[0]


def _s(count: int) -> str:
    return "" if count == 1 else "s"


# Storage quota


def storage_used(user_id: int) -> int:
    """Bytes the user keeps on the server: their runs' results, streams and figures, and their datasets."""
    return StorageUsage.objects.filter(user=user_id).values_list("used_bytes", flat=True).first() or 0


def storage_add(user_id: int, delta: int) -> None:
    """Count `delta` more bytes (negative: fewer) against the user's quota. Call in the transaction that
    changes what they keep, after `lock_user`."""
    StorageUsage.objects.add(user_id, delta)


def delete_runs(runs: QuerySet[Run]) -> None:
    """Delete these runs and take what they kept off their users' counters. Call inside a transaction.

    Their users are locked first: a run that finishes meanwhile (its outcome is recorded under the lock)
    is either counted before the sum here, or finds itself deleted and keeps nothing."""
    users = sorted(set(runs.order_by().values_list("user", flat=True)))
    if not users:
        return
    # lock_user for each of them, in one order so that two deletions never wait on each other.
    StorageUsage.objects.bulk_create([StorageUsage(user_id=user) for user in users], ignore_conflicts=True)
    list(StorageUsage.objects.select_for_update().filter(user__in=users).order_by("user").values_list("user"))
    kept = list(runs.order_by().values("user").annotate(total=Sum("stored_bytes")).values_list("user", "total"))
    runs.delete()
    for user_id, total in kept:
        storage_add(user_id, -(total or 0))


def recount_storage() -> dict[int, tuple[int, int]]:
    """Rebuild every user's counter from their runs and datasets (the truth), each under the user's lock.
    Returns the users whose counter was wrong: {user id: (counted, true)}."""
    corrected = {}
    for user_id in get_user_model().objects.order_by("pk").values_list("pk", flat=True):
        with transaction.atomic():
            counted = lock_user(user_id)
            runs = Run.objects.filter(user=user_id).aggregate(total=Coalesce(Sum("stored_bytes"), 0))["total"]
            datasets = Dataset.objects.filter(owner=user_id).aggregate(total=Coalesce(Sum("size_bytes"), 0))["total"]
            true = runs + datasets
            if counted != true:
                StorageUsage.objects.filter(user=user_id).update(used_bytes=true)  # lock_user made the row
                corrected[user_id] = (counted, true)
    return corrected


def megabytes(size: int) -> str:
    return f"{size / 1024**2:.1f} MB"


def storage_summary(*, user) -> dict:
    """What the user keeps against their quota, for their runs page."""
    limits = limits_for(user.pk)
    used = storage_used(user.pk)
    return {
        "used": megabytes(used),
        "quota": megabytes(limits.quota_bytes),
        "percent": min(100, round(100 * used / limits.quota_bytes)) if limits.quota_bytes else 100,
        "max_sync_runs": limits.max_sync_runs,
        "max_running_jobs": limits.max_running_jobs,
    }


def result_size(result) -> int:
    """Bytes a runner result would keep on the server: its value's JSON, streams, traceback, figures."""
    size = _utf8_length(result.stdout) + _utf8_length(result.stderr) + _utf8_length(result.traceback)
    if result.succeeded:
        size += _utf8_length(result.value_json)
    return size + sum(len(figure.png) for figure in result.figures)


def _utf8_length(text: str) -> int:
    # An ASCII text (a DataFrame's JSON, mostly) is counted without a copy of its 0.8 MB.
    return len(text) if text.isascii() else len(text.encode())


def quota_refusal(*, run: Run, size: int) -> str | None:
    """Why the run may not keep `size` bytes of results and figures, or None when it may. Call inside the
    transaction that records its outcome: the user's lock taken here holds until then, so two runs
    finishing at once cannot both take the last of the quota."""
    # The limits read when the run was recorded, in this request (services.pipeline), else read now.
    limits = run.share_limits or limits_for(run.user_id)
    quota = limits.quota_bytes
    # A run keeps nothing until its outcome is recorded: what the user keeps is all else.
    used = lock_user(run.user_id)
    if used + size <= quota:
        return None
    return (
        f"The run's results and figures ({megabytes(size)}) would exceed your storage quota of "
        f"{megabytes(quota)}: you already keep {megabytes(used)} (runs and datasets). Nothing of this run "
        "was kept; delete some runs or datasets to free space."
    )


def dataset_size_change(*, dataset: Dataset, size: int) -> None:
    """Count a dataset's new Parquet file of `size` bytes (a new dataset, or a replacement) against its
    owner's quota, or refuse it (QuotaExceeded). Call inside the transaction that saves the dataset."""
    quota = limits_for(dataset.owner_id).quota_bytes
    used = lock_user(dataset.owner_id)
    kept = _counted_for(dataset)
    if used - kept + size > quota:
        raise QuotaExceeded(
            f"The dataset ({megabytes(size)} as Parquet) would exceed your storage quota of {megabytes(quota)}: "
            f"you already keep {megabytes(used - kept)} (runs and datasets). Delete some runs or datasets to free "
            "space."
        )
    storage_add(dataset.owner_id, size - kept)


def dataset_deleted(*, dataset: Dataset) -> None:
    """Take a dataset off its owner's quota. Call inside the transaction that deletes it, before."""
    lock_user(dataset.owner_id)
    storage_add(dataset.owner_id, -_counted_for(dataset))


def _counted_for(dataset: Dataset) -> int:
    """What the dataset counts for in its owner's counter (0: a new one), read again under their lock."""
    return Dataset.objects.filter(pk=dataset.pk).values_list("size_bytes", flat=True).first() or 0
