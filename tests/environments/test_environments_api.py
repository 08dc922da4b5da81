"""Environments through the REST API: admins build them, runs name them, and runs record them."""

from __future__ import annotations

import pytest

from scripts_app.models import Environment, Run
from scripts_app.services import environments
from tests.factories import make_script

ENVS = "/oml/api/py-scripts/v1/envs"
PROBE = "import omlweb_probe\ndef probe():\n    return omlweb_probe.ANSWER\n"


def do_eval(api, name, body):
    return api.post(f"/oml/api/py-scripts/v1/do-eval/{name}", body, format="json")


@pytest.fixture
def create(admin_api, django_capture_on_commit_callbacks):
    def _create(**body):
        with django_capture_on_commit_callbacks(execute=True):
            return admin_api.post(ENVS, body, format="json")

    return _create


def test_an_admin_builds_an_environment_and_a_script_runs_in_it(
    create, build_queued, queued_builds, admin_api, alice, alice_api, settings
):
    """The build installs the package; a run with envName imports it, the default environment cannot."""
    response = create(name="probe", description="The test's package", packages="omlweb-probe==1.0")
    assert response.status_code == 201
    assert response.json()["result"]["status"] == "BUILDING"
    assert response["Location"].endswith("/oml/api/py-scripts/v1/envs/probe")
    environment = Environment.objects.get(name="probe")
    assert queued_builds == [(str(environment.pk), 1)]

    build_queued()

    environment.refresh_from_db()
    assert environment.status == Environment.Status.READY, environment.build_log
    assert "omlweb-probe==1.0" in environment.lock.text
    assert environment.package_count == 1
    assert environment.size_bytes > 0
    assert "Built probe" in environment.build_log
    make_script(alice, "probe", PROBE)
    response = do_eval(alice_api, "probe", {"envName": "probe"})
    assert response.status_code == 200, response.json()
    assert response.json() == {"result": 42}
    run = Run.objects.get()
    assert (run.env_name, run.environment, run.env_lock) == ("probe", environment, environment.lock)

    default = do_eval(alice_api, "probe", {})
    assert default.status_code == 400
    assert default.json()["errorCode"] == 1030
    assert "No module named 'omlweb_probe'" in default.json()["errorMessage"]
    default_run = Run.objects.filter(env_name="default").get()
    assert "Django==" in default_run.env_lock.text


def test_the_list_has_oracles_shape_with_the_default_first(create, build_queued, alice_api):
    """GET envs answers {"result": {"envs": [{name, description, size, number_of_installed_packages, tags}]}}."""
    create(name="probe", packages="omlweb-probe")
    build_queued()
    for version in ("v1", "v2"):
        envs = alice_api.get(f"/oml/api/py-scripts/{version}/envs").json()["result"]["envs"]
        assert [env["name"] for env in envs] == ["default", "probe"]
        for env in envs:
            assert set(env) == {"name", "description", "size", "number_of_installed_packages", "tags"}
            assert env["tags"]["application"] == "OML4PY"
            assert env["tags"]["status"] == "READY"
        assert envs[1]["number_of_installed_packages"] == 1
        assert envs[1]["size"].endswith("KiB") or envs[1]["size"].endswith("MiB")


def test_a_failing_build_ends_failed_with_its_log(create, build_queued, alice, alice_api, admin_api, settings):
    """A package that cannot be installed ends the build FAILED; the log says why; runs there are refused."""
    create(name="broken", packages="omlweb-nowhere==9.9")
    build_queued()

    environment = Environment.objects.get(name="broken")
    assert environment.status == Environment.Status.FAILED
    assert "omlweb-nowhere" in environment.build_log
    assert "Build failed" in environment.build_log
    assert admin_api.get(f"{ENVS}/broken").json()["result"]["buildLog"] == environment.build_log
    assert not list(settings.OMLWEB_ENVS_DIR.glob("broken-*"))
    make_script(alice, "f", "def f():\n    return 1\n")
    response = do_eval(alice_api, "f", {"envName": "broken"})
    assert response.status_code == 400
    assert response.json()["errorCode"] == 1006
    assert "failed to build" in response.json()["errorMessage"]
    assert not Run.objects.exists()


