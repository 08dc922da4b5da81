"""The script repository: create, change, share and find scripts."""

from __future__ import annotations

import re

from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction
from django.db.models import Max, Q, QuerySet

from scripts_app.errors import BadRequest, ErrorCode, NotFound, OmlError, PermissionDenied
from scripts_app.models import SCRIPT_NAME_PATTERN, VERSION_MESSAGE_MAX, Script, ScriptGrant, ScriptVersion
from scripts_app.roles import is_admin, is_read_only, sees_everything
from scripts_app.runner import ScriptSourceError, entry_function
from scripts_app.services import audit, plain_sql


class InvalidScript(OmlError):
    code = ErrorCode.INVALID_SCRIPT

    def __init__(self, error: ScriptSourceError) -> None:
        super().__init__(f"Invalid script: {error}")
        self.line = error.line


# Oracle's script types (`oml.script.dir(sctype=...)`), the last segment of GET v2/scripts/{scriptType}:
# the caller's own, all it may run, global, those it granted to others, those granted to it.
SCRIPT_TYPES = ("user", "all", "global", "grant", "granted")


def validate_name(name: str) -> None:
    if not isinstance(name, str) or not re.fullmatch(SCRIPT_NAME_PATTERN, name):
        raise BadRequest(f"Invalid script name {name!r}: use 1 to 128 letters, digits, '_', '.' or '-'.")
    if name.lower() in SCRIPT_TYPES:
        # GET v2/scripts/user lists scripts by type: a script of that name could not be reached there.
        raise BadRequest(f"Invalid script name {name!r}: {', '.join(SCRIPT_TYPES)} name script types.")


def scripts_of_type(*, user, script_type: str) -> QuerySet[Script]:
    """The scripts of one of Oracle's types, as `user` sees them."""
    scripts = Script.objects.select_related("owner", "current_version")
    if script_type == "user":
        return scripts.filter(owner=user)
    if script_type == "all":
        return scripts_runnable_by(user)
    if script_type == "global":
        return scripts.filter(is_global=True)
    if script_type == "grant":
        return scripts.filter(owner=user, grants__isnull=False).distinct()
    if script_type == "granted":
        return scripts.filter(grants__grantee=user).exclude(owner=user).distinct()
    raise NotFound(f"Unknown script type {script_type!r}: use one of {', '.join(SCRIPT_TYPES)}.")


def checked_entry_function(*, source: str, name: str) -> str:
    try:
        return entry_function(source, name)
    except ScriptSourceError as error:
        raise InvalidScript(error) from None


@transaction.atomic
def script_create(
    *,
    owner,
    name: str,
    source: str,
    description: str = "",
    is_global: bool = False,
    overwrite: bool = False,
    env_name: str | None = None,
    message: str = "",
) -> Script:
    """A new script with its first version; with overwrite, an existing one of that name changes instead."""
    if is_read_only(owner):
        raise PermissionDenied("Auditors have read-only access: they do not write scripts.")
    validate_name(name)
    function = checked_entry_function(source=source, name=name)
    if is_global and not is_admin(owner):
        raise PermissionDenied("Only admins may make a script global.")
    existing = Script.objects.select_for_update().filter(owner=owner, name=name).first()
    if existing is not None:
        if not overwrite:
            raise OmlError(
                f"Script {name!r} already exists; send overwrite=true to replace it.",
                code=ErrorCode.SCRIPT_EXISTS,
                status=409,
            )
        return script_update(
            script=existing,
            by=owner,
            source=source,
            description=description,
            is_global=is_global,
            env_name=env_name,
            message=message,
        )
    try:
        with transaction.atomic():
            script = Script.objects.create(
                owner=owner, name=name, description=description, is_global=is_global, env_name=env_name or ""
            )
    except IntegrityError:
        raise OmlError(f"Script {name!r} already exists.", code=ErrorCode.SCRIPT_EXISTS, status=409) from None
    _add_version(script=script, source=source, function=function, by=owner, message=message)
    audit.record("script.create", obj=script, actor=owner, after=audit.script_state(script))
    return script


@transaction.atomic
def script_update(
    *,
    script: Script,
    by,
    source: str | None = None,
    description: str | None = None,
    is_global: bool | None = None,
    env_name: str | None = None,
    message: str = "",
    audit_action: str | None = None,
) -> Script:
    """Change a script. Changed source becomes a new version (with `message`); the old ones stay as they were.

    One audit event: `audit_action` when given, else what changed (a new version, global or private,
    or other fields). Nothing changed: no event."""
    if is_read_only(by):
        raise PermissionDenied("Auditors have read-only access: they do not change scripts.")
    if is_global is not None and is_global != script.is_global and not is_admin(by):
        raise PermissionDenied("Only admins may make a script global or private.")
    before = audit.script_state(script)
    if source is not None and source != script.source:
        function = checked_entry_function(source=source, name=script.name)
        _add_version(script=script, source=source, function=function, by=by, message=message)
    if description is not None:
        script.description = description
    if is_global is not None:
        script.is_global = is_global
    if env_name is not None:
        script.env_name = env_name
    script.save()
    after = audit.script_state(script)
    changed = {key for key in after if after[key] != before[key]}
    if changed:
        if audit_action is None:
            if changed == {"is_global"}:
                audit_action = "script.make_global" if script.is_global else "script.make_private"
            elif "version" in changed:
                audit_action = "script.new_version"
            else:
                audit_action = "script.update"
        audit.record(audit_action, obj=script, actor=by, before=before, after=after)
    return script


