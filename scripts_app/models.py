"""Scripts, their immutable versions, the runs made of them, and API tokens."""

from __future__ import annotations

import datetime
import json
import uuid
from typing import Any

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import connections, models, transaction
from django.db.models import F
from django.db.models.functions import Lower
from django.dispatch import Signal
from django.utils import timezone

from scripts_app.errors import ErrorCode
from scripts_app.runner.types import decode_json
from scripts_app.runner.validation import storable_text

SCRIPT_NAME_PATTERN = r"^[A-Za-z0-9_.\-]{1,128}$"
script_name_validator = RegexValidator(
    SCRIPT_NAME_PATTERN,
    "A script name has 1 to 128 letters, digits, '_', '.' or '-'.",
)


class Script(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="scripts")
    name = models.CharField(max_length=128, validators=[script_name_validator])
    description = models.TextField(blank=True)
    is_global = models.BooleanField(default=False, help_text="Every user may read and run a global script.")
    env_name = models.CharField(
        max_length=64, blank=True, help_text="The environment its runs use when they name none; empty: the default one."
    )
    current_version = models.ForeignKey(
        "ScriptVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    grantees = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="ScriptGrant", related_name="granted_scripts", blank=True
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="script_name_unique_per_owner")]
        indexes = [models.Index(fields=["name"]), models.Index(fields=["is_global", "name"])]

    def __str__(self) -> str:
        return f"{self.owner}/{self.name}"

    @property
    def source(self) -> str:
        return self.current_version.source if self.current_version else ""


VERSION_MESSAGE_MAX = 500


class ScriptVersion(models.Model):
    """One saved state of a script's source. Never changed after it is written."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # SET_NULL: deleting a script keeps the versions its runs ran.
    script = models.ForeignKey(Script, null=True, on_delete=models.SET_NULL, related_name="versions")
    number = models.PositiveIntegerField()
    source = models.TextField()
    entry_function = models.CharField(max_length=255)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    # What changed, in the author's words (optional, like a commit message).
    message = models.CharField(max_length=VERSION_MESSAGE_MAX, blank=True, default="")

    class Meta:
        ordering = ["-number"]
        constraints = [models.UniqueConstraint(fields=["script", "number"], name="script_version_number_unique")]

    def __str__(self) -> str:
        return f"{self.script_id} v{self.number}"

    def save(self, *args, **kwargs) -> None:
        if not self._state.adding:
            raise ValueError("A script version is immutable; save a new one instead.")
        super().save(*args, **kwargs)


class ScriptGrant(models.Model):
    """The owner lets another user read and run a private script."""

    script = models.ForeignKey(Script, on_delete=models.CASCADE, related_name="grants")
    grantee = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="script_grants")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["script", "grantee"], name="script_grant_unique")]

    def __str__(self) -> str:
        return f"{self.script} -> {self.grantee}"


class ServiceLevel(models.TextChoices):
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"


ENVIRONMENT_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$"
environment_name_validator = RegexValidator(
    ENVIRONMENT_NAME_PATTERN,
    "An environment name has 1 to 64 letters, digits, '_', '.' or '-', and does not start with '.' or '-'.",
)


class EnvironmentLock(models.Model):
    """The exact packages of an environment at one moment, as `name==version` lines. Never changed.

    Runs point at the lock they ran with, so identical locks are stored once.
    """

    sha256 = models.CharField(max_length=64, unique=True, editable=False)
    text = models.TextField(editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    def __str__(self) -> str:
        return self.sha256[:12]


class Environment(models.Model):
    """A named Python environment that admins define; each worker host builds it from this row."""

    class Status(models.TextChoices):
        BUILDING = "BUILDING"
        READY = "READY"
        FAILED = "FAILED"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=64, unique=True, validators=[environment_name_validator])
    description = models.TextField(blank=True)
    packages = models.TextField(blank=True, help_text="Requirements, one per line; pins allowed.")
    python = models.CharField(max_length=500, help_text="Path of the base interpreter on every worker host.")
    python_version = models.CharField(max_length=32, blank=True)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.BUILDING)
    # Bumped by every (re)build: a build that finds a newer generation gives up, and each
    # generation gets its own folder on disk, so a rebuild never disturbs runs of the old one.
    generation = models.PositiveIntegerField(default=1)
    spec_hash = models.CharField(max_length=64, blank=True)
    lock = models.ForeignKey(EnvironmentLock, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    size_bytes = models.BigIntegerField(null=True, blank=True)
    package_count = models.PositiveIntegerField(null=True, blank=True)
    build_log = models.TextField(blank=True)
    build_started_at = models.DateTimeField(null=True, blank=True)
    build_finished_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_ready(self) -> bool:
        return self.status == self.Status.READY


class EnvironmentPreload(models.Model):
    """A user's preload of an environment (Oracle's v2 /preload/conda), kept until it expires."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="preloads")
    environment = models.ForeignKey(Environment, on_delete=models.CASCADE, related_name="preloads")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "environment"], name="one_preload_per_user_and_env")]

    def __str__(self) -> str:
        return f"{self.user}/{self.environment}"


