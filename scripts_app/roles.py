"""Who may do what. Roles are Django groups; a superuser is an admin."""

from __future__ import annotations

ADMINS = "admins"
AUDITORS = "auditors"
ANALYSTS = "analysts"
ROLES = (ADMINS, AUDITORS, ANALYSTS)


def is_admin(user) -> bool:
    return user.is_superuser or _in_group(user, ADMINS)


def is_auditor(user) -> bool:
    return _in_group(user, AUDITORS)


def sees_everything(user) -> bool:
    """Admins and auditors read every script and run."""
    return is_admin(user) or is_auditor(user)


def _in_group(user, name: str) -> bool:
    # Cached per user object: one query per request, however often it is asked.
    cache = getattr(user, "_omlweb_groups", None)
    if cache is None:
        cache = set(user.groups.values_list("name", flat=True)) if user.is_authenticated else set()
        user._omlweb_groups = cache
    return name in cache
