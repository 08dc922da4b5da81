"""Real Celery worker processes against this test run's database and a real broker.

Every test here runs on the embedded broker (filesystem, in a temporary folder), and again on Redis
and RabbitMQ when OMLWEB_TEST_REDIS_URL and OMLWEB_TEST_RABBITMQ_URL are set (.ci/run sets them). The
database is whatever this pytest run uses: SQLite by default, PostgreSQL when DATABASE_URL says so.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
from django.db import connection
from kombu import Queue
from kombu import pools as kombu_pools

from omlweb.celery import app as celery_app
from omlweb.env import broker_transport_options
from scripts_app.management.commands.serve import worker_command
from scripts_app.models import Run
from scripts_app.services import jobs

ROOT = Path(__file__).resolve().parents[2]
BROKER_URL_VARIABLES = {"redis": "OMLWEB_TEST_REDIS_URL", "rabbitmq": "OMLWEB_TEST_RABBITMQ_URL"}
# Fast clocks so the fault tests take seconds: heartbeats every 0.2 s, stale after 1.5 s.
HEARTBEAT_SECONDS = 0.2
STALE_SECONDS = 1.5
START_TIMEOUT = 60


@dataclass
class Broker:
    name: str
    url: str
    data_dir: Path

    @property
    def transport_options(self) -> dict:
        return broker_transport_options(self.url, self.data_dir)


@pytest.fixture(scope="module", params=["filesystem", "redis", "rabbitmq"])
def broker(request, tmp_path_factory) -> Broker:
    if request.param == "filesystem":
        url = "filesystem://"
    else:
        variable = BROKER_URL_VARIABLES[request.param]
        url = os.environ.get(variable, "")
        if not url:
            pytest.skip(f"{variable} is not set: the {request.param} broker is tested when it is (.ci/run sets it)")
    return Broker(request.param, url, tmp_path_factory.mktemp(f"data-{request.param}"))


@pytest.fixture(scope="module")
def celery_on_broker(broker):
    """Point this process's Celery app at the test broker, so what the API publishes reaches the workers."""
    conf = celery_app.conf
    saved = (conf.broker_url, conf.broker_transport_options)
    _reset_celery_connections()
    conf.broker_url, conf.broker_transport_options = broker.url, broker.transport_options
    yield broker
    _reset_celery_connections()
    conf.broker_url, conf.broker_transport_options = saved


def _reset_celery_connections() -> None:
    if celery_app._pool is not None:
        celery_app._pool.force_close_all()
        celery_app._pool = None
    celery_app.amqp._producer_pool = None
    # The app's pool is kombu's process-wide pool for that URL: closed above, it would be handed again
    # to the next test module on the same broker ("Acquire on closed pool") unless kombu forgets it.
    kombu_pools.reset()


def database_url() -> str:
    """The URL of the database this test run uses (pytest-django's test database), for the workers."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    if connection.vendor == "postgresql":
        user = quote(db["USER"] or "")
        password = f":{quote(db['PASSWORD'])}" if db["PASSWORD"] else ""
        return f"postgres://{user}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    raise AssertionError(f"no worker database URL for {connection.vendor}")


@dataclass
class Worker:
    """One `celery worker` process, in its own process group so kill -9 takes its pool children too."""

    name: str
    queues: list[str]
    process: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_ready(self) -> None:
        wait_for(
            lambda: " ready." in self.log_text(), timeout=START_TIMEOUT, what=f"worker {self.name} to start", on=self
        )

    def kill9(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        """Warm shutdown (SIGTERM): the worker finishes what it runs, then exits."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill9()
                raise AssertionError(
                    f"worker {self.name} did not stop on SIGTERM:\n{self.log_text()[-3000:]}"
                ) from None


