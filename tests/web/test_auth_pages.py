"""Signing in and out, and that every page needs a signed-in user."""

from __future__ import annotations

import pytest
from django.urls import reverse

from tests.factories import PASSWORD


def test_login_page_renders(client, db):
    """The sign-in page shows a form with a CSRF token."""
    response = client.get(reverse("login"))
    assert response.status_code == 200
    assert b"csrfmiddlewaretoken" in response.content


def test_it_signs_in_and_lands_on_scripts(client, alice):
    """A right password signs in and goes to the scripts list."""
    response = client.post(reverse("login"), {"username": "alice", "password": PASSWORD}, follow=True)
    assert response.redirect_chain[-1][0] == reverse("web:script_list")
    assert response.context["user"] == alice


def test_it_refuses_a_wrong_password(client, alice):
    """A wrong password stays on the sign-in page with an error."""
    response = client.post(reverse("login"), {"username": "alice", "password": "wrong"})
    assert response.status_code == 200
    assert "_auth_user_id" not in client.session
    assert b"Please enter a correct username" in response.content


def test_sign_out_is_a_post(alice_client):
    """Signing out ends the session."""
    response = alice_client.post(reverse("logout"))
    assert response.status_code == 302
    assert "_auth_user_id" not in alice_client.session


@pytest.mark.parametrize("name", ["web:script_list", "web:script_create", "web:run_list", "web:token_list"])
def test_pages_need_sign_in(client, db, name):
    """An anonymous visitor is sent to sign in."""
    response = client.get(reverse(name))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))
