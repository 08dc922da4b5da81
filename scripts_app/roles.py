"""Who may do what. Roles are Django groups; a superuser is an admin.

- analysts: their own scripts, the global ones and those granted to them; their own runs.
- admins: everything, including global scripts, environments and users.
- auditors: read every script and run, change nothing.

Every page asks these functions, never the groups directly, so a rule lives in one place.
"""

from __future__ import annotations

from django.db.models import Q, QuerySet

from scripts_app.models import ScriptGrant

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


def is_read_only(user) -> bool:
    """An auditor (who is not also an admin) changes nothing and runs nothing."""
    return is_auditor(user) and not is_admin(user)


def role_names(user) -> list[str]:
    """The roles to show next to a user's name."""
    roles = [role for role in ROLES if _in_group(user, role)]
    if user.is_superuser and ADMINS not in roles:
        roles.insert(0, ADMINS)
    return roles


# Scripts


def can_view_script(user, script) -> bool:
    return sees_everything(user) or _may_run(user, script)


def can_run_script(user, script) -> bool:
    if is_read_only(user):
        return False
    return is_admin(user) or _may_run(user, script)


def can_edit_script(user, script) -> bool:
    """Change its source or description, restore a version, delete it."""
    return not is_read_only(user) and (script.owner_id == user.pk or is_admin(user))


def can_share_script(user, script) -> bool:
    """Grant and revoke other users' right to run it."""
    return can_edit_script(user, script)


def can_make_global(user) -> bool:
    return is_admin(user)


def can_create_scripts(user) -> bool:
    return not is_read_only(user)


def scripts_visible_to(user, scripts: QuerySet) -> QuerySet:
    if sees_everything(user):
        return scripts
    # A subquery, not a join: a join on grants would repeat a script once per grantee.
    granted = ScriptGrant.objects.filter(grantee=user).values("script_id")
    return scripts.filter(Q(owner=user) | Q(is_global=True) | Q(pk__in=granted))


def _may_run(user, script) -> bool:
    if script.owner_id == user.pk or script.is_global:
        return True
    return script.grants.filter(grantee=user).exists()


# Runs


def runs_visible_to(user, runs: QuerySet) -> QuerySet:
    """The one rule for reading runs and jobs, in the pages (history, a script's runs, compare) and the
    API (jobs) alike: a user reads their own; admins and auditors read every one."""
    return runs if sees_everything(user) else runs.filter(user=user)


def can_view_run(user, run) -> bool:
    """`runs_visible_to` for one run already loaded."""
    return sees_everything(user) or run.user_id == user.pk


def can_cancel_run(user, run) -> bool:
    return not is_read_only(user) and (run.user_id == user.pk or is_admin(user))


def remember_groups(user, names) -> None:
    """Keep the user's group names read by another query of this request (services.shares reads them
    with the groups' limits), so that asking a role reads nothing more."""
    user._omlweb_groups = set(names)


def _in_group(user, name: str) -> bool:
    # Cached per user object: one query per request, however often it is asked.
    cache = getattr(user, "_omlweb_groups", None)
    if cache is None:
        cache = set(user.groups.values_list("name", flat=True)) if user.is_authenticated else set()
        user._omlweb_groups = cache
    return name in cache
