"""Environments: admins define them, a worker builds them, runs name them (docs/environments.md).

The database row is the definition and the truth of its state. Its first build, on a Celery worker,
resolves the packages and records the lock; every other host builds the same folder from the row's
spec and lock the first time a run needs it (`environment_python`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import logging
import re
import socket
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone
from packaging.requirements import InvalidRequirement, Requirement

from scripts_app.environments import builder, interpreters
from scripts_app.errors import BadRequest, Conflict, ErrorCode, NotFound
from scripts_app.models import Environment, EnvironmentLock, EnvironmentPreload, Run, environment_name_validator
from scripts_app.services import audit

logger = logging.getLogger("scripts_app.environments")

DEFAULT_ENVIRONMENT = "default"
DEFAULT_DESCRIPTION = "The service's own Python, with the packages omlweb itself runs on."
# How much of a build's log the row keeps: the end, where the error is.
MAX_LOG_CHARS = 200_000
LOG_FLUSH_SECONDS = 0.5
# How long a build may wait for a worker before a BUILDING environment counts as lost.
BUILD_QUEUE_MARGIN_SECONDS = 600
# A folder of an older generation is removed this long after a newer one was built: longer than
# the longest async run (43200 s), which may have started in it before the rebuild.
OLD_GENERATION_GRACE_SECONDS = 13 * 3600


# Reading


def environment_get(*, name: str) -> Environment:
    environment = Environment.objects.filter(name=name).first()
    if environment is None:
        raise NotFound(f"No environment named {name!r}.")
    return environment


def environment_for_run(env_name: str | None) -> Environment | None:
    """The environment a run asked for, None for the default one; a 400 when it cannot run there."""
    name = env_name or DEFAULT_ENVIRONMENT
    if name == DEFAULT_ENVIRONMENT:
        return None
    environment = Environment.objects.select_related("lock").filter(name=name).first()
    if environment is None:
        known = [DEFAULT_ENVIRONMENT, *Environment.objects.values_list("name", flat=True)]
        raise BadRequest(
            f"Unknown environment {name!r}. Environments: {', '.join(known)}.", code=ErrorCode.UNKNOWN_ENVIRONMENT
        )
    if environment.status == Environment.Status.BUILDING:
        if build_seems_lost(environment):
            raise BadRequest(
                f"Environment {name!r} has been building since {environment.build_started_at:%Y-%m-%d %H:%M} UTC, "
                "longer than a build may take: its worker probably stopped. An admin can rebuild it.",
                code=ErrorCode.ENVIRONMENT_NOT_READY,
            )
        raise BadRequest(
            f"Environment {name!r} is still being built; try again when it is READY.",
            code=ErrorCode.ENVIRONMENT_NOT_READY,
        )
    if environment.status == Environment.Status.FAILED:
        raise BadRequest(
            f"Environment {name!r} failed to build; an admin must fix and rebuild it. See its build log.",
            code=ErrorCode.ENVIRONMENT_NOT_READY,
        )
    return environment


def build_seems_lost(environment: Environment) -> bool:
    """BUILDING for longer than a build may take (plus a margin for the queue): its worker is gone."""
    if environment.status != Environment.Status.BUILDING or environment.build_started_at is None:
        return False
    limit = timedelta(seconds=settings.OMLWEB_ENV_BUILD_TIMEOUT + BUILD_QUEUE_MARGIN_SECONDS)
    return timezone.now() - environment.build_started_at > limit


def environment_names_ready() -> list[str]:
    """The names a run may give, the default first: what the UI's environment picker offers."""
    ready = Environment.objects.filter(status=Environment.Status.READY).values_list("name", flat=True)
    return [DEFAULT_ENVIRONMENT, *ready]


def environment_names() -> list[str]:
    """Every defined environment's name, built or not: what a script may choose as its own."""
    return list(Environment.objects.order_by("name").values_list("name", flat=True))


def environment_summaries() -> list[dict]:
    """Every environment in Oracle's `envs` shape, the default first."""
    rows = [default_summary()]
    for environment in Environment.objects.all():
        rows.append(
            {
                "name": environment.name,
                "description": environment.description,
                "size": builder.human_size(environment.size_bytes) if environment.size_bytes is not None else None,
                "number_of_installed_packages": environment.package_count,
                "tags": {
                    "application": "OML4PY",
                    "python": ".".join(environment.python_version.split(".")[:2]),
                    "status": environment.status,
                },
            }
        )
    return rows


_default_lock = threading.Lock()
_default_info: dict | None = None