@dataclass
class Cluster:
    """Workers sharing this run's database and the test broker, on queues of their own prefix."""

    broker: Broker
    prefix: str
    folder: Path
    workers: list[Worker] = field(default_factory=list)

    def start(self, name: str, levels: list[str], *, wait: bool = True, **env) -> Worker:
        queues = [f"{self.prefix}.{level.lower()}" for level in levels]
        log = self.folder / f"{name}-{len(self.workers)}.log"
        environment = {
            **os.environ,
            "OMLWEB_DATA_DIR": str(self.broker.data_dir),
            "DATABASE_URL": database_url(),
            "CELERY_BROKER_URL": self.broker.url,
            "OMLWEB_QUEUE_PREFIX": self.prefix,
            "OMLWEB_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
            "OMLWEB_HEARTBEAT_STALE_SECONDS": str(STALE_SECONDS),
            "OMLWEB_CANCEL_POLL_SECONDS": "0.1",
            # The scripts here import nothing: templates that preload nothing start fast.
            "OMLWEB_RUNNER_PRELOAD": "",
            "OMLWEB_LOG_LEVEL": "INFO",
            **env,
        }
        # The very command line `manage.py serve` runs, so tests run production's worker flags.
        command = worker_command(node=f"{name}@test", queues=queues)
        with log.open("w") as out:
            process = subprocess.Popen(
                command, cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        worker = Worker(name=f"{name}@test", queues=queues, process=process, log=log)
        self.workers.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    def stop_all(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.kill9()

    def delete_queues(self) -> None:
        if self.broker.name == "filesystem":
            return
        with celery_app.connection_for_write() as conn, conn.channel() as channel:
            for level in ("low", "medium", "high"):
                Queue(f"{self.prefix}.{level}", channel=channel).delete()


def _cluster(broker: Broker, folder: Path):
    cluster = Cluster(broker=broker, prefix=f"omlwebtest{uuid.uuid4().hex[:8]}", folder=folder)
    try:
        yield cluster
    finally:
        cluster.stop_all()
        cluster.delete_queues()


@pytest.fixture(scope="module")
def shared_cluster(celery_on_broker, django_db_setup, django_db_blocker, tmp_path_factory):
    """One worker serving all three levels, shared by the tests of a module that need just a worker."""
    with django_db_blocker.unblock():
        cluster_gen = _cluster(celery_on_broker, tmp_path_factory.mktemp("shared-cluster"))
        cluster = next(cluster_gen)
        cluster.start("all", ["LOW", "MEDIUM", "HIGH"])
    yield cluster
    with django_db_blocker.unblock():
        next(cluster_gen, None)


@pytest.fixture
def shared(shared_cluster, transactional_db, settings) -> Cluster:
    """The module's shared worker, for a test whose jobs must reach it."""
    return publish_on(shared_cluster, settings)


@pytest.fixture
def cluster(celery_on_broker, transactional_db, tmp_path, settings):
    """Workers of this test's own: started by the test, killed at its end."""
    for cluster in _cluster(celery_on_broker, tmp_path):
        yield publish_on(cluster, settings)


def publish_on(cluster: Cluster, settings) -> Cluster:
    """This process publishes on the cluster's queues and reaps on the workers' fast clock."""
    settings.OMLWEB_QUEUE_PREFIX = cluster.prefix
    settings.OMLWEB_HEARTBEAT_STALE_SECONDS = STALE_SECONDS
    settings.OMLWEB_REQUEUE_AFTER_SECONDS = 1
    return cluster


@pytest.fixture(autouse=True)
def media_in_tmp(settings, broker):
    """Images are written by the workers into their data dir; the API reads them from there too."""
    settings.MEDIA_ROOT = broker.data_dir / "media"


def wait_for(predicate, *, timeout: float, what: str, on=None):
    """Poll until predicate() is truthy; fail naming what was awaited, with the workers' logs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    logs = ""
    # Duck-typed: pytest and the test modules may import this conftest under two module names.
    for worker in getattr(on, "workers", None) or ([on] if on else []):
        logs += f"\n--- {worker.name} ---\n{worker.log_text()[-3000:]}"
    raise AssertionError(f"Timed out after {timeout:g} s waiting for {what}{logs}")


def wait_status(run_id, statuses, *, timeout: float, on=None) -> Run:
    statuses = {statuses} if isinstance(statuses, str) else set(statuses)

    def reached():
        run = Run.objects.filter(pk=run_id).first()
        return run if run is not None and run.status in statuses else None

    def describe() -> str:
        run = Run.objects.filter(pk=run_id).first()
        return f"run {run_id} to be {'/'.join(sorted(statuses))} (it is {run.status if run else 'gone'})"

    try:
        return wait_for(reached, timeout=timeout, what=f"run {run_id}", on=on)
    except AssertionError as error:
        raise AssertionError(str(error).replace(f"run {run_id}", describe(), 1)) from None


__all__ = ["Cluster", "jobs", "wait_for", "wait_status"]