def test_a_building_environment_refuses_runs(create, alice, alice_api):
    """Until its build ends, a run naming the environment is a 400 (1006) that says so."""
    create(name="later", packages="omlweb-probe")
    make_script(alice, "f", "def f():\n    return 1\n")
    response = do_eval(alice_api, "f", {"envName": "later"})
    assert response.status_code == 400
    assert response.json()["errorCode"] == 1006
    assert "still being built" in response.json()["errorMessage"]


def test_deleting_an_environment_in_use_is_refused(create, build_queued, alice, admin_api, settings):
    """A queued or running run keeps its environment; once it has finished, delete removes row and folder."""
    create(name="probe", packages="omlweb-probe")
    build_queued()
    environment = Environment.objects.get(name="probe")
    script = make_script(alice, "f", "def f():\n    return 1\n")
    run = Run.objects.create(
        script_version=script.current_version,
        script_name="f",
        script_owner="alice",
        user=alice,
        env_name="probe",
        environment=environment,
        status=Run.Status.RUNNING,
    )

    response = admin_api.delete(f"{ENVS}/probe")

    assert response.status_code == 409
    assert response.json()["errorCode"] == 1007
    assert "in use" in response.json()["errorMessage"]
    assert Environment.objects.filter(name="probe").exists()
    Run.objects.filter(pk=run.pk).update(status=Run.Status.SUCCEEDED)
    assert admin_api.delete(f"{ENVS}/probe").status_code == 200
    assert not Environment.objects.filter(name="probe").exists()
    assert not list(settings.OMLWEB_ENVS_DIR.glob("probe-*"))
    run.refresh_from_db()
    assert (run.env_name, run.environment) == ("probe", None)


def test_only_admins_manage_environments(alice_api, create, build_queued):
    """Users list environments; creating, rebuilding and deleting them is for admins (403, 1013)."""
    create(name="probe", packages="omlweb-probe")
    assert alice_api.post(ENVS, {"name": "mine"}, format="json").json()["errorCode"] == 1013
    assert alice_api.post(f"{ENVS}/probe/rebuild").status_code == 403
    assert alice_api.delete(f"{ENVS}/probe").status_code == 403
    assert alice_api.get(ENVS).status_code == 200
    assert "buildLog" not in alice_api.get(f"{ENVS}/probe").json()["result"]


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        ({"name": "default"}, 1007, "service's own"),
        ({"name": "../etc"}, 1000, "letters, digits"),
        ({"name": "ok", "packages": "--index-url http://x"}, 1000, "options are not allowed"),
        ({"name": "ok", "packages": "seaborn\nnot a requirement!"}, 1000, "line 2"),
        ({"name": "ok", "python": "/bin/sh"}, 1000, "not one of this host's interpreters"),
        ({"name": "ok", "packages": 7}, 1000, "packages"),
    ],
)
def test_bad_definitions_are_refused(create, body, code, words):
    """A bad name, package line or interpreter is refused before anything is built."""
    response = create(**body)
    assert response.json()["errorCode"] == code
    assert words in response.json()["errorMessage"]
    assert not Environment.objects.exists()


def test_a_name_is_taken_once(create):
    """A second environment of the same name is a 409."""
    create(name="probe", packages="omlweb-probe")
    response = create(name="Probe")
    assert response.status_code == 409
    assert response.json()["errorCode"] == 1007


def test_a_rebuild_is_a_new_generation_in_a_new_folder(
    create, build_queued, admin_api, django_capture_on_commit_callbacks, settings
):
    """Rebuild resolves afresh into its own folder; a stale build request for the old generation does nothing."""
    create(name="probe", packages="omlweb-probe")
    build_queued()
    first = Environment.objects.get(name="probe")
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_api.post(f"{ENVS}/probe/rebuild")
    assert response.status_code == 202
    assert response.json()["result"]["status"] == "BUILDING"
    build_queued()
    second = Environment.objects.get(name="probe")
    assert (second.generation, second.status) == (2, Environment.Status.READY)
    assert second.spec_hash != first.spec_hash
    assert len(list(settings.OMLWEB_ENVS_DIR.glob("probe-*"))) == 2
    assert environments.environment_build(environment_id=str(second.pk), generation=1) is None


