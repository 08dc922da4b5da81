"""Users and their roles, as admins manage them from the web UI."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction

from scripts_app.errors import BadRequest
from scripts_app.roles import ROLES


@transaction.atomic
def user_create(*, username: str, password: str, role: str):
    users = get_user_model().objects
    if users.filter(username=username).exists():
        raise BadRequest(f"User {username!r} already exists.")
    user = users.create_user(username=username, password=password)
    user_set_role(user=user, role=role)
    return user


@transaction.atomic
def user_set_role(*, user, role: str) -> None:
    """Make the user hold exactly this role (one of roles.ROLES)."""
    if role not in ROLES:
        raise BadRequest(f"Unknown role {role!r}.")
    groups = [Group.objects.get_or_create(name=name)[0] for name in ROLES]
    user.groups.remove(*[group for group in groups if group.name != role])
    user.groups.add(next(group for group in groups if group.name == role))
    # roles.py caches a user's groups on the object.
    user.__dict__.pop("_omlweb_groups", None)


def user_set_active(*, user, active: bool) -> None:
    user.is_active = active
    user.save(update_fields=["is_active"])
