"""Users and their roles, as admins manage them from the web UI."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction

from scripts_app.errors import BadRequest
from scripts_app.roles import ROLES
from scripts_app.services import audit


@transaction.atomic
def user_create(*, username: str, password: str, role: str):
    users = get_user_model().objects
    if users.filter(username=username).exists():
        raise BadRequest(f"User {username!r} already exists.")
    user = users.create_user(username=username, password=password)
    _set_role(user, role)
    audit.record("user.create", obj=user, after=audit.user_state(user))
    return user


@transaction.atomic
def user_set_role(*, user, role: str) -> None:
    """Make the user hold exactly this role (one of roles.ROLES)."""
    before = audit.user_state(user)
    _set_role(user, role)
    after = audit.user_state(user)
    if after != before:
        audit.record("user.role", obj=user, before=before, after=after)


def _set_role(user, role: str) -> None:
    if role not in ROLES:
        raise BadRequest(f"Unknown role {role!r}.")
    groups = [Group.objects.get_or_create(name=name)[0] for name in ROLES]
    user.groups.remove(*[group for group in groups if group.name != role])
    user.groups.add(next(group for group in groups if group.name == role))
    # roles.py caches a user's groups on the object.
    user.__dict__.pop("_omlweb_groups", None)


@transaction.atomic
def user_set_active(*, user, active: bool) -> None:
    if user.is_active == active:
        return
    before = audit.user_state(user)
    user.is_active = active
    user.save(update_fields=["is_active"])
    audit.record(
        "user.activate" if active else "user.deactivate", obj=user, before=before, after=audit.user_state(user)
    )
