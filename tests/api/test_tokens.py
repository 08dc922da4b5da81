"""The OML token endpoint: issue, use, expire, refresh, revoke."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.utils import timezone
from rest_framework.test import APIClient

from scripts_app.models import AccessToken
from scripts_app.services.tokens import token_hash
from tests.factories import PASSWORD

TOKEN_URL = "/omlusers/api/oauth2/v1/token"
SCRIPTS_URL = "/oml/api/py-scripts/v1/scripts"


def get_token(client: APIClient, username: str = "alice", password: str = PASSWORD):
    return client.post(TOKEN_URL, {"grant_type": "password", "username": username, "password": password}, format="json")


def scripts_with(token: str):
    client = APIClient()
    return client.get(SCRIPTS_URL, HTTP_AUTHORIZATION=f"Bearer {token}")


def test_password_grant_returns_oml_token(alice):
    """A right password gets {accessToken, expiresIn: 3600, tokenType: Bearer}; only its hash is kept."""
    response = get_token(APIClient())
    assert response.status_code == 200
    body = response.json()
    assert body["expiresIn"] == 3600
    assert body["tokenType"] == "Bearer"
    stored = AccessToken.objects.get(user=alice)
    assert stored.token_hash == token_hash(body["accessToken"])
    assert body["accessToken"] not in str(list(AccessToken.objects.values()))


def test_token_works_as_bearer(alice):
    """The token authenticates API calls."""
    token = get_token(APIClient()).json()["accessToken"]
    assert scripts_with(token).status_code == 200


def test_wrong_password_is_401(alice):
    """A wrong password is a 401 with the OML error body."""
    response = get_token(APIClient(), password="nope")
    assert response.status_code == 401
    assert response.json() == {"errorMessage": "Invalid username or password.", "errorCode": 1012}
    assert not AccessToken.objects.exists()


@pytest.mark.parametrize(
    "body",
    [
        {"grant_type": "password", "username": "alice"},
        {"grant_type": "client_credentials"},
        {"username": "alice", "password": PASSWORD},
        {"grant_type": "password", "username": 5, "password": PASSWORD},
    ],
)
def test_bad_token_requests_are_400(alice, body):
    """Missing fields, an unknown grant type and wrong types are 400s that name the problem."""
    response = APIClient().post(TOKEN_URL, body, format="json")
    assert response.status_code == 400
    assert response.json()["errorMessage"]


def test_missing_token_is_401():
    """A call without a token is a 401 with a Bearer challenge."""
    response = APIClient().get(SCRIPTS_URL)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["errorCode"] == 1010


def test_garbage_token_is_401(db):
    """An unknown token is a 401."""
    assert scripts_with("oml_not-a-token").status_code == 401


def test_token_expires_after_60_minutes(alice):
    """A token works for 60 minutes, then gets 401 saying it expired."""
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        token = get_token(APIClient()).json()["accessToken"]
    with time_machine.travel(start + timedelta(minutes=59), tick=False):
        assert scripts_with(token).status_code == 200
    with time_machine.travel(start + timedelta(minutes=61), tick=False):
        response = scripts_with(token)
    assert response.status_code == 401
    assert response.json() == {"errorMessage": "The token has expired.", "errorCode": 1011}


@pytest.mark.parametrize("field", ["refresh_token", "token"])
def test_refresh_gives_a_new_token_and_retires_the_old(alice, field):
    """Refreshing (token in refresh_token or token) gives a new working token; the old one stops working."""
    old = get_token(APIClient()).json()["accessToken"]
    response = APIClient().post(TOKEN_URL, {"grant_type": "refresh_token", field: old}, format="json")
    assert response.status_code == 200
    new = response.json()["accessToken"]
    assert new != old
    assert scripts_with(new).status_code == 200
    assert scripts_with(old).status_code == 401


def test_refresh_with_bearer_header(alice):
    """The token to refresh may also come in the Authorization header, as Oracle documents."""
    old = get_token(APIClient()).json()["accessToken"]
    response = APIClient().post(
        TOKEN_URL, {"grant_type": "refresh_token"}, format="json", HTTP_AUTHORIZATION=f"Bearer {old}"
    )
    assert response.status_code == 200


def test_refresh_chain_ends_after_8_hours(alice):
    """Refreshing keeps a token alive up to 8 hours after the first issue, and no longer."""
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        token = get_token(APIClient()).json()["accessToken"]
    for minutes in range(50, 8 * 60, 50):
        with time_machine.travel(start + timedelta(minutes=minutes), tick=False):
            response = APIClient().post(TOKEN_URL, {"grant_type": "refresh_token", "token": token}, format="json")
            assert response.status_code == 200, minutes
            token = response.json()["accessToken"]
            assert response.json()["expiresIn"] <= 3600
    # At 7h30 the last refresh was capped to the end of the chain at 8h.
    with time_machine.travel(start + timedelta(hours=8, minutes=1), tick=False):
        assert scripts_with(token).status_code == 401
        response = APIClient().post(TOKEN_URL, {"grant_type": "refresh_token", "token": token}, format="json")
    assert response.status_code == 401


def test_expired_token_cannot_be_refreshed(alice):
    """Past its 60 minutes a token can no longer be refreshed."""
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        token = get_token(APIClient()).json()["accessToken"]
    with time_machine.travel(start + timedelta(minutes=61), tick=False):
        response = APIClient().post(TOKEN_URL, {"grant_type": "refresh_token", "token": token}, format="json")
    assert response.status_code == 401


def test_revoked_token_is_refused_and_cannot_be_refreshed(alice):
    """A revoked token gets 401 and cannot be refreshed."""
    token = get_token(APIClient()).json()["accessToken"]
    response = APIClient().post(f"{TOKEN_URL}/revoke", {}, format="json", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200
    assert AccessToken.objects.get().revoked_at is not None
    assert scripts_with(token).json() == {"errorMessage": "The token has been revoked.", "errorCode": 1010}
    response = APIClient().post(TOKEN_URL, {"grant_type": "refresh_token", "token": token}, format="json")
    assert response.status_code == 401


def test_inactive_user_token_is_refused(alice):
    """Deactivating a user stops their tokens at once."""
    token = get_token(APIClient()).json()["accessToken"]
    alice.is_active = False
    alice.save()
    assert scripts_with(token).status_code == 401
