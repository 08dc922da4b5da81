"""Auditors are read-only through the API too: they read scripts, and run or write none."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group

from scripts_app.models import Run, Script
from scripts_app.roles import AUDITORS
from tests.conftest import client_for
from tests.factories import UserFactory, make_script


@pytest.fixture
def auditor_api(db):
    auditor = UserFactory(username="audrey")
    auditor.groups.add(Group.objects.get_or_create(name=AUDITORS)[0])
    return client_for(auditor)


def test_an_auditor_cannot_run_a_script(auditor_api, admin_user):
    """do-eval of a global script is refused with 403 and records no run."""
    make_script(admin_user, "g", "def g():\n    return 1\n", is_global=True)
    response = auditor_api.post("/oml/api/py-scripts/v1/do-eval/g", {}, format="json")
    assert response.status_code == 403
    assert response.json()["errorCode"] == 1013
    assert not Run.objects.exists()


def test_an_auditor_cannot_create_a_script(auditor_api):
    """POST scripts is refused with 403."""
    response = auditor_api.post(
        "/oml/api/py-scripts/v1/scripts", {"name": "x", "script": "def x():\n    return 1\n"}, format="json"
    )
    assert response.status_code == 403
    assert not Script.objects.exists()


def test_an_auditor_lists_every_script(auditor_api, alice):
    """Reading stays open: the list has other users' private scripts."""
    make_script(alice, "private", "def private():\n    return 1\n")
    names = [row["NAME"] for row in auditor_api.get("/oml/api/py-scripts/v1/scripts").json()["result"]]
    assert names == ["private"]
