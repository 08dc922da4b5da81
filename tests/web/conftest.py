from __future__ import annotations

import pytest


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


def logged_in(client, user):
    client.force_login(user)
    return client