# Oracle's most parallel pieces at once per service level.
SERVICE_LEVEL_DEGREE = {ServiceLevel.LOW: 2, ServiceLevel.MEDIUM: 4, ServiceLevel.HIGH: 8}


def dataset_file_path(dataset: Dataset, filename: str) -> str:
    # A new name per upload: a replaced file never changes under a query that is reading it.
    return f"datasets/{dataset.owner_id}/{dataset.id}/{uuid.uuid4().hex}.parquet"


class Dataset(models.Model):
    """A named table of data, stored as Parquet; input queries name it in SQL."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="datasets")
    # Same rules as script names; unique per owner ignoring case, since SQL names ignore case.
    name = models.CharField(max_length=128, validators=[script_name_validator])
    description = models.TextField(blank=True)
    is_global = models.BooleanField(default=False, help_text="Every user may query a global dataset.")
    grantees = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="DatasetGrant", related_name="granted_datasets", blank=True
    )
    file = models.FileField(upload_to=dataset_file_path, max_length=255)
    source_format = models.CharField(max_length=8, help_text="The format it was uploaded in: csv or parquet.")
    size_bytes = models.PositiveBigIntegerField(default=0)
    row_count = models.PositiveBigIntegerField(default=0)
    column_count = models.PositiveIntegerField(default=0)
    # [{"name": ..., "type": <DuckDB type>}, ...] in column order.
    schema = models.JSONField(default=list)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(Lower("name"), "owner", name="dataset_name_unique_per_owner"),
        ]
        indexes = [models.Index(fields=["is_global", "name"])]

    def __str__(self) -> str:
        return f"{self.owner}/{self.name}"


class DatasetGrant(models.Model):
    """The owner lets another user query a private dataset."""

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="grants")
    grantee = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="dataset_grants")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["dataset", "grantee"], name="dataset_grant_unique")]

    def __str__(self) -> str:
        return f"{self.dataset} -> {self.grantee}"


class RunTakenAway(Exception):
    """A run's outcome arrived after the run was deleted or handed to another attempt."""


# Sent once the transaction that ended runs has committed, with their ids (`pks`), whatever their final
# status: what reacts to a finished run (notifications) hangs off this one place, RunQuerySet.finish.
run_finished = Signal()


