"""The users page: only admins create users and set roles."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.urls import reverse

from scripts_app import roles
from tests.web.conftest import logged_in


def test_only_admins_open_the_users_page(client, alice, auditor, group_admin):
    """Analysts and auditors get 403; an admin by group gets the page."""
    url = reverse("web:user_list")
    assert logged_in(client, alice).get(url).status_code == 403
    assert logged_in(client, auditor).get(url).status_code == 403
    assert logged_in(client, group_admin).get(url).status_code == 200


def test_an_admin_creates_a_user_with_a_role(client, group_admin):
    """The new user can sign in and holds the chosen role."""
    logged_in(client, group_admin).post(
        reverse("web:user_list"), {"username": "carol", "password": "a long pass phrase", "role": "auditors"}
    )
    carol = get_user_model().objects.get(username="carol")
    assert carol.check_password("a long pass phrase")
    assert roles.is_auditor(carol)


def test_a_weak_password_is_refused(client, group_admin):
    """Django's password validators apply."""
    response = logged_in(client, group_admin).post(
        reverse("web:user_list"), {"username": "carol", "password": "password", "role": "analysts"}
    )
    assert response.status_code == 422
    assert not get_user_model().objects.filter(username="carol").exists()


def test_an_admin_changes_a_role_and_deactivates(client, group_admin, alice):
    """Setting a role replaces the old one; unticking Active deactivates."""
    logged_in(client, group_admin).post(reverse("web:user_update", args=[alice.pk]), {"role": "admins"})
    alice = get_user_model().objects.get(pk=alice.pk)
    assert roles.is_admin(alice)
    assert not alice.is_active


def test_an_analyst_cannot_change_roles(client, alice, bob):
    """A POST by an analyst is refused and changes nothing."""
    response = logged_in(client, alice).post(
        reverse("web:user_update", args=[bob.pk]), {"role": "admins", "is_active": "on"}
    )
    assert response.status_code == 403
    assert not roles.is_admin(get_user_model().objects.get(pk=bob.pk))
