"""manage.py bootstrap: roles, the first admin, the demo scripts; safe to run again."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command

from scripts_app.models import Script


def bootstrap() -> str:
    out = StringIO()
    call_command("bootstrap", stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_creates_admin_from_environment(monkeypatch):
    """The admin's credentials come from DJANGO_SUPERUSER_USERNAME and DJANGO_SUPERUSER_PASSWORD."""
    monkeypatch.setenv("DJANGO_SUPERUSER_USERNAME", "boss")
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "s3cret-enough")
    output = bootstrap()
    admin = get_user_model().objects.get(username="boss")
    assert admin.is_superuser
    assert admin.check_password("s3cret-enough")
    assert "s3cret-enough" not in output
    assert set(Group.objects.values_list("name", flat=True)) == {"admins", "auditors", "analysts"}


@pytest.mark.django_db
def test_generated_password_is_printed_once(monkeypatch):
    """Without a password one is generated and printed, once; a second run changes nothing."""
    monkeypatch.delenv("DJANGO_SUPERUSER_USERNAME", raising=False)
    monkeypatch.delenv("DJANGO_SUPERUSER_PASSWORD", raising=False)
    output = bootstrap()
    password = output.split("with password '")[1].split("'")[0]
    assert get_user_model().objects.get(username="admin").check_password(password)
    again = bootstrap()
    assert "password" not in again
    assert get_user_model().objects.count() == 1


@pytest.mark.django_db
def test_loads_random_red_dots_as_a_global_script_once(monkeypatch):
    """RandomRedDots is loaded global, and loading again makes no new script or version."""
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "s3cret-enough")
    bootstrap()
    bootstrap()
    script = Script.objects.get(name="RandomRedDots")
    assert script.is_global
    assert script.versions.count() == 1
    assert script.current_version.entry_function == "RandomRedDots"


@pytest.mark.django_db
def test_defines_the_seaborn_environment_once_and_queues_its_build(monkeypatch, django_capture_on_commit_callbacks):
    """Example 2's environment is defined with seaborn and built in the background; a second run keeps it."""
    from scripts_app.models import Environment

    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "s3cret-enough")
    queued = []
    monkeypatch.setattr("scripts_app.environments.tasks.build_environment.delay", lambda *a: queued.append(a))
    with django_capture_on_commit_callbacks(execute=True):
        bootstrap()
        bootstrap()
    environment = Environment.objects.get()
    assert (environment.name, environment.packages, environment.status) == ("seaborn", "seaborn", "BUILDING")
    assert queued == [(str(environment.pk), 1)]
    assert Script.objects.filter(name="test_seaborn_noinp", is_global=True, env_name="seaborn").exists()


@pytest.mark.django_db
def test_a_broker_that_is_down_does_not_stop_bootstrap_and_the_build_is_published_later(
    monkeypatch, settings, django_capture_on_commit_callbacks
):
    """First boot with the broker down: bootstrap finishes and says so; the build, never started, is
    published again by the reaper once the broker answers."""
    from datetime import timedelta

    from django.utils import timezone

    from scripts_app.models import Environment
    from scripts_app.services import environments
    from scripts_app.services.jobs import broker

    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "s3cret-enough")

    def broker_down(*args):
        raise ConnectionRefusedError("broker down")

    monkeypatch.setattr("scripts_app.environments.tasks.build_environment.delay", broker_down)
    monkeypatch.setattr(broker, "broker_problem", lambda: "ConnectionRefusedError: broker down")
    err = StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("bootstrap", stdout=StringIO(), stderr=err)
    assert "the broker does not answer, so a worker builds it once it does" in err.getvalue()
    environment = Environment.objects.get()
    assert (environment.status, environment.build_log) == ("BUILDING", "")

    queued = []
    monkeypatch.setattr("scripts_app.environments.tasks.build_environment.delay", lambda *a: queued.append(a))
    monkeypatch.setattr(broker, "broker_queue_length", lambda queue: 0)
    assert environments.environment_republish_lost_builds() == []  # not waiting long enough yet
    later = timezone.now() + timedelta(seconds=settings.OMLWEB_REQUEUE_AFTER_SECONDS + 1)
    assert environments.environment_republish_lost_builds(now=later) == ["seaborn"]
    assert queued == [(str(environment.pk), 1)]
