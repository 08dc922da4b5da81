"""Password guessing: after OMLWEB_LOGIN_FAILURE_LIMIT failures a username is locked from that address,
on the token endpoint and on the login page, a correct password included, until the cool-off has passed.
Other users, and the same user from another address, are not affected."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from scripts_app.models import AccessToken
from tests.factories import PASSWORD

TOKEN = "/omlusers/api/oauth2/v1/token"
LIMIT = 3
COOLOFF = timedelta(minutes=10)


@pytest.fixture(autouse=True)
def throttling(settings):
    settings.AXES_FAILURE_LIMIT = LIMIT
    settings.AXES_COOLOFF_TIME = COOLOFF


def token(username: str, password: str, address: str = "127.0.0.1"):
    body = {"grant_type": "password", "username": username, "password": password}
    return APIClient(REMOTE_ADDR=address).post(TOKEN, body, format="json")


def test_the_token_endpoint_locks_a_username_after_too_many_bad_passwords(alice, bob):
    """N bad passwords: 401s, then 429 with the OML body and Retry-After; then the right password is
    refused too; Bob and Alice from elsewhere still get tokens; after the cool-off Alice does as well."""
    answers = [token("alice", f"guess {n}") for n in range(LIMIT)]
    assert [a.status_code for a in answers] == [401] * (LIMIT - 1) + [429]
    assert answers[0].json()["errorCode"] == 1012
    locked = answers[-1].json()
    assert locked["errorCode"] == 1047
    assert "Too many failed sign-ins" in locked["errorMessage"]
    assert answers[-1]["Retry-After"] == str(int(COOLOFF.total_seconds()))

    right = token("alice", PASSWORD)
    assert right.status_code == 429
    assert right.json()["errorCode"] == 1047
    assert not AccessToken.objects.filter(user=alice).exists()

    assert token("bob", PASSWORD).status_code == 200
    assert token("alice", PASSWORD, address="10.1.2.3").status_code == 200
    # A forged X-Forwarded-For is no other address.
    forged = APIClient(HTTP_X_FORWARDED_FOR="10.9.9.9").post(
        TOKEN, {"grant_type": "password", "username": "alice", "password": PASSWORD}, format="json"
    )
    assert forged.status_code == 429

    with time_machine.travel(timezone.now() + COOLOFF + timedelta(seconds=5), tick=False):
        after = token("alice", PASSWORD)
    assert after.status_code == 200
    assert after.json()["accessToken"]


def test_the_login_page_locks_a_username_after_too_many_bad_passwords(alice, bob):
    """The same on the sign-in page: a page saying it is locked (429), no session, other users sign in."""
    browser = Client()
    pages = [browser.post("/accounts/login/", {"username": "alice", "password": f"guess {n}"}) for n in range(LIMIT)]
    assert [p.status_code for p in pages] == [200] * (LIMIT - 1) + [429]
    assert "Sign-in locked" in pages[-1].content.decode()

    refused = browser.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert refused.status_code == 429
    assert "_auth_user_id" not in browser.session

    other = Client()
    assert other.post("/accounts/login/", {"username": "bob", "password": PASSWORD}).status_code == 302
    assert other.session["_auth_user_id"] == str(bob.pk)

    with time_machine.travel(timezone.now() + COOLOFF + timedelta(seconds=5), tick=False):
        signed_in = browser.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert signed_in.status_code == 302
    assert browser.session["_auth_user_id"] == str(alice.pk)


def test_a_successful_sign_in_resets_the_count(alice):
    """Failures below the limit are forgotten once the right password is given."""
    for n in range(LIMIT - 1):
        assert token("alice", f"guess {n}").status_code == 401
    assert token("alice", PASSWORD).status_code == 200
    for n in range(LIMIT - 1):
        assert token("alice", f"again {n}").status_code == 401
    assert token("alice", PASSWORD).status_code == 200