class RunQuerySet(models.QuerySet):
    """Runs, and the transitions of a run's life. Each transition is one conditional UPDATE of the runs
    in the queryset (callers narrow it to one run) and returns how many changed: 0 means another change
    won (a second delivery, a reaper on another host, a cancel), and nothing was written."""

    def finished(self) -> RunQuerySet:
        return self.filter(status__in=Run.FINISHED)

    def held_by(self, run: Run) -> RunQuerySet:
        """The run as long as the attempt that started it still holds it: RUNNING, on the same worker, in
        the same attempt (a sync run: no worker, attempt 0)."""
        return self.filter(pk=run.pk, status=Run.Status.RUNNING, worker=run.worker, attempts=run.attempts)

    def start(self, *, now: datetime.datetime) -> int:
        """QUEUED -> RUNNING in this process: a sync run recorded before it runs."""
        return self.filter(status=Run.Status.QUEUED).update(status=Run.Status.RUNNING, started_at=now)

    def claim(self, *, worker: str, now: datetime.datetime) -> int:
        """QUEUED (with no cancel asked) -> RUNNING for a worker's next attempt."""
        return self.filter(status=Run.Status.QUEUED, cancel_requested_at__isnull=True).update(
            status=Run.Status.RUNNING, started_at=now, heartbeat_at=now, worker=worker, attempts=F("attempts") + 1
        )

    def requeue(self, *, now: datetime.datetime) -> int:
        """RUNNING -> QUEUED: taken back from a worker that was lost, to be published again."""
        return self.filter(status=Run.Status.RUNNING).update(
            status=Run.Status.QUEUED, worker="", heartbeat_at=None, enqueued_at=now
        )

    def published(self, *, now: datetime.datetime) -> int:
        """A QUEUED run's message was published (again) now: the reaper measures lost messages from it."""
        return self.filter(status=Run.Status.QUEUED).update(enqueued_at=now)

    def finish(
        self,
        status: str,
        *,
        now: datetime.datetime | None = None,
        error_code: int | None = None,
        error_message: str = "",
        traceback: str = "",
        pks: list | None = None,
        **fields: Any,
    ) -> int:
        """QUEUED or RUNNING -> a final status, with its error (none for SUCCEEDED) and any other fields.
        The one write that ends runs, so the one place that sends `run_finished`. `pks`: the ids the
        queryset can hold, when the caller knows them (one run: its own), saving the query that finds them."""
        active = self.filter(status__in=Run.ACTIVE)
        if pks is None:
            pks = list(active.values_list("pk", flat=True))
        if not pks:
            return 0
        finished = active.filter(pk__in=pks).update(
            status=status,
            finished_at=now or timezone.now(),
            error_code=error_code,
            error_message=error_message,
            traceback=traceback,
            **fields,
        )
        if finished:
            # A run another change ended meanwhile may be among `pks`: receivers re-read each run.
            transaction.on_commit(lambda: run_finished.send(sender=Run, pks=pks), robust=True)
        return finished

    def finish_held(self, run: Run, fields: dict[str, Any]) -> int:
        """`held_by(run).finish(run.status, pks=[run.pk], **fields)` as one plain UPDATE, for the instance's
        `Run.finish` that every run's outcome goes through: the same conditions and columns, the same
        `run_finished` once committed, without the ORM's cost of building it (issue #11). `fields` holds
        the status, finished_at and every other column it writes."""
        db = connections[self.db]
        quote = db.ops.quote_name
        columns, params = [], []
        for name, value in fields.items():
            field = Run._meta.get_field(name)
            assert isinstance(field, models.Field), name
            assert field.concrete, name
            assert field.column, name
            columns.append(f"{quote(field.column)} = %s")
            params.append(field.get_db_prep_save(value, db))
        where = [("id", run.pk), ("status", Run.Status.RUNNING), ("worker", run.worker), ("attempts", run.attempts)]
        for name, value in where:
            condition = Run._meta.get_field(name)
            assert isinstance(condition, models.Field), name
            params.append(condition.get_db_prep_value(value, db))
        sql = f"UPDATE {quote(Run._meta.db_table)} SET {', '.join(columns)} WHERE " + " AND ".join(
            f"{quote(name)} = %s" for name, _ in where
        )
        with db.cursor() as cursor:
            cursor.execute(sql, params)
            finished = cursor.rowcount
        if finished:
            pks = [run.pk]
            transaction.on_commit(lambda: run_finished.send(sender=Run, pks=pks), robust=True, using=self.db)
        return finished

    def cancel(self, *, now: datetime.datetime) -> int:
        """Stop these runs: a QUEUED one ends CANCELLED at once; a RUNNING one is asked to stop (its worker
        polls cancel_requested_at and kills it)."""
        cancelled = self.filter(status=Run.Status.QUEUED).finish(
            Run.Status.CANCELLED,
            now=now,
            error_code=ErrorCode.CANCELLED,
            error_message="The job was cancelled before it started.",
            cancel_requested_at=now,
        )
        return cancelled + self.filter(status=Run.Status.RUNNING).update(cancel_requested_at=now)


# A run QUEUED or RUNNING, written as an OR of equalities: SQLite matches a query's `status = ?` (and
# this very OR) to the partial index run_active_of_user, but never a `status IN (?, ?)`.
ACTIVE_RUNS = models.Q(status="QUEUED") | models.Q(status="RUNNING")