def default_info() -> dict:
    """Size, packages and lock of the service's own environment (measured once per process)."""
    global _default_info
    with _default_lock:
        if _default_info is None:
            names = {}
            for distribution in importlib.metadata.distributions():
                name = distribution.metadata["Name"]
                if name:
                    names[name.lower()] = f"{name}=={distribution.version}"
            version = ".".join(str(part) for part in sys.version_info[:3])
            lock = f"# python {version}\n" + "".join(f"{line}\n" for line in sorted(names.values(), key=str.lower))
            _default_info = {
                "size_bytes": builder.folder_size(Path(sys.prefix)),
                "package_count": len(names),
                "python_version": version,
                "python": sys.executable,
                "lock": lock,
            }
        return _default_info


def default_summary() -> dict:
    info = default_info()
    return {
        "name": DEFAULT_ENVIRONMENT,
        "description": DEFAULT_DESCRIPTION,
        "size": builder.human_size(info["size_bytes"]),
        "number_of_installed_packages": info["package_count"],
        "tags": {
            "application": "OML4PY",
            "python": ".".join(info["python_version"].split(".")[:2]),
            "status": Environment.Status.READY,
        },
    }


def lock_record(text: str) -> EnvironmentLock:
    lock, _ = EnvironmentLock.objects.get_or_create(sha256=builder.lock_sha256(text), defaults={"text": text})
    return lock


def default_lock() -> EnvironmentLock:
    return lock_record(default_info()["lock"])


def default_lock_id() -> int:
    """`default_lock().pk`, read with one plain SELECT of its id (every run in the default environment
    records it); the row is made, as `default_lock` does, when it is not there yet."""
    sha256 = builder.lock_sha256(default_info()["lock"])
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {quote('id')} FROM {quote(EnvironmentLock._meta.db_table)} WHERE {quote('sha256')} = %s", [sha256]
        )
        row = cursor.fetchone()
    return row[0] if row is not None else default_lock().pk


def available_interpreters() -> list[interpreters.Interpreter]:
    return interpreters.discover(settings.OMLWEB_ENV_PYTHONS)


# Changing


def parse_packages(text: str) -> tuple[str, ...]:
    """The requirement lines of `text`; a 400 naming the first line that is not one.

    Options (`-r`, `-e`, `--index-url`, ...) are refused: where packages come from is the operator's
    setting, the same for every environment and host. So are lines that name their own source (a
    path, a URL, `git+...`, `name @ file:///...`): installing from an arbitrary URL or a file of the
    worker host is not an environment's business, unless OMLWEB_ENV_ALLOW_DIRECT_REFERENCES allows
    `name @ URL` lines.
    """
    lines = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        where = f"Package line {number} ({line!r})"
        if line.startswith("-"):
            raise BadRequest(f"{where}: options are not allowed, only requirements.")
        if _names_a_source(line):
            raise BadRequest(f"{where}: a path or URL is not allowed, only requirements like name==version.")
        try:
            requirement = Requirement(line)
        except InvalidRequirement as error:
            raise BadRequest(f"{where} is not a requirement: {error}") from None
        if requirement.url and not settings.OMLWEB_ENV_ALLOW_DIRECT_REFERENCES:
            raise BadRequest(
                f"{where}: a direct reference (name @ URL) is not allowed; packages come from the "
                "service's package index (the operator may allow them with OMLWEB_ENV_ALLOW_DIRECT_REFERENCES)."
            )
        lines.append(line)
    return tuple(lines)


def _names_a_source(line: str) -> bool:
    """A bare path or URL, which pip would install from but which is no requirement."""
    return bool(re.match(r"^([a-z][a-z0-9+.\-]*://|[a-z]+\+|\.{0,2}/|~|[a-z]:\\)", line, re.IGNORECASE))


def _check_name(name: str) -> None:
    try:
        environment_name_validator(name)
    except ValidationError as error:
        raise BadRequest(error.messages[0]) from None
    if name.lower() == DEFAULT_ENVIRONMENT:
        raise Conflict(f"{DEFAULT_ENVIRONMENT!r} is the service's own environment; choose another name.")


def _check_python(python: str) -> interpreters.Interpreter:
    found = [i for i in available_interpreters() if i.path == python]
    if not found:
        offered = ", ".join(i.path for i in available_interpreters())
        raise BadRequest(f"Python {python!r} is not one of this host's interpreters: {offered}.")
    return found[0]


