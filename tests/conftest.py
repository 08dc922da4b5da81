from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from rest_framework.test import APIClient

from scripts_app.roles import ADMINS, ANALYSTS, AUDITORS
from scripts_app.services.tokens import token_issue
from tests.factories import UserFactory


@pytest.fixture(autouse=True)
def media_in_tmp(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture
def alice(db):
    return UserFactory(username="alice")


@pytest.fixture
def bob(db):
    return UserFactory(username="bob")


@pytest.fixture
def admin_user(db):
    return UserFactory(username="root", is_superuser=True, is_staff=True)


def client_for(user) -> APIClient:
    raw, _ = token_issue(user=user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


@pytest.fixture
def alice_api(alice) -> APIClient:
    return client_for(alice)


@pytest.fixture
def bob_api(bob) -> APIClient:
    return client_for(bob)


@pytest.fixture
def admin_api(admin_user) -> APIClient:
    return client_for(admin_user)


# Roles


def in_group(user, name: str):
    """Put the user in a role's group (forgetting the groups roles.py cached on the object)."""
    user.groups.add(Group.objects.get_or_create(name=name)[0])
    user.__dict__.pop("_omlweb_groups", None)
    return user


@pytest.fixture
def analyst(alice):
    return in_group(alice, ANALYSTS)


@pytest.fixture
def auditor(db):
    return in_group(UserFactory(username="audrey"), AUDITORS)


@pytest.fixture
def group_admin(db):
    """An admin by role (the admins group), not a superuser."""
    return in_group(UserFactory(username="adam"), ADMINS)