def test_another_host_builds_the_environment_from_its_lock_on_first_use(
    create, build_queued, alice, alice_api, settings, tmp_path
):
    """A worker host without the environment's folder builds it from the spec and lock when a run needs it."""
    create(name="probe", packages="omlweb-probe")
    build_queued()
    environment = Environment.objects.get(name="probe")
    settings.OMLWEB_ENVS_DIR = tmp_path / "another-host"
    make_script(alice, "probe", PROBE)

    response = do_eval(alice_api, "probe", {"envName": "probe"})

    assert response.json() == {"result": 42}
    folder = settings.OMLWEB_ENVS_DIR / f"probe-{environment.spec_hash[:16]}"
    assert (folder / "omlweb-lock.txt").read_text() == environment.lock.text


def test_without_uv_venv_and_pip_build_the_same_environment(create, build_queued, alice, alice_api, settings):
    """The fallback builder (venv, then the service's pip) gives a working environment and its lock too."""
    settings.OMLWEB_ENV_BUILDER = "pip"
    create(name="probe", packages="omlweb-probe")
    build_queued()
    environment = Environment.objects.get(name="probe")
    assert environment.status == Environment.Status.READY, environment.build_log
    assert "with pip" in environment.build_log
    assert "omlweb-probe==1.0" in environment.lock.text
    make_script(alice, "probe", PROBE)
    assert do_eval(alice_api, "probe", {"envName": "probe"}).json() == {"result": 42}


def test_an_async_job_runs_in_its_environment(create, build_queued, alice, alice_api, monkeypatch):
    """asyncFlag with envName: the worker runs the job with the environment's interpreter and records its lock."""
    from scripts_app.services.jobs import submission, worker
    from tests.api.test_jobs import InlineWatch

    create(name="probe", packages="omlweb-probe")
    build_queued()
    make_script(alice, "probe", PROBE)
    monkeypatch.setattr(worker, "RunWatch", InlineWatch)
    monkeypatch.setattr(submission, "job_enqueue", lambda *, run: None)

    response = alice_api.post(
        "/oml/api/py-scripts/v1/do-eval/probe", {"envName": "probe", "asyncFlag": True}, format="json"
    )
    assert response.status_code == 201
    run = Run.objects.get()
    worker.job_execute(run_id=str(run.pk), worker="inline@test")

    run.refresh_from_db()
    assert (run.status, run.result) == (Run.Status.SUCCEEDED, 42)
    assert run.env_lock == Environment.objects.get().lock


def test_old_generations_are_removed_only_long_after_they_were_superseded(tmp_path):
    """A superseded folder survives the next build (runs may still use it) and goes after the grace period."""
    import os

    from scripts_app.environments import builder

    old, current, other = (tmp_path / name for name in ("probe-aaaa", "probe-bbbb", "probe2-cccc"))
    for folder in (old, current, other):
        folder.mkdir()
    assert builder.remove_other_generations(tmp_path, "probe", "probe-bbbb", grace=3600) == []
    assert (old / builder.SUPERSEDED).exists()
    past = (old / builder.SUPERSEDED).stat().st_mtime - 7200
    os.utime(old / builder.SUPERSEDED, (past, past))
    assert builder.remove_other_generations(tmp_path, "probe", "probe-bbbb", grace=3600) == [old]
    assert current.exists()
    assert other.exists()


def test_an_apply_run_runs_in_its_environment(create, build_queued, alice, alice_api):
    """index-apply with envName calls the function in the environment, for every index."""
    create(name="probe", packages="omlweb-probe")
    build_queued()
    make_script(alice, "probe_times", "import omlweb_probe\ndef probe_times(i):\n    return omlweb_probe.ANSWER * i\n")

    response = alice_api.post(
        "/oml/api/py-scripts/v1/index-apply/probe_times", {"times": 3, "envName": "probe"}, format="json"
    )

    assert response.status_code == 200, response.json()
    assert response.json() == {"result": [42, 84, 126]}
    assert Run.objects.get().env_lock == Environment.objects.get().lock


def test_packages_without_a_wheel_are_not_built_from_source(create, build_queued, wheelhouse):
    """An sdist's setup code would run in the worker with its rights: by default the build refuses it."""
    import io
    import tarfile

    files = {
        "omlweb_sdist-1.0/pyproject.toml": '[project]\nname = "omlweb-sdist"\nversion = "1.0"\n',
        "omlweb_sdist-1.0/PKG-INFO": "Metadata-Version: 2.1\nName: omlweb-sdist\nVersion: 1.0\n",
        "omlweb_sdist-1.0/omlweb_sdist.py": "X = 1\n",
    }
    with tarfile.open(wheelhouse / "omlweb_sdist-1.0.tar.gz", "w:gz") as archive:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text)
            archive.addfile(info, io.BytesIO(text.encode()))

    create(name="sdist", packages="omlweb-sdist")
    build_queued()

    environment = Environment.objects.get()
    assert environment.status == Environment.Status.FAILED
    assert "--only-binary=:all:" in environment.build_log
    assert "omlweb-sdist" in environment.build_log.split("--only-binary=:all:")[-1]