def environment_create(
    *, by, name: str, packages: str = "", description: str = "", python: str | None = None
) -> Environment:
    """Define an environment and queue its build."""
    _check_name(name)
    parse_packages(packages)
    interpreter = _check_python(python or interpreters.service_python())
    with transaction.atomic():
        if Environment.objects.filter(name__iexact=name).exists():
            raise Conflict(f"An environment named {name!r} exists.")
        environment = Environment.objects.create(
            name=name,
            description=description,
            packages=packages,
            python=interpreter.path,
            python_version=interpreter.version,
            created_by=by,
            build_started_at=timezone.now(),
        )
        audit.record("environment.define", obj=environment, actor=by, after=audit.environment_state(environment))
        _queue_build(environment)
    return environment


def environment_update(
    *, environment: Environment, description: str | None = None, packages: str | None = None, python: str | None = None
) -> Environment:
    """Change an environment; a changed package list or interpreter rebuilds it."""
    before = audit.environment_state(environment)
    rebuild = False
    if packages is not None and packages != environment.packages:
        parse_packages(packages)
        environment.packages = packages
        rebuild = True
    if python is not None and python != environment.python:
        interpreter = _check_python(python)
        environment.python = interpreter.path
        environment.python_version = interpreter.version
        rebuild = True
    if description is not None:
        environment.description = description
    with transaction.atomic():
        environment.save()
        if rebuild:
            _rebuild(environment)
        after = audit.environment_state(environment)
        if after != before:
            audit.record("environment.update", obj=environment, before=before, after=after)
    return environment


def environment_rebuild(*, environment: Environment) -> Environment:
    """Build the environment afresh (a new resolve, a new folder); runs already in the old one go on there."""
    before = audit.environment_state(environment)
    with transaction.atomic():
        _rebuild(environment)
        audit.record("environment.rebuild", obj=environment, before=before, after=audit.environment_state(environment))
    return environment


def _rebuild(environment: Environment) -> None:
    with transaction.atomic():
        Environment.objects.filter(pk=environment.pk).update(
            generation=F("generation") + 1,
            status=Environment.Status.BUILDING,
            build_log="",
            build_started_at=timezone.now(),
            build_finished_at=None,
        )
        environment.refresh_from_db()
        _queue_build(environment)


def environment_delete(*, environment: Environment) -> None:
    with transaction.atomic():
        in_use = Run.objects.filter(environment=environment, status__in=(Run.Status.QUEUED, Run.Status.RUNNING))
        count = in_use.count()
        if count:
            raise Conflict(
                f"Environment {environment.name!r} is in use by {count} queued or running run(s); "
                "delete it when they have finished."
            )
        name = environment.name
        audit.record("environment.delete", obj=environment, before=audit.environment_state(environment))
        environment.delete()
    builder.remove_other_generations(settings.OMLWEB_ENVS_DIR, name, None, grace=None)


def environment_folders_sweep() -> list[Path]:
    """Delete this host's environment folders that no run will use again; the paths deleted.

    Only the host that takes a build (older generations) or a delete request (every generation) removes
    folders then; every other host, each with its own OMLWEB_ENVS_DIR, learns of it here, from the
    reaper loop of its own `serve`. A deleted environment's folders go at once (the delete was refused
    while runs were queued or running in it); an older generation's once it has been superseded for
    OLD_GENERATION_GRACE_SECONDS, as on the builder host. An environment being built is left alone.
    """
    root = Path(settings.OMLWEB_ENVS_DIR)
    if not root.is_dir():
        return []
    names = {path.name.rpartition("-")[0] for path in root.iterdir() if path.is_dir()} - {""}
    defined = {environment.name: environment for environment in Environment.objects.filter(name__in=names)}
    removed: list[Path] = []
    for name in sorted(names):
        environment = defined.get(name)
        if environment is None:
            removed += builder.remove_other_generations(root, name, None, grace=None)
        elif environment.status == Environment.Status.READY:
            keep = build_spec(environment).folder_name
            removed += builder.remove_other_generations(root, name, keep, grace=OLD_GENERATION_GRACE_SECONDS)
    return removed


def _queue_build(environment: Environment) -> None:
    environment_id, generation = str(environment.pk), environment.generation
    transaction.on_commit(lambda: _publish_build(environment_id, generation))


def _publish_build(environment_id: str, generation: int) -> bool:
    from scripts_app.environments.tasks import build_environment

    try:
        # CELERY_TASK_ROUTES sends it to the builds queue, which every worker serves.
        build_environment.delay(environment_id, generation)
    except Exception as error:
        # The broker is down: the environment stays BUILDING with an empty log, and the reaper
        # publishes the build again once the broker answers (environment_republish_lost_builds).
        logger.warning("The broker did not take the build of environment %s: %r", environment_id, error)
        return False
    return True


