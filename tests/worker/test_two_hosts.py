"""Two worker hosts and a web host: jobs spread over both, results and images readable from the web host.

Each worker "host" is a separate `celery worker` process (the command line `manage.py serve` runs),
with its own local data folder (OMLWEB_DATA_DIR: its environment builds in `<data>/envs`, its
supervisor state; its runner templates are its own processes). The hosts share with each other and
with the web host only what docs/deployment.md says must be shared: the PostgreSQL database, the Redis
broker and the media folder (OMLWEB_MEDIA_DIR: run images and dataset files). The web host is this
test process (Django's test client), on the same database and media folder.

It needs PostgreSQL and Redis (OMLWEB_TEST_POSTGRES_URL and OMLWEB_TEST_REDIS_URL, as .ci/run sets
them), and runs in bin/test's PostgreSQL pass (DATABASE_URL=$OMLWEB_TEST_POSTGRES_URL).
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse
from kombu import Queue

from omlweb.celery import app as celery_app
from scripts_app.models import Environment, Run
from scripts_app.services import environments
from tests.api.test_jobs import job_id_of
from tests.conftest import client_for
from tests.environments.conftest import make_wheel
from tests.factories import UserFactory, make_dataset, make_script
from tests.worker.conftest import Broker, Cluster, Worker, publish_on, wait_for, wait_status

POSTGRES_URL = os.environ.get("OMLWEB_TEST_POSTGRES_URL", "")
REDIS_URL = os.environ.get("OMLWEB_TEST_REDIS_URL", "")

pytestmark = [
    pytest.mark.worker,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not (POSTGRES_URL and REDIS_URL),
        reason="two hosts share PostgreSQL and Redis: set OMLWEB_TEST_POSTGRES_URL and OMLWEB_TEST_REDIS_URL "
        "(.ci/run sets them)",
    ),
]

FIGURE = """
import time
import matplotlib.pyplot as plt

def figure(seconds=0.3):
    time.sleep(seconds)
    plt.plot([1, 2, 3], [3, 1, 2], color="red")
    plt.title("drawn on a worker host")
    return {"drawn": True}
"""

PROBE = """
import time
import omlweb_probe

def probe(seconds=0.3):
    time.sleep(seconds)
    return omlweb_probe.ANSWER
"""

GRADE_COUNT = """
import pandas as pd

def grade_count(dat):
    return pd.DataFrame({"GENDER": [dat["GENDER"].iloc[0]], "N": [len(dat)]})
