from __future__ import annotations

import pytest
from django.contrib.auth.models import Group

from scripts_app.roles import ADMINS, ANALYSTS, AUDITORS
from tests.factories import UserFactory


def in_group(user, name: str):
    user.groups.add(Group.objects.get_or_create(name=name)[0])
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


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


def logged_in(client, user):
    client.force_login(user)
    return client