def environment_republish_lost_builds(*, now=None) -> list[str]:
    """Publish again the builds no worker started (their log is empty) after OMLWEB_REQUEUE_AFTER_SECONDS,
    when the builds queue is empty: their message was lost (the broker was down, or lost it)."""
    from scripts_app.services.jobs.broker import broker_queue_length

    now = now or timezone.now()
    waiting = Environment.objects.filter(
        status=Environment.Status.BUILDING,
        build_log="",
        build_started_at__lt=now - timedelta(seconds=settings.OMLWEB_REQUEUE_AFTER_SECONDS),
    )
    if not waiting.exists() or broker_queue_length(settings.OMLWEB_BUILD_QUEUE) != 0:
        return []
    return [env.name for env in waiting if _publish_build(str(env.pk), env.generation)]


# Building


def runner_requirements() -> tuple[str, ...]:
    """What the runner needs in every environment, pinned to the versions the service runs."""
    pinned = []
    for name in settings.OMLWEB_ENV_RUNNER_PACKAGES:
        version = _installed_version(name)
        pinned.append(name if version is None else f"{name}=={version}")
    return tuple(pinned)


@functools.cache
def _installed_version(name: str) -> str | None:
    """The version of a package installed for this process, read once per process: the heartbeat asks
    for every environment at every beat, and each read scans the site-packages folders (about 8 ms of CPU
    for the four runner packages). What a running process imported does not change when the venv does; a
    new version is pinned by the processes started after it is installed, as it is imported by them."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def build_spec(environment: Environment) -> builder.Spec:
    return builder.Spec(
        name=environment.name,
        python=environment.python,
        packages=parse_packages(environment.packages),
        runner_packages=runner_requirements(),
        generation=environment.generation,
        lock=environment.lock.text if environment.lock is not None else "",
    )


def build_options() -> builder.Options:
    return builder.Options(
        tool=settings.OMLWEB_ENV_BUILDER,
        find_links=tuple(settings.OMLWEB_ENV_FIND_LINKS),
        no_index=settings.OMLWEB_ENV_NO_INDEX,
        timeout=settings.OMLWEB_ENV_BUILD_TIMEOUT,
        source_builds=settings.OMLWEB_ENV_SOURCE_BUILDS,
    )


class _LogWriter:
    """Collects a build's log and writes it to the row twice a second, so its page can follow it."""

    def __init__(self, environment: Environment) -> None:
        self.rows = Environment.objects.filter(pk=environment.pk, generation=environment.generation)
        self.text = ""
        self.flushed_at = 0.0

    def __call__(self, line: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.text += f"[{stamp}] {line[:2000]}\n"
        if len(self.text) > MAX_LOG_CHARS:
            self.text = "[... the start of the log is cut ...]\n" + self.text[-MAX_LOG_CHARS:]
        # A command line is written at once: the step it starts may print nothing for a while.
        if line.startswith("$ ") or time.monotonic() - self.flushed_at >= LOG_FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        self.rows.update(build_log=self.text)
        self.flushed_at = time.monotonic()


def environment_build(*, environment_id: str, generation: int) -> Environment | None:
    """Build one generation of an environment (the Celery task's body). A stale request does nothing."""
    environment = Environment.objects.filter(pk=environment_id).first()
    if environment is None or environment.generation != generation:
        return None
    if environment.status != Environment.Status.BUILDING:
        return environment
    # A fresh resolve: the lock is recorded from what this build installed.
    spec = dataclasses.replace(build_spec(environment), lock="")
    log = _LogWriter(environment)
    try:
        result = builder.ensure(settings.OMLWEB_ENVS_DIR, spec, build_options(), log)
    except Exception as error:  # noqa: BLE001 - any failure ends the build FAILED, with its reason
        log(f"Build failed: {error}")
        log.flush()
        with transaction.atomic():
            if Environment.objects.filter(pk=environment.pk, generation=generation).update(
                status=Environment.Status.FAILED, build_finished_at=timezone.now()
            ):
                _record_build(environment, Environment.Status.FAILED, str(error)[:2000])
        logger.warning("environment %s generation %s failed to build: %s", environment.name, generation, error)
        environment.refresh_from_db()
        return environment
    if not result.built_now:
        log(f"Already built on this host in {result.path}")
    log.flush()
    lock = lock_record(result.lock)
    with transaction.atomic():
        if Environment.objects.filter(pk=environment.pk, generation=generation).update(
            status=Environment.Status.READY,
            spec_hash=spec.hash,
            lock=lock,
            python_version=result.python_version,
            size_bytes=result.size_bytes,
            package_count=result.package_count,
            build_finished_at=timezone.now(),
        ):
            _record_build(environment, Environment.Status.READY, f"{result.package_count} packages, lock {lock}")
    builder.remove_other_generations(
        settings.OMLWEB_ENVS_DIR, environment.name, spec.folder_name, grace=OLD_GENERATION_GRACE_SECONDS
    )
    environment.refresh_from_db()
    return environment


def _record_build(environment: Environment, status: str, outcome: str) -> None:
    """A build's end, by the worker host that built it (no user: the actor is the system)."""
    audit.record(
        "environment.build",
        obj=environment,
        actor=None,
        after={
            "status": status,
            "generation": environment.generation,
            "host": socket.gethostname(),
            "outcome": outcome,
        },
    )


def python_for_run(run: Run) -> str | None:
    """The interpreter `run` uses on this host (None: the service's own); records the lock it runs with.

    Raises an OmlError when the run's environment was deleted or cannot be built on this host.
    """
    environment = run.environment
    if environment is None and run.env_name != DEFAULT_ENVIRONMENT:
        raise BadRequest(
            f"Environment {run.env_name!r} was deleted before the run started.", code=ErrorCode.UNKNOWN_ENVIRONMENT
        )
    python = environment_python(environment)
    if environment is not None and environment.lock_id != run.env_lock_id:
        # Rebuilt since the run was queued: record the lock it really runs with.
        run.env_lock_id = environment.lock_id
        run.save(update_fields=["env_lock"])
    return python


def environment_python(environment: Environment | None) -> str | None:
    """The interpreter a run in `environment` uses on this host, built here first if this host lacks it."""
    if environment is None:
        return None
    spec = build_spec(environment)

    def log(line: str) -> None:
        logger.info("building %s on this host: %s", environment.name, line)

    try:
        return builder.ensure(settings.OMLWEB_ENVS_DIR, spec, build_options(), log).python
    except builder.BuildError as error:
        raise BadRequest(
            f"Environment {environment.name!r} could not be built on this host: {error}",
            code=ErrorCode.ENVIRONMENT_NOT_READY,
        ) from None


# Preloads: Oracle's v2 /preload/conda, mapped onto omlweb's environments (docs/environments.md)


def preload_create(*, user, name: str, overwrite: bool = False) -> EnvironmentPreload:
    """Record that `user` preloaded environment `name` (any case), for OMLWEB_PRELOAD_MINUTES.

    Oracle copies a conda environment from Object Storage into the user's compute container. Here
    every environment is built on every worker host ahead of use, so a preload checks that the
    environment can run now and keeps Oracle's bookkeeping: a second preload is a 400 unless
    `overwrite`, which starts its time again.
    """
    if (name or "").lower() == DEFAULT_ENVIRONMENT:
        raise BadRequest("The default environment is always loaded: there is nothing to preload.")
    environment = Environment.objects.filter(name__iexact=name).first()
    if environment is None:
        raise BadRequest(f"No environment named {name!r} to preload.", code=ErrorCode.UNKNOWN_ENVIRONMENT)
    environment_for_run(environment.name)  # a 400 when it is building or failed
    now = timezone.now()
    EnvironmentPreload.objects.filter(user=user, expires_at__lte=now).delete()
    expires = now + timedelta(minutes=settings.OMLWEB_PRELOAD_MINUTES)
    with transaction.atomic():
        existing = EnvironmentPreload.objects.select_for_update().filter(user=user, environment=environment).first()
        if existing is not None and not overwrite:
            raise BadRequest(
                f"Environment {environment.name!r} is already preloaded; send overwrite=true to preload it again."
            )
        preload, _ = EnvironmentPreload.objects.update_or_create(
            user=user, environment=environment, defaults={"created_at": now, "expires_at": expires}
        )
    return preload


def preloads_of(*, user) -> list[EnvironmentPreload]:
    """The user's preloads that have not expired, oldest first."""
    now = timezone.now()
    EnvironmentPreload.objects.filter(user=user, expires_at__lte=now).delete()
    return list(EnvironmentPreload.objects.filter(user=user).select_related("environment").order_by("created_at"))


def preload_delete(*, user, name: str) -> None:
    deleted, _ = EnvironmentPreload.objects.filter(
        user=user, environment__name__iexact=name, expires_at__gt=timezone.now()
    ).delete()
    if not deleted:
        # Oracle answers 400, not 404, for a preload that is not there.
        raise BadRequest(f"Preloaded environment not found with name {name!r}.")