"""

HOST_NAMES = ("host-a", "host-b")
TIMEOUT = 180


@dataclass
class Host:
    worker: Worker
    data_dir: Path

    @property
    def node(self) -> str:
        return self.worker.name

    def environment_folders(self, name: str) -> list[str]:
        envs = self.data_dir / "envs"
        return sorted(p.name for p in envs.glob(f"{name}-*") if p.is_dir()) if envs.is_dir() else []


@pytest.fixture(scope="module")
def broker(tmp_path_factory) -> Broker:
    """Redis only (instead of the conftest's three brokers): hosts on several machines need a network broker."""
    return Broker("redis", REDIS_URL, tmp_path_factory.mktemp("two-hosts-broker"))


@pytest.fixture
def on_postgresql(transactional_db):
    if connection.vendor != "postgresql":
        pytest.skip(
            "two hosts share a PostgreSQL database: this runs in bin/test's PostgreSQL pass "
            "(DATABASE_URL=$OMLWEB_TEST_POSTGRES_URL), not on this run's SQLite"
        )


@pytest.fixture
def shared_media(tmp_path, settings) -> Path:
    """The one folder every host mounts (NFS in production); the web host (this process) reads it too."""
    folder = tmp_path / "shared-media"
    settings.MEDIA_ROOT = folder
    return folder


@pytest.fixture
def hosts(celery_on_broker, on_postgresql, shared_media, tmp_path, settings) -> list[Host]:
    """Two worker hosts on the LOW and builds queues, each with its own data folder; builds install offline."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels)
    # The default prefix: builds are routed to "<prefix>.builds" when settings are first read.
    cluster = Cluster(broker=celery_on_broker, prefix=settings.OMLWEB_QUEUE_PREFIX, folder=tmp_path)
    publish_on(cluster, settings)
    _purge(cluster.prefix)
    started = []
    try:
        for name in HOST_NAMES:
            data_dir = tmp_path / name
            worker = cluster.start(
                name,
                ["LOW", "BUILDS"],
                wait=False,
                OMLWEB_DATA_DIR=str(data_dir),
                OMLWEB_MEDIA_DIR=str(shared_media),
                # Environment builds stay local: the default <data dir>/envs, from a local wheelhouse.
                OMLWEB_ENV_FIND_LINKS=str(wheels),
                OMLWEB_ENV_NO_INDEX="true",
                OMLWEB_ENV_RUNNER_PACKAGES="",
                OMLWEB_RUNNER_PRELOAD="numpy,pandas,matplotlib.pyplot,pyarrow.parquet",
                # One user's jobs may run on both hosts at once.
                OMLWEB_USER_MAX_RUNNING_JOBS="8",
            )
            started.append(Host(worker=worker, data_dir=data_dir))
        for host in started:
            host.worker.wait_ready()
        yield started
    finally:
        cluster.stop_all()
        _purge(cluster.prefix)


def _purge(prefix: str) -> None:
    with celery_app.connection_for_write() as conn, conn.channel() as channel:
        for name in ("low", "builds"):
            Queue(f"{prefix}.{name}", channel=channel).delete()


def _submit(api, endpoint: str, name: str, body: dict) -> str:
    response = api.post(f"/oml/api/py-scripts/v2/{endpoint}/{name}", {"asyncFlag": True, **body}, format="json")
    assert response.status_code == 201, response.content
    return job_id_of(response)


def _finished(job_ids: list[str], hosts: list[Host]) -> list[Run]:
    runs = [wait_status(job_id, Run.FINISHED, timeout=TIMEOUT, on=_workers(hosts)) for job_id in job_ids]
    for run in runs:
        assert run.status == Run.Status.SUCCEEDED, (run.worker, run.error_message)
    return runs


def _on_both_hosts(submit, hosts: list[Host], *, batch: int = 4, rounds: int = 6) -> list[Run]:
    """Submit jobs in batches until each host has run at least one; the broker chooses, not the test."""
    runs: list[Run] = []
    for _ in range(rounds):
        runs += _finished([submit() for _ in range(batch)], hosts)
        if {run.worker for run in runs} == {host.node for host in hosts}:
            return runs
    raise AssertionError(f"{len(runs)} jobs all ran on {sorted({run.worker for run in runs})}")


def test_jobs_spread_over_two_worker_hosts_and_the_web_host_reads_their_results(hosts, shared_media):
    """Jobs run on both hosts; each host builds the environment locally; images, datasets and results
    go through the shared database and media folder, and the web host serves what host A or B wrote."""
    import pandas as pd

    admin = UserFactory(username="root", is_superuser=True, is_staff=True)
    alice = UserFactory(username="alice")
    api = client_for(alice)
    make_script(alice, "figure", FIGURE)
    make_script(alice, "probe", PROBE)
    make_script(alice, "grade_count", GRADE_COUNT)
    # Uploaded on the web host: the dataset's file is in the shared media folder, where workers read it.
    grade = pd.DataFrame({"GENDER": ["F", "M", "F", "M", "F"], "SCORE": [1, 2, 3, 4, 5]})
    make_dataset(alice, "GRADE", grade)

    # An environment is defined once, in the database, and built by whichever host takes the build.
    environment = environments.environment_create(by=admin, name="probe", packages="omlweb-probe")

    def built():
        env = Environment.objects.get(pk=environment.pk)
        return env if env.status != Environment.Status.BUILDING else None

    environment = wait_for(built, timeout=TIMEOUT, what="the environment build", on=_workers(hosts))
    assert environment.status == Environment.Status.READY, environment.build_log
    built_on = [host.node for host in hosts if host.environment_folders("probe")]
    assert len(built_on) == 1, built_on

    # Jobs in it run on both hosts: the host without it builds it into its own folder from the recorded lock.
    probes = _on_both_hosts(lambda: _submit(api, "do-eval", "probe", {"envName": "probe"}), hosts)
    for run in probes:
        assert run.result == 42
        assert run.env_lock_id == environment.lock_id
    folders = [host.environment_folders("probe") for host in hosts]
    assert folders[0] == folders[1]
    assert len(folders[0]) == 1

    # Figures: written by whichever host ran the job, into the shared folder, none into a host's own.
    figures = _on_both_hosts(lambda: _submit(api, "do-eval", "figure", {"graphicsFlag": True}), hosts)
    web = Client()
    web.force_login(alice)
    for host in hosts:
        assert not (host.data_dir / "media").exists()
        run = next(run for run in figures if run.worker == host.node)
        png = (shared_media / "runs" / str(run.pk) / "1.png").read_bytes()
        assert png.startswith(b"\x89PNG")
        # The web host answers the job's status and result from the database and the shared folder.
        assert api.get(f"/oml/api/py-scripts/v2/jobs/{run.pk}").status_code == 302
        result = api.get(f"/oml/api/py-scripts/v2/jobs/{run.pk}/result")
        assert result.status_code == 200
        [element] = result.json()["result"]
        assert (element["ID"], element["TITLE"], json.loads(element["DATA"])) == (
            1,
            "drawn on a worker host",
            {"drawn": True},
        )
        assert base64.b64decode(element["IMAGE"]) == png
        # And its pages show the image host A or B wrote.
        page = web.get(reverse("web:run_detail", args=[run.pk]))
        assert page.status_code == 200
        assert reverse("web:run_image", args=[run.pk, 1]) in page.content.decode()
        image = web.get(reverse("web:run_image", args=[run.pk, 1]))
        assert image["Content-Type"] == "image/png"
        assert b"".join(image.streaming_content) == png

    # An apply job reads the dataset the web host stored, on whichever host takes it.
    body = {"input": "select * from GRADE", "groupBy": "GENDER", "orderBy": "GENDER"}
    [apply_run] = _finished([_submit(api, "group-apply", "grade_count", body)], hosts)
    assert apply_run.worker in {host.node for host in hosts}
    result = api.get(f"/oml/api/py-scripts/v2/jobs/{apply_run.pk}/result")
    assert result.json() == {
        "result": {"F": {"GENDER": {"0": "F"}, "N": {"0": 3}}, "M": {"GENDER": {"0": "M"}, "N": {"0": 2}}}
    }
    ran = [run.worker for run in [*probes, *figures, apply_run]]
    print(f"\njobs per host: {', '.join(f'{host.node} {ran.count(host.node)}' for host in hosts)}")


def _workers(hosts: list[Host]):
    """What wait_for prints the logs of on a timeout."""
    return type("Workers", (), {"workers": [host.worker for host in hosts]})