def test_a_build_whose_worker_vanished_says_so(create, alice, alice_api):
    """BUILDING far longer than a build may take: runs are told the worker probably stopped and to rebuild."""
    from datetime import timedelta

    from django.utils import timezone

    create(name="stuck", packages="omlweb-probe")
    Environment.objects.update(build_started_at=timezone.now() - timedelta(hours=2))
    make_script(alice, "f", "def f():\n    return 1\n")

    response = do_eval(alice_api, "f", {"envName": "stuck"})

    assert response.json()["errorCode"] == 1006
    assert "worker probably stopped" in response.json()["errorMessage"]


def test_prepare_environments_builds_what_this_host_lacks(create, build_queued, settings, tmp_path):
    """`manage.py prepare_environments` on a new host builds every READY environment from its lock."""
    from io import StringIO

    from django.core.management import call_command

    create(name="probe", packages="omlweb-probe")
    build_queued()
    environment = Environment.objects.get()
    settings.OMLWEB_ENVS_DIR = tmp_path / "new-host"
    out = StringIO()

    call_command("prepare_environments", stdout=out)

    folder = settings.OMLWEB_ENVS_DIR / f"probe-{environment.spec_hash[:16]}"
    assert f"probe: {folder}/bin/python" in out.getvalue()
    assert (folder / "omlweb-lock.txt").read_text() == environment.lock.text


def test_other_hosts_clear_their_folders_of_deleted_and_rebuilt_environments(
    create, build_queued, alice, alice_api, admin_api, django_capture_on_commit_callbacks, settings, tmp_path
):
    """Only the host that takes a rebuild or a delete removes folders then; another host's reaper sweep removes
    its own copy of a deleted environment at once, and of an older generation after the grace period."""
    import os

    from scripts_app.environments import builder

    builder_host, other_host = settings.OMLWEB_ENVS_DIR, tmp_path / "other-host"
    create(name="probe", packages="omlweb-probe")
    create(name="gone", packages="omlweb-probe")
    build_queued()
    make_script(alice, "probe", PROBE)
    # The other host runs in both, so it builds both into its own folder.
    settings.OMLWEB_ENVS_DIR = other_host
    assert do_eval(alice_api, "probe", {"envName": "probe"}).json() == {"result": 42}
    assert do_eval(alice_api, "probe", {"envName": "gone"}).json() == {"result": 42}
    first = {path.name for path in other_host.glob("*-*")}
    assert len(first) == 2

    # The rebuild and the delete are handled on the builder host (web request, build task).
    settings.OMLWEB_ENVS_DIR = builder_host
    with django_capture_on_commit_callbacks(execute=True):
        assert admin_api.post(f"{ENVS}/probe/rebuild").status_code == 202
    build_queued()
    assert admin_api.delete(f"{ENVS}/gone").status_code == 200
    assert not list(builder_host.glob("gone-*"))

    settings.OMLWEB_ENVS_DIR = other_host
    assert {path.name for path in other_host.glob("*-*")} == first  # nothing told this host
    # A sweep while the environment is READY again: the deleted one goes, the old generation is marked.
    [gone] = environments.environment_folders_sweep()
    assert gone.name.startswith("gone-")
    [old] = other_host.glob("probe-*")
    assert (old / builder.SUPERSEDED).exists()
    # The new generation is built here on its next run; the old one goes once superseded long enough.
    assert do_eval(alice_api, "probe", {"envName": "probe"}).json() == {"result": 42}
    assert environments.environment_folders_sweep() == []
    past = (old / builder.SUPERSEDED).stat().st_mtime - environments.OLD_GENERATION_GRACE_SECONDS - 60
    os.utime(old / builder.SUPERSEDED, (past, past))
    assert environments.environment_folders_sweep() == [old]
    [current] = other_host.glob("probe-*")
    assert current.name == f"probe-{Environment.objects.get(name='probe').spec_hash[:16]}"
