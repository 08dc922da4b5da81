from __future__ import annotations

from django.http import HttpRequest

from scripts_app import roles as role_rules


def roles(request: HttpRequest) -> dict:
    """What the navigation needs to know about the signed-in user."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {
        "user_roles": role_rules.role_names(user),
        "user_is_admin": role_rules.is_admin(user),
        "user_read_only": role_rules.is_read_only(user),
        "user_sees_audit": role_rules.sees_everything(user),
    }