def script_restore_version(*, script: Script, version: ScriptVersion, by) -> Script:
    """Make an old version's source current again, as a new version."""
    return script_update(
        script=script,
        by=by,
        source=version.source,
        message=f"Restored version {version.number}",
        audit_action="script.restore",
    )


def checked_message(message: str | None) -> str:
    """A version message: one line of at most VERSION_MESSAGE_MAX characters, trimmed; none is fine."""
    if message is None:
        return ""
    if not isinstance(message, str):
        raise BadRequest("A version message is text.", code=ErrorCode.INVALID_VERSION_MESSAGE)
    message = " ".join(message.split())
    if "\x00" in message:
        raise BadRequest("A version message cannot hold NUL characters.", code=ErrorCode.INVALID_VERSION_MESSAGE)
    if len(message) > VERSION_MESSAGE_MAX:
        raise BadRequest(
            f"A version message has at most {VERSION_MESSAGE_MAX} characters (this one has {len(message)}).",
            code=ErrorCode.INVALID_VERSION_MESSAGE,
        )
    return message


def _add_version(*, script: Script, source: str, function: str, by, message: str = "") -> ScriptVersion:
    message = checked_message(message)
    last = script.versions.aggregate(last=Max("number"))["last"] or 0
    version = ScriptVersion.objects.create(
        script=script, number=last + 1, source=source, entry_function=function, created_by=by, message=message
    )
    script.current_version = version
    script.save(update_fields=["current_version", "updated_at"])
    return version


@transaction.atomic
def script_delete(*, script: Script) -> None:
    """Delete a script. Its versions stay for the runs that ran them."""
    before = audit.script_state(script)
    audit.record("script.delete", obj=script, before=before)
    script.delete()


@transaction.atomic
def script_grant(*, script: Script, grantee) -> None:
    _, created = ScriptGrant.objects.get_or_create(script=script, grantee=grantee)
    if created:
        audit.record("script.grant", obj=script, after={"grantee": grantee.get_username(), "grantee_id": grantee.pk})


@transaction.atomic
def script_revoke(*, script: Script, grantee) -> None:
    deleted, _ = ScriptGrant.objects.filter(script=script, grantee=grantee).delete()
    if deleted:
        audit.record("script.revoke", obj=script, before={"grantee": grantee.get_username(), "grantee_id": grantee.pk})


def scripts_runnable_by(user) -> QuerySet[Script]:
    """The caller's own scripts, the global ones, and those granted to the caller."""
    scripts = Script.objects.select_related("owner", "current_version")
    if sees_everything(user):
        return scripts
    return scripts.filter(Q(owner=user) | Q(is_global=True) | Q(grants__grantee=user)).distinct()


def script_resolve(*, caller, name: str, owner_name: str | None = None) -> Script:
    """The script a run request names, as OML finds it.

    Without an owner: the caller's own script first, then a global one. With an owner: that owner's
    script when it is global or granted to the caller (or the caller's own).
    """
    if owner_name is None:
        # The caller's own script (the common case, once a run) without reading its owner: the caller is.
        script = _own_script_with_version(caller, name)
        if script is not None:
            return script
        scripts = Script.objects.select_related("owner", "current_version").filter(name=name)
        script = scripts.filter(is_global=True).order_by("created_at").first()
        if script is None:
            raise NotFound(f"Script {name!r} not found.")
        return script
    owner = get_user_model().objects.filter(username=owner_name).first()
    if owner is None:
        raise NotFound(f"Owner {owner_name!r} not found.")
    scripts = Script.objects.select_related("owner", "current_version").filter(name=name)
    script = scripts.filter(owner=owner).first()
    if script is None or not (
        script.owner_id == caller.pk or script.is_global or script.grants.filter(grantee=caller).exists()
    ):
        # The same answer for "missing" and "private": a private script's name is not disclosed.
        raise NotFound(f"Script {name!r} of owner {owner_name!r} not found.")
    return script


def _own_script_with_version(caller, name: str) -> Script | None:
    """`Script.objects.select_related("current_version").get(name=name, owner=caller)` (None: none), in one
    plain statement (services.plain_sql), with its owner set to the caller: every run of one's own
    script starts here."""
    quote = connection.ops.quote_name
    script_table, version_table = quote(Script._meta.db_table), quote(ScriptVersion._meta.db_table)
    sql = (
        f"SELECT {plain_sql.columns(Script, 's')}, {plain_sql.columns(ScriptVersion, 'v')} FROM {script_table} s "
        f"LEFT OUTER JOIN {version_table} v ON s.{quote('current_version_id')} = v.{quote('id')} "
        f"WHERE s.{quote('name')} = %s AND s.{quote('owner_id')} = %s"
    )
    found = plain_sql.row_of(sql, [name, caller.pk], Script, ScriptVersion)
    if found is None:
        return None
    script, version = found
    assert isinstance(script, Script)
    assert isinstance(version, ScriptVersion)
    script.owner = caller
    if script.current_version_id is not None:
        assert version.pk == script.current_version_id
        script.current_version = version
    return script


def own_script(*, owner, name: str) -> Script:
    """The caller's own script, to change or delete: never for an auditor, even one who owns scripts."""
    if is_read_only(owner):
        raise PermissionDenied("Auditors have read-only access: they do not change scripts.")
    script = Script.objects.select_related("owner", "current_version").filter(owner=owner, name=name).first()
    if script is None:
        raise NotFound(f"Script {name!r} not found.")
    return script
