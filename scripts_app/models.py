"""Scripts, their immutable versions, the runs made of them, and API tokens."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone

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


class RunQuerySet(models.QuerySet):
    def finished(self) -> RunQuerySet:
        return self.filter(status__in=Run.FINISHED)

    def visible_to(self, user) -> RunQuerySet:
        return self if user.is_superuser else self.filter(user=user)


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
    result = models.JSONField(null=True, blank=True)
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
            models.Index(fields=["user", "-created_at"]),
            models.Index(fields=["status", "-created_at"]),
            models.Index(fields=["script_name", "-created_at"]),
            models.Index(fields=["user", "mode", "-created_at"], name="run_jobs_of_user"),
            models.Index(fields=["mode", "status", "service"], name="run_jobs_by_status"),
            models.Index(fields=["finished_at"], name="run_finished_at"),
            # Covers the storage quota's sum: without it each run's check reads every row of the user's
            # runs, results included (SQLite stores stored_bytes after the large result column).
            models.Index(fields=["user", "stored_bytes"], name="run_storage_of_user"),
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

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


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
