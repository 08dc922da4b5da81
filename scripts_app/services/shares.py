"""Fair shares: what one user may hold at once, so that no user can delay another's runs or the pages.

- Synchronous runs hold a web thread each while they run. A user may have at most
  `max_sync_runs` of them at once, counted in the database across every web process; one more is
  a 429 at once (not a wait for a thread), so the other threads stay free for other users and pages.
- Async jobs hold a worker slot each. A worker that picks a job whose user already has
  `max_running_jobs` running at that service level hands it back to the queue for a few seconds
  instead of running it, so the user's other jobs wait in the queue, not in other users' slots.
  A user may have at most `max_queued_jobs` jobs queued or running; one more is a 429 at submission.
- The results and figures a user's runs keep, and their datasets, count against `quota_bytes`; see
  `quota_check`.

Each limit is a setting, which an admin may override per group (`GroupLimits`, in Django's admin on
the group's page); a user in several groups gets the most generous override.
"""

from __future__ import annotations

import dataclasses

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db.models import BigIntegerField, ExpressionWrapper, Max, Subquery, Sum
from django.db.models.functions import Coalesce

from scripts_app import roles
from scripts_app.errors import QuotaExceeded, TooManyRuns
from scripts_app.models import Dataset, GroupLimits, Run

ACTIVE = (Run.Status.QUEUED, Run.Status.RUNNING)
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
    """The user's limits: the settings, or their groups' most generous overrides."""
    overrides = GroupLimits.objects.filter(group__user=user_id).aggregate(**{name: Max(name) for name in LIMIT_FIELDS})
    return _limits(overrides)


def limits_of(user) -> UserLimits:
    """`limits_for` a signed-in user object, in the one statement that also reads their group names for
    the role checks of this request (scripts_app.roles)."""
    rows = Group.objects.filter(user=user.pk).values_list("name", *(f"omlweb_limits__{name}" for name in LIMIT_FIELDS))
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


def lock_user(user_id: int) -> None:
    """Serialise this user's share checks until the transaction ends.

    A row lock on the user (PostgreSQL); SQLite's IMMEDIATE transactions serialise every writer
    anyway. Counting and then inserting under the lock is what makes the share hold across processes.
    """
    list(get_user_model().objects.select_for_update().filter(pk=user_id).values_list("pk", flat=True))


def share_check(*, user, mode: str, limits: UserLimits | None = None) -> None:
    """Refuse a new run the user has no share left for (429, TooManyRuns). Call inside a transaction
    that then records the run, so that the count and the insert happen under the user's lock."""
    limits = limits or limits_for(user.pk)
    lock_user(user.pk)
    if mode == Run.Mode.SYNC:
        running = Run.objects.filter(user=user, mode=Run.Mode.SYNC, status__in=ACTIVE).count()
        if running >= limits.max_sync_runs:
            raise TooManyRuns(
                f"You already have {running} synchronous run{_s(running)} running, your share of runs at once "
                f"({limits.max_sync_runs}). Wait for one to finish, or submit it as an async job.",
                retry_after=SYNC_RETRY_AFTER_SECONDS,
            )
        return
    waiting = Run.objects.filter(user=user, mode=Run.Mode.ASYNC, status__in=ACTIVE).count()
    if waiting >= limits.max_queued_jobs:
        raise TooManyRuns(
            f"You already have {waiting} async job{_s(waiting)} queued or running, the most you may have "
            f"({limits.max_queued_jobs}). Wait for some to finish, or cancel some.",
            retry_after=QUEUE_RETRY_AFTER_SECONDS,
        )


def _s(count: int) -> str:
    return "" if count == 1 else "s"


def job_may_start(*, user_id: int, service: str) -> bool:
    """Whether a worker may start one more async job of this user at this service level now.

    Per level, because each level has its own workers: a user's LOW jobs never hold back their HIGH
    one. Call inside the transaction that claims the job: the count and the claim happen under the
    user's lock.
    """
    limits = limits_for(user_id)
    lock_user(user_id)
    running = Run.objects.filter(user=user_id, mode=Run.Mode.ASYNC, service=service, status=Run.Status.RUNNING).count()
    return running < limits.max_running_jobs


# Storage quota


def storage_used(user_id: int, *, excluding: Run | Dataset | None = None) -> int:
    """Bytes the user keeps on the server: their runs' results, streams and figures, and their datasets."""
    runs = Run.objects.filter(user=user_id)
    datasets = Dataset.objects.filter(owner=user_id)
    if isinstance(excluding, Run):
        runs = runs.exclude(pk=excluding.pk)
    elif isinstance(excluding, Dataset):
        datasets = datasets.exclude(pk=excluding.pk)
    # One statement (it runs twice a run): the datasets' sum is a subquery of the runs' aggregate.
    dataset_total = datasets.order_by().values("owner").annotate(total=Sum("size_bytes")).values("total")
    total = ExpressionWrapper(
        Coalesce(Sum("stored_bytes"), 0) + Coalesce(Subquery(dataset_total), 0), output_field=BigIntegerField()
    )
    return runs.aggregate(total=total)["total"] or 0


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


def quota_check(*, user, limits: UserLimits | None = None) -> None:
    """Refuse a new run up front when what the user keeps already fills their quota."""
    quota = (limits or limits_for(user.pk)).quota_bytes
    used = storage_used(user.pk)
    if used >= quota:
        raise QuotaExceeded(
            f"You keep {megabytes(used)} (results and figures of your runs, and your datasets), your quota "
            f"is {megabytes(quota)}: delete some runs or datasets to free space."
        )


def result_size(result) -> int:
    """Bytes a runner result would keep on the server: its value's JSON, streams, traceback, figures."""
    size = len(result.stdout.encode()) + len(result.stderr.encode()) + len(result.traceback.encode())
    if result.succeeded:
        size += len(result.value_json.encode())
    return size + sum(len(figure.png) for figure in result.figures)


def quota_refusal(*, run: Run, size: int) -> str | None:
    """Why the run may not keep `size` bytes of results and figures, or None when it may."""
    # The limits read when the run was recorded, in this request (services.pipeline), else read now.
    limits = run.share_limits or limits_for(run.user_id)
    quota = limits.quota_bytes
    used = storage_used(run.user_id, excluding=run)
    if used + size <= quota:
        return None
    return (
        f"The run's results and figures ({megabytes(size)}) would exceed your storage quota of "
        f"{megabytes(quota)}: you already keep {megabytes(used)} (runs and datasets). Nothing of this run "
        "was kept; delete some runs or datasets to free space."
    )


def dataset_quota_check(*, dataset: Dataset, size: int) -> None:
    """Refuse a dataset upload (or replacement) whose Parquet file would take its owner past their quota."""
    quota = limits_for(dataset.owner_id).quota_bytes
    used = storage_used(dataset.owner_id, excluding=dataset)
    if used + size > quota:
        raise QuotaExceeded(
            f"The dataset ({megabytes(size)} as Parquet) would exceed your storage quota of {megabytes(quota)}: "
            f"you already keep {megabytes(used)} (runs and datasets). Delete some runs or datasets to free space."
        )