class Run(models.Model):
    class Status(models.TextChoices):
        QUEUED = "QUEUED"
        RUNNING = "RUNNING"
        SUCCEEDED = "SUCCEEDED"
        FAILED = "FAILED"
        TIMED_OUT = "TIMED_OUT"
        CANCELLED = "CANCELLED"

    class Mode(models.TextChoices):
        SYNC = "SYNC"
        ASYNC = "ASYNC"

    class Kind(models.TextChoices):
        """Which OML endpoint: do-eval runs once with no data, the others feed it data in pieces."""

        DO_EVAL = "do-eval"
        TABLE_APPLY = "table-apply"
        ROW_APPLY = "row-apply"
        GROUP_APPLY = "group-apply"
        INDEX_APPLY = "index-apply"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.TIMED_OUT, Status.CANCELLED)
    ACTIVE = (Status.QUEUED, Status.RUNNING)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    script_version = models.ForeignKey(ScriptVersion, on_delete=models.PROTECT, related_name="runs")
    # Kept apart from the version so the history still reads right after a script is deleted or renamed.
    script_name = models.CharField(max_length=128)
    script_owner = models.CharField(max_length=150)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="runs")
    client_address = models.GenericIPAddressField(null=True, blank=True)
    parameters = models.JSONField(default=dict, blank=True)
    graphics = models.BooleanField(default=False)
    env_name = models.CharField(max_length=128, default="default")
    # None for the default environment. The lock is what the environment held when the run was made.
    environment = models.ForeignKey(Environment, null=True, blank=True, on_delete=models.SET_NULL, related_name="runs")
    env_lock = models.ForeignKey(EnvironmentLock, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    service = models.CharField(max_length=6, choices=ServiceLevel.choices, default=ServiceLevel.LOW)
    mode = models.CharField(max_length=5, choices=Mode.choices, default=Mode.SYNC)
    timeout_seconds = models.PositiveIntegerField(null=True, blank=True)
    comments = models.TextField(blank=True)
    kind = models.CharField(max_length=11, choices=Kind.choices, default=Kind.DO_EVAL)
    input_query = models.TextField(blank=True, help_text="The SQL query over datasets that feeds an apply run.")
    # An apply run's own fields: rows, groupBy, orderBy, times, and the degree of parallelism used.
    apply_options = models.JSONField(default=dict, blank=True)
    # One entry per chunk, group or index of an apply run: label, status, timings, figures.
    pieces = models.JSONField(default=list, blank=True)
    status = models.CharField(max_length=9, choices=Status.choices, default=Status.QUEUED)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # The value as JSON text, exactly as the run's process checked it (runner/validation.py): kept and
    # answered without being decoded and encoded again. Read it as a Python value through `result`.
    result_json = models.TextField(null=True, blank=True)
    stdout = models.TextField(blank=True)
    stderr = models.TextField(blank=True)
    error_code = models.PositiveIntegerField(null=True, blank=True)
    error_message = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    # Async jobs: when the message was (last) published, who holds the run and when it last said so,
    # how often it was started, and a cancel request the worker polls for.
    enqueued_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=255, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    # What the run keeps on the server (result JSON, stdout, stderr, figures' PNGs), counted against
    # its user's storage quota.
    stored_bytes = models.PositiveBigIntegerField(default=0)
    # A run started by a schedule (docs/schedules.md): which one, and the occurrence it runs for.
    schedule = models.ForeignKey("Schedule", null=True, blank=True, on_delete=models.SET_NULL, related_name="runs")
    scheduled_for = models.DateTimeField(null=True, blank=True)
    # A retry is a new run linked to the attempt it retries; retry_number 0 is the first attempt.
    retry_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries")
    retry_number = models.PositiveIntegerField(default=0)

    objects = RunQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["-created_at"]),
            # The history's keyset pagination: (created_at, id) is unique and ordered.
            models.Index(fields=["-created_at", "-id"], name="run_history_keyset"),
            # An analyst's history filtered by status (and its capped count) without reading every run of theirs.
            models.Index(fields=["user", "status", "-created_at"], name="run_user_status_created"),
            models.Index(fields=["user", "-created_at"]),
            models.Index(fields=["status", "-created_at"]),
            models.Index(fields=["script_name", "-created_at"]),
            # An analyst's history filtered by script name (and its capped count) from the index alone;
            # with PostgreSQL, migration 0015 adds a trigram index for "parameters contain" (no model index).
            models.Index(fields=["user", "script_name", "-created_at"], name="run_user_script_created"),
            models.Index(fields=["user", "mode", "-created_at"], name="run_jobs_of_user"),
            models.Index(fields=["mode", "status", "service"], name="run_jobs_by_status"),
            models.Index(fields=["finished_at"], name="run_finished_at"),
            # What the shares count (services.shares: share_check, and the worker's claim): only the active runs
            # are in it, so a count reads the user's few active runs, however long their history.
            models.Index(
                fields=["user", "mode", "service"],
                name="run_active_of_user",
                condition=ACTIVE_RUNS,
            ),
        ]
        constraints = [
            # Two scheduler processes can never both start the same occurrence of a schedule.
            models.UniqueConstraint(
                fields=["schedule", "scheduled_for"],
                condition=models.Q(schedule__isnull=False, retry_number=0),
                name="one_run_per_schedule_occurrence",
            ),
            # A failed attempt is retried at most once (its retry is the next attempt).
            models.UniqueConstraint(
                fields=["retry_of"], condition=models.Q(retry_of__isnull=False), name="one_retry_per_attempt"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.script_name} {self.status} {self.created_at:%Y-%m-%d %H:%M:%S}"

    # Not a field: the submitter's limits (services.shares.UserLimits) read when this request recorded the
    # run, so that recording its outcome checks the quota without reading them again.
    share_limits: Any = None
    # Not a field: the figures this process stored for the run's outcome (services.execution.KeptImage),
    # in position order, so that its answer encodes the bytes at hand instead of reading the files back.
    kept_images: Any = None

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def result(self) -> Any:
        """The run's value (None when it has none), decoded from `result_json` on first use and kept."""
        text = self.result_json
        if text is None:
            return None
        cached = self.__dict__.get("_result_cache")
        if cached is not None and cached[0] is text:
            return cached[1]
        value = decode_json(text)
        self.__dict__["_result_cache"] = (text, value)
        return value

    @result.setter
    def result(self, value: Any) -> None:
        """Encode a value the service built itself (an apply run's assembled pieces; a test's row)."""
        if value is None:
            self.result_json = None
            return
        self.result_json = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        self.__dict__["_result_cache"] = (self.result_json, value)

    def set_result_json(self, text: str, value: Any = None) -> None:
        """Keep a value's JSON text as a run's process checked it, with its decoded `value` when at hand
        (so a page or a receiver in this process does not decode it again)."""
        self.result_json = text
        if value is not None:
            self.__dict__["_result_cache"] = (text, value)
        else:
            self.__dict__.pop("_result_cache", None)

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None

    def finish(
        self, status: str, *, error_code: int | None = None, error_message: str = "", traceback: str = ""
    ) -> None:
        """Record this run's outcome as its attempt ends: the status and error, and what it keeps (result,
        streams, pieces, options, stored bytes), in one conditional UPDATE.

        Raises RunTakenAway when the run was deleted or taken from this attempt meanwhile; raised inside the
        caller's transaction, so the figures it saved are rolled back too."""
        self.status = status
        self.finished_at = timezone.now()
        self.error_code = error_code
        # What a run printed or raised is the user's text: it may hold NUL or lone surrogates, which
        # PostgreSQL (and any driver) refuses. The runner cleans its own; this covers every other path.
        self.error_message = storable_text(error_message)
        self.traceback = storable_text(traceback)
        self.stdout = storable_text(self.stdout)
        self.stderr = storable_text(self.stderr)
        # One transaction with the counter of what the user keeps (the caller's, holding the user's lock:
        # services.execution): what the run keeps counts against their quota from its commit on.
        with transaction.atomic(savepoint=False):
            finished = Run.objects.finish_held(
                self,
                {
                    "status": status,
                    "finished_at": self.finished_at,
                    "error_code": error_code,
                    "error_message": self.error_message,
                    "traceback": self.traceback,
                    "result_json": self.result_json,
                    "stdout": self.stdout,
                    "stderr": self.stderr,
                    "pieces": self.pieces,
                    "apply_options": self.apply_options,
                    "stored_bytes": self.stored_bytes,
                },
            )
            if finished:
                StorageUsage.objects.add(self.user_id, self.stored_bytes)
        if not finished:
            raise RunTakenAway(f"Run {self.pk} was deleted or taken from attempt {self.attempts} while it ran")


class StorageUsageQuerySet(models.QuerySet):
    def add(self, user_id: int, delta: int) -> None:
        """Add `delta` bytes (negative: fewer) to what the user keeps. Call in the transaction that
        changes what they keep, under their lock (services.shares.lock_user): the lock makes the missing
        row's insert safe, and the row is then exact at every commit."""
        if not delta:
            return
        # One plain UPDATE, not the ORM's: every run's outcome makes it (issue #11, the sync path's CPU).
        quote = connections[self.db].ops.quote_name
        used, table = quote("used_bytes"), quote(self.model._meta.db_table)
        with connections[self.db].cursor() as cursor:
            cursor.execute(f"UPDATE {table} SET {used} = {used} + %s WHERE {quote('user_id')} = %s", [delta, user_id])
            changed = cursor.rowcount
        if not changed:
            self.create(user_id=user_id, used_bytes=delta)


class StorageUsage(models.Model):
    """What one user keeps on the server, in bytes: their runs' stored_bytes and their datasets'
    size_bytes, summed. Kept in step with every change of those, in its transaction, so that the storage
    quota reads one row instead of summing the user's history (services.shares); `recount_storage`
    rebuilds it from the runs and datasets."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, primary_key=True, on_delete=models.CASCADE, related_name="storage_usage"
    )
    used_bytes = models.BigIntegerField(default=0)

    objects = StorageUsageQuerySet.as_manager()

    def __str__(self) -> str:
        return f"{self.user_id}: {self.used_bytes} bytes"


class RunOutput(models.Model):
    """What a running run printed since the last flush: written by the process running it as it
    comes (services.live), read by its page; removed when the run ends (its stdout and stderr then
    hold the whole, bounded output)."""

    id = models.BigAutoField(primary_key=True)
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="live_output")
    # The attempt that printed it: a job started again shows only its own attempt's output.
    attempt = models.PositiveIntegerField(default=0)
    stream = models.CharField(max_length=6)  # "stdout" or "stderr"
    text = models.TextField()

    class Meta:
        indexes = [models.Index(fields=["run", "id"], name="run_output_by_run")]

    def __str__(self) -> str:
        return f"{self.stream} of run {self.run_id}, attempt {self.attempt}"


class GroupLimits(models.Model):
    """An admin's override of the per-user limits for the members of one group.

    Empty fields keep the setting's default. A user in several groups gets the most generous
    override of each limit (a member of "admins" and "analysts" is not held to the analysts' share).
    """

    group = models.OneToOneField("auth.Group", on_delete=models.CASCADE, related_name="omlweb_limits")
    max_sync_runs = models.PositiveIntegerField(
        null=True, blank=True, help_text="Synchronous runs a member may have at once (OMLWEB_USER_MAX_CONCURRENT_RUNS)."
    )
    max_running_jobs = models.PositiveIntegerField(
        null=True, blank=True, help_text="Async jobs of a member that run at once (OMLWEB_USER_MAX_RUNNING_JOBS)."
    )
    max_queued_jobs = models.PositiveIntegerField(
        null=True, blank=True, help_text="Async jobs a member may have queued or running (OMLWEB_USER_MAX_QUEUED_JOBS)."
    )
    quota_mb = models.PositiveIntegerField(
        null=True, blank=True, help_text="MB of results and figures a member's runs may keep (OMLWEB_USER_QUOTA_MB)."
    )

    class Meta:
        verbose_name = "group limits"
        verbose_name_plural = "group limits"

    def __str__(self) -> str:
        return f"Limits of {self.group}"


def run_image_path(image: RunImage, filename: str) -> str:
    return f"runs/{image.run_id}/{image.position}.png"


class RunImage(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="images")
    position = models.PositiveIntegerField(help_text="1 for the first figure, as OML's ID.")
    title = models.CharField(max_length=500, null=True, blank=True)
    image = models.FileField(upload_to=run_image_path)

    class Meta:
        ordering = ["run", "position"]
        constraints = [models.UniqueConstraint(fields=["run", "position"], name="run_image_position_unique")]

    def __str__(self) -> str:
        return f"{self.run_id} #{self.position}"


class AccessToken(models.Model):
    """A bearer token for the REST API. Only its SHA-256 is stored."""

    class Kind(models.TextChoices):
        OAUTH = "OAUTH", "OML token (60 minutes, refreshable)"
        PERSONAL = "PERSONAL", "Personal API token"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="access_tokens")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    name = models.CharField(max_length=100, blank=True)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    # A refreshed OML token keeps the moment its chain was first issued: refresh ends 8 hours after it.
    chain_started_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} of {self.user} ({self.name or self.created_at:%Y-%m-%d %H:%M})"

    def is_live(self, now) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


class WorkerHeartbeat(models.Model):
    """One process of the service (a Celery worker or a web process), as it last reported itself.

    Each process rewrites its own row every OMLWEB_WORKER_HEARTBEAT_SECONDS (services/heartbeats.py),
    so the worker health page sees every host's processes through the database. A row whose beat is
    older than OMLWEB_WORKER_GONE_SECONDS is a process that is gone (killed, or its host is down).
    """

    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, help_text="worker or web")
    # A worker's Celery node name: the `worker` its runs record.
    name = models.CharField(max_length=255)
    queues = models.JSONField(default=list, blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    beat_at = models.DateTimeField(default=timezone.now)
    # This process's runner: its isolation level and warm templates (runner.isolation_report's summary).
    isolation = models.CharField(max_length=16, blank=True)
    templates = models.JSONField(default=list, blank=True)
    # Environment name -> "built" or "missing" on this host.
    environments = models.JSONField(default=dict, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["host", "pid"], name="worker_heartbeat_unique_process")]
        indexes = [models.Index(fields=["beat_at"], name="worker_heartbeat_beat_at")]

    def __str__(self) -> str:
        return f"{self.name or self.kind} (pid {self.pid} on {self.host})"


class MetricCounter(models.Model):
    """A Prometheus counter (or one histogram bucket) kept in the database, so every process and host adds
    to the same value (services/metrics.py). Rows whose name starts with "_" are fold watermarks (`at`)."""

    name = models.CharField(max_length=100)
    # The labels, canonical: sorted "key=value" pairs joined by "\x1f" (empty for none).
    labels = models.CharField(max_length=500, blank=True)
    value = models.FloatField(default=0.0)
    at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["name", "labels"], name="metric_counter_unique")]

    def __str__(self) -> str:
        return f"{self.name}{{{self.labels}}} {self.value}"


class NotificationRule(models.Model):
    """Tell the owner, by e-mail or webhook, when one of their runs fails, succeeds or runs long.

    Scope: all of the owner's runs, or (with `script`) only their runs of that script, or (with
    `schedule`) only the runs that schedule started. Only the owner's
    own runs ever match: a rule never reports another user's run (docs/notifications.md).
    """

    class Channel(models.TextChoices):
        EMAIL = "EMAIL", "E-mail"
        WEBHOOK = "WEBHOOK", "Webhook"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notification_rules")
    name = models.CharField(max_length=100)
    script = models.ForeignKey(
        Script, null=True, blank=True, on_delete=models.CASCADE, related_name="notification_rules"
    )
    schedule = models.ForeignKey(
        "Schedule", null=True, blank=True, on_delete=models.CASCADE, related_name="notification_rules"
    )
    on_failure = models.BooleanField(default=True, help_text="A run ends FAILED or TIMED_OUT.")
    on_success = models.BooleanField(default=False, help_text="A run ends SUCCEEDED.")
    longer_than_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="A run is still running (or ran) longer than this many seconds."
    )
    channel = models.CharField(max_length=7, choices=Channel.choices)
    url = models.URLField(max_length=2000, blank=True, help_text="Webhooks: where the JSON is POSTed.")
    # Kept in clear: each delivery is signed with it (HMAC-SHA256), and the owner needs it to verify.
    secret = models.CharField(max_length=64, blank=True, editable=False)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["owner", "name", "created_at"]
        indexes = [models.Index(fields=["owner", "enabled"], name="notification_rules_of_owner")]

    def __str__(self) -> str:
        return f"{self.owner}/{self.name}"


class NotificationDelivery(models.Model):
    """One attempt at sending one notification, and what the other side answered.

    A failed attempt that may be retried is followed by a new row (attempt + 1), so every try stays visible.
    """

    class Event(models.TextChoices):
        FAILURE = "failure"
        SUCCESS = "success"
        LONG_RUNNING = "long-running"
        TEST = "test"

    class Status(models.TextChoices):
        PENDING = "PENDING"
        SENDING = "SENDING"
        SENT = "SENT"
        FAILED = "FAILED"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    rule = models.ForeignKey(NotificationRule, on_delete=models.CASCADE, related_name="deliveries")
    # SET_NULL: retention deletes old runs; their deliveries stay until their rule goes.
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    event = models.CharField(max_length=12, choices=Event.choices)
    channel = models.CharField(max_length=7, choices=NotificationRule.Channel.choices)
    target = models.CharField(max_length=2000, help_text="The URL or e-mail address it went to.")
    attempt = models.PositiveSmallIntegerField(default=1)
    status = models.CharField(max_length=7, choices=Status.choices, default=Status.PENDING)
    payload = models.JSONField(default=dict)
    not_before = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    response_excerpt = models.TextField(blank=True)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # One notification per rule, run and event: a run reported twice (two final-state paths, two
            # reaper passes) is sent once.
            models.UniqueConstraint(fields=["rule", "run", "event", "attempt"], name="notification_delivery_once"),
        ]
        indexes = [
            models.Index(fields=["status", "not_before"], name="notification_deliveries_due"),
            models.Index(fields=["rule", "-created_at"], name="notification_deliveries_rule"),
        ]

    def __str__(self) -> str:
        return f"{self.event} {self.channel} #{self.attempt} {self.status}"


class AuditEventQuerySet(models.QuerySet):
    """Events are appended, never changed: bulk updates and deletes are refused too.

    The retention command (services.audit.prune) is the one place that removes events.
    """

    def update(self, **kwargs):
        raise ValueError("Audit events are never changed.")

    def delete(self):
        raise ValueError("Audit events are removed only by the retention command (manage.py audit_prune).")


class AuditEvent(models.Model):
    """One change of state, who made it and from where: appended by services.audit.record, never changed.

    Each event carries the hash of the one before it (prev_hash) and its own hash over its fields and
    prev_hash, so an edited, removed or inserted row breaks the chain (manage.py audit_verify).
    """

    # Given by services.audit.record under the chain's lock (the chain head's last id + 1), not by a
    # sequence: the id is part of the hash.
    id = models.BigIntegerField(primary_key=True)
    created_at = models.DateTimeField()
    # No database constraint and nothing done on delete: deleting a user never touches the trail, and
    # actor_name keeps who it was.
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    actor_name = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=64)
    object_type = models.CharField(max_length=32, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    object_name = models.CharField(max_length=255, blank=True)
    client_address = models.CharField(max_length=45, blank=True)
    user_agent = models.CharField(max_length=255, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(fields=["created_at"], name="audit_created_at"),
            models.Index(fields=["actor_name", "-id"], name="audit_actor"),
            models.Index(fields=["action", "-id"], name="audit_action"),
            models.Index(fields=["object_type", "object_id", "-id"], name="audit_object"),
        ]

    def __str__(self) -> str:
        return f"#{self.id} {self.action} {self.object_type} {self.object_name} by {self.actor_name or 'system'}"

    def save(self, *args, **kwargs) -> None:
        if not self._state.adding:
            raise ValueError("An audit event is never changed.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValueError("Audit events are removed only by the retention command (manage.py audit_prune).")


class AuditChainHead(models.Model):
    """The one row every writer of the trail locks: the last event's id and hash.

    Locking it (SELECT ... FOR UPDATE) serialises writers on PostgreSQL, so each event follows exactly
    one other; it also shows a removed tail, which no later event's prev_hash could.
    """

    last_id = models.BigIntegerField(default=0)
    last_hash = models.CharField(max_length=64)

    def __str__(self) -> str:
        return f"audit chain at #{self.last_id}"


class AuditAnchor(models.Model):
    """Left by the retention command: the last removed event's id and hash, where the kept chain starts."""

    created_at = models.DateTimeField(default=timezone.now)
    pruned_before = models.DateTimeField()
    last_removed_id = models.BigIntegerField()
    last_removed_hash = models.CharField(max_length=64)
    removed_count = models.PositiveBigIntegerField()

    class Meta:
        ordering = ["-last_removed_id"]

    def __str__(self) -> str:
        return f"pruned up to #{self.last_removed_id}"


class ParameterPreset(models.Model):
    """A named set of parameters a user keeps for a script: chosen in the run form or named by the API."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    script = models.ForeignKey(Script, on_delete=models.CASCADE, related_name="presets")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="parameter_presets")
    name = models.CharField(max_length=64)
    parameters = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["script", "owner", "name"], name="parameter_preset_name_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.script_id} preset {self.name}"


# Schedules and retries (docs/schedules.md)


class RetryPolicy(models.Model):
    """How a failed async run is tried again: fields shared by a script's policy and a schedule's."""

    max_retries = models.PositiveIntegerField(default=0, help_text="Retries after the first attempt; 0: none.")
    retry_backoff_seconds = models.PositiveIntegerField(
        default=60, help_text="Wait before the first retry; each later one waits `factor` times longer."
    )
    retry_backoff_factor = models.FloatField(default=2.0)
    retry_user_errors = models.BooleanField(
        default=False,
        help_text="Also retry when the script itself fails (an exception, a time or memory limit). "
        "Infrastructure failures (a lost worker) are always retried.",
    )

    class Meta:
        abstract = True


class ScriptRetryPolicy(RetryPolicy):
    """A script's retry policy: applies to its async runs that no schedule with its own policy started."""

    script = models.OneToOneField(Script, on_delete=models.CASCADE, related_name="retry_policy")

    def __str__(self) -> str:
        return f"Retries of {self.script}"


class Schedule(RetryPolicy):
    """A script that runs itself: on a cron expression or a fixed interval, in a time zone."""

    class Missed(models.TextChoices):
        SKIP = "skip", "Skip them"
        RUN_ONCE = "run_once", "Run once"

    class Overlap(models.TextChoices):
        SKIP = "skip", "Skip the new run"
        QUEUE = "queue", "Queue it after the running one"
        ALLOW = "allow", "Allow both at once"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="schedules")
    script = models.ForeignKey(Script, on_delete=models.CASCADE, related_name="schedules")
    # None: the script's current version at each run.
    version = models.ForeignKey(ScriptVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    name = models.CharField(max_length=128)
    parameters = models.JSONField(default=dict, blank=True)
    env_name = models.CharField(max_length=64, blank=True)
    service = models.CharField(max_length=6, choices=ServiceLevel.choices, default=ServiceLevel.LOW)
    timeout_seconds = models.PositiveIntegerField(null=True, blank=True)
    cron = models.CharField(max_length=200, blank=True, help_text="A cron expression; empty: every interval_seconds.")
    interval_seconds = models.PositiveIntegerField(null=True, blank=True)
    time_zone = models.CharField(max_length=64, default="UTC")
    enabled = models.BooleanField(default=True)
    missed_policy = models.CharField(max_length=8, choices=Missed.choices, default=Missed.SKIP)
    overlap_policy = models.CharField(max_length=5, choices=Overlap.choices, default=Overlap.SKIP)
    # Intervals count from here (set when the schedule is saved or resumed).
    anchor_at = models.DateTimeField(default=timezone.now)
    next_run_at = models.DateTimeField(null=True, blank=True)
    # An occurrence held back by the queue overlap policy until the running one finishes.
    pending_for = models.DateTimeField(null=True, blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    last_run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # What the scheduler last did instead of starting a run (skipped, refused), for the owner to see.
    last_note = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        indexes = [
            models.Index(fields=["enabled", "next_run_at"], name="schedule_due"),
            models.Index(fields=["enabled", "pending_for"], name="schedule_pending"),
        ]

    def __str__(self) -> str:
        return f"{self.owner}/{self.name}"
