"""Audit events for what Django itself does: sign-ins, failed sign-ins and changes made in its admin."""

from __future__ import annotations

from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.core.exceptions import ObjectDoesNotExist
from django.db.models.signals import post_save
from django.dispatch import receiver

from scripts_app.services import audit

ADMIN_ACTIONS = {ADDITION: "admin.add", CHANGE: "admin.change", DELETION: "admin.delete"}


@receiver(user_logged_in, dispatch_uid="omlweb_audit_sign_in")
def sign_in(sender, request, user, **kwargs) -> None:
    audit.record("auth.sign_in", obj=user, actor=user, request=request, after={"path": _path(request)})


@receiver(user_login_failed, dispatch_uid="omlweb_audit_sign_in_failed")
def sign_in_failed(sender, credentials, request=None, **kwargs) -> None:
    username = str(credentials.get("username") or "")[:150]
    user = get_user_model().objects.filter(username=username).first() if username else None
    audit.record(
        "auth.sign_in_failed",
        object_type="user",
        object_id=str(user.pk) if user else "",
        object_name=username,
        actor=None,
        actor_name=username,
        request=request,
        after={"path": _path(request), "known_user": user is not None},
    )


@receiver(post_save, sender=LogEntry, dispatch_uid="omlweb_audit_admin_change")
def admin_change(sender, instance: LogEntry, created: bool, **kwargs) -> None:
    """Every add, change and delete made in Django's admin (GroupLimits, groups, users, ...).

    The admin writes its LogEntry in the same transaction as the change, so this event is too.
    """
    if not created:
        return
    content_type = instance.content_type
    label = f"{content_type.app_label}.{content_type.model}" if content_type else ""
    audit.record(
        ADMIN_ACTIONS.get(instance.action_flag, "admin.change"),
        object_type=audit.OBJECT_TYPES.get(label, label),
        object_id=instance.object_id or "",
        object_name=instance.object_repr,
        actor=instance.user,
        after={"change": instance.get_change_message(), "admin_object": _admin_state(instance)},
    )


def _admin_state(entry: LogEntry):
    """The object's fields after the change (None after a delete), for `after`."""
    if entry.action_flag == DELETION or entry.content_type is None:
        return None
    try:
        obj = entry.get_edited_object()
    except ObjectDoesNotExist:
        return None
    state = {}
    for field in obj._meta.concrete_fields:
        if field.name in ("password", "token_hash"):
            continue
        state[field.name] = field.value_from_object(obj)
    if entry.content_type.model == "group":
        limits = getattr(obj, "omlweb_limits", None)
        if limits is not None:
            state["limits"] = {
                name: getattr(limits, name)
                for name in ("max_sync_runs", "max_running_jobs", "max_queued_jobs", "quota_mb")
            }
    return state


def _path(request) -> str:
    return getattr(request, "path", "") if request is not None else ""
