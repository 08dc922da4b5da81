"""The audit trail: one append-only, hash-chained event per change of state.

Every audited change calls `record` inside the transaction that makes the change, so the event and
the change commit (or roll back) together. `record` locks the chain head row, so on PostgreSQL as on
SQLite events are written one after another and each carries the hash of the one before:

    hash = sha256(canonical JSON of [id, created_at, actor, ..., before, after, prev_hash])

`verify` walks the chain and names the first event that does not fit; `prune` removes the events
before a date and leaves an anchor (the last removed event's id and hash) where the kept chain starts.

Who and from where come from the request being served (bound by scripts_app.audit_middleware), so
services need not pass the request along; an explicit `actor` wins, and without a request (a worker,
a management command) the actor is the system.
"""

from __future__ import annotations

import contextvars
import csv
import dataclasses
import hashlib
import io
import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, time, timedelta
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, connection, models, transaction
from django.db.models import QuerySet, TextField
from django.db.models.functions import Cast
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from scripts_app.errors import BadRequest
from scripts_app.models import (
    AccessToken,
    AuditAnchor,
    AuditChainHead,
    AuditEvent,
    Dataset,
    Run,
    Script,
    ScriptVersion,
)

GENESIS_HASH = "0" * 64
CHAIN_HEAD_ID = 1
_ACTOR_FROM_REQUEST: Any = object()
_request: contextvars.ContextVar = contextvars.ContextVar("omlweb_audit_request", default=None)

# What each object type is called in the trail, by model label.
OBJECT_TYPES = {
    "scripts_app.script": "script",
    "scripts_app.scriptversion": "script_version",
    "scripts_app.dataset": "dataset",
    "scripts_app.environment": "environment",
    "scripts_app.run": "run",
    "scripts_app.accesstoken": "token",
    "scripts_app.grouplimits": "group_limits",
    "scripts_app.schedule": "schedule",
    "scripts_app.notificationrule": "notification_rule",
    "auth.user": "user",
    "auth.group": "group",
}


def bind_request(request) -> contextvars.Token:
    """Make `request` the one events are attributed to until `unbind_request`."""
    return _request.set(request)


def unbind_request(token: contextvars.Token) -> None:
    _request.reset(token)


def current_request():
    return _request.get()


def describe(obj: models.Model) -> tuple[str, str, str]:
    """(object type, id, name) of a model instance, as the trail shows it."""
    label = obj._meta.label_lower
    kind = OBJECT_TYPES.get(label, label)
    if isinstance(obj, AbstractBaseUser):
        name = obj.get_username()
    elif isinstance(obj, Script | Dataset):
        name = f"{obj.owner.get_username()}/{obj.name}"
    elif isinstance(obj, ScriptVersion):
        name = f"{obj.script.owner.get_username()}/{obj.script.name} v{obj.number}" if obj.script else f"v{obj.number}"
    elif isinstance(obj, Run):
        name = f"{obj.script_owner}/{obj.script_name}"
    elif isinstance(obj, AccessToken):
        name = f"{obj.get_kind_display()} of {obj.user.get_username()}" + (f": {obj.name}" if obj.name else "")
    else:
        name = str(obj)
    return kind, str(obj.pk), name[:255]


def record(
    action: str,
    *,
    obj: models.Model | None = None,
    object_type: str = "",
    object_id: str = "",
    object_name: str = "",
    actor: Any = _ACTOR_FROM_REQUEST,
    actor_name: str | None = None,
    before: Any = None,
    after: Any = None,
    request: Any = None,
) -> AuditEvent:
    """Append one event, in the caller's transaction (or its own when there is none).

    `obj` names the object (or give object_type/object_id/object_name); `actor` defaults to the
    signed-in user of the request being served; `before`/`after` are JSON-able snapshots.
    """
    if obj is not None:
        object_type, object_id, object_name = describe(obj)
    request = request if request is not None else _request.get()
    if actor is _ACTOR_FROM_REQUEST:
        user = getattr(request, "user", None) if request is not None else None
        actor = user if user is not None and user.is_authenticated else None
    if actor_name is None:
        actor_name = actor.get_username() if actor is not None else ""
    meta = request.META if request is not None else {}
    fields = {
        "actor_id": actor.pk if actor is not None else None,
        "actor_name": _without_nul(actor_name)[:150],
        "action": action[:64],
        "object_type": object_type[:32],
        "object_id": _without_nul(str(object_id))[:64],
        "object_name": _without_nul(object_name)[:255],
        "client_address": (meta.get("REMOTE_ADDR") or "")[:45],
        "user_agent": _printable(meta.get("HTTP_USER_AGENT") or "")[:255],
        "request_id": _printable(meta.get("HTTP_X_REQUEST_ID") or "")[:64],
        "before": _jsonable(before),
        "after": _jsonable(after),
    }
    # Three plain statements, not the ORM's save(): this runs inside every audited change.
    statements = _statements()
    # No savepoint of its own: a failure here fails the caller's whole change, which must not be kept
    # unaudited anyway (two statements fewer inside every audited change).
    with transaction.atomic(savepoint=False), connection.cursor() as cursor:
        cursor.execute(statements.lock_head, [CHAIN_HEAD_ID])
        row = cursor.fetchone()
        if row is None:
            head = _locked_head()
            row = (head.last_id, head.last_hash)
        event = AuditEvent(id=row[0] + 1, created_at=timezone.now(), prev_hash=row[1], **fields)
        event.hash = event_hash(event)
        params = [field.get_db_prep_save(getattr(event, field.attname), connection) for field in statements.fields]
        if statements.insert_and_move_head:
            # PostgreSQL: the insert and the head's move in one round trip (a data-modifying CTE).
            cursor.execute(statements.insert_and_move_head, [*params, CHAIN_HEAD_ID])
        else:
            cursor.execute(statements.insert + statements.row, params)
            cursor.execute(statements.update_head, [event.id, event.hash, CHAIN_HEAD_ID])
    event._state.adding = False
    event._state.db = connection.alias
    return event


@dataclasses.dataclass(frozen=True)
class _Statements:
    lock_head: str
    update_head: str
    insert: str
    row: str
    fields: list
    insert_and_move_head: str | None


_statements_cache: dict[str, _Statements] = {}


def _statements() -> _Statements:
    cached = _statements_cache.get(connection.vendor)
    if cached is not None:
        return cached
    quote = connection.ops.quote_name
    head = quote(AuditChainHead._meta.db_table)
    lock = f"SELECT {quote('last_id')}, {quote('last_hash')} FROM {head} WHERE {quote('id')} = %s"
    if connection.features.has_select_for_update:
        lock += " FOR UPDATE"
    fields, columns = [], []
    for name in INSERT_FIELDS:
        # Every INSERT_FIELDS name is a concrete column of AuditEvent, never a reverse relation.
        field = AuditEvent._meta.get_field(name)
        assert isinstance(field, models.Field), name
        assert field.column, name
        fields.append(field)
        columns.append(quote(field.column))
    insert = f"INSERT INTO {quote(AuditEvent._meta.db_table)} ({', '.join(columns)}) VALUES "
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    both = None
    if connection.vendor == "postgresql":
        both = (
            f"WITH appended AS ({insert}{row} RETURNING {quote('id')}, {quote('hash')}) "
            f"UPDATE {head} SET {quote('last_id')} = appended.{quote('id')}, "
            f"{quote('last_hash')} = appended.{quote('hash')} FROM appended WHERE {head}.{quote('id')} = %s"
        )
    statements = _Statements(
        lock_head=lock,
        update_head=f"UPDATE {head} SET {quote('last_id')} = %s, {quote('last_hash')} = %s WHERE {quote('id')} = %s",
        insert=insert,
        row=row,
        fields=fields,
        insert_and_move_head=both,
    )
    _statements_cache[connection.vendor] = statements
    return statements


INSERT_FIELDS = (
    "id",
    "created_at",
    "actor_id",
    "actor_name",
    "action",
    "object_type",
    "object_id",
    "object_name",
    "client_address",
    "user_agent",
    "request_id",
    "before",
    "after",
    "prev_hash",
    "hash",
)


@transaction.atomic
def record_many(rows: Iterable[dict], *, batch: int = 5000) -> int:
    """Append many events at once under one lock (imports, the benchmark), chained as `record` does.

    Each row holds AuditEvent fields (action, actor_id, actor_name, object_*, client_address, before,
    after, and optionally created_at, which must not go back in time); returns how many were appended.
    Written with one multi-row INSERT per batch: the ORM's bulk_create costs more than the hashing.
    """
    head = _locked_head()
    last_id, last_hash = head.last_id, head.last_hash
    statements = _statements()
    fields, sql, row_sql = statements.fields, statements.insert, statements.row
    # SQLite allows 32,766 parameters in one statement.
    per_statement = max(1, min(batch, 30_000 // len(fields)))
    pending: list = []
    count = 0
    with connection.cursor() as cursor:
        for row in rows:
            event = AuditEvent(
                id=last_id + 1,
                created_at=row.get("created_at") or timezone.now(),
                prev_hash=last_hash,
                **{
                    **{key: value for key, value in row.items() if key != "created_at"},
                    "before": _jsonable(row.get("before")),
                    "after": _jsonable(row.get("after")),
                },
            )
            event.hash = event_hash(event)
            last_id, last_hash = event.id, event.hash
            pending.append(event)
            count += 1
            if len(pending) >= per_statement:
                _insert(cursor, sql, row_sql, fields, pending)
                pending = []
        if pending:
            _insert(cursor, sql, row_sql, fields, pending)
    AuditChainHead.objects.filter(pk=head.pk).update(last_id=last_id, last_hash=last_hash)
    return count


def _insert(cursor, sql: str, row_sql: str, fields: list, events: list[AuditEvent]) -> None:
    params: list = []
    for event in events:
        params.extend(field.get_db_prep_save(getattr(event, field.attname), connection) for field in fields)
    cursor.execute(sql + ", ".join([row_sql] * len(events)), params)


def event_hash(event: AuditEvent) -> str:
    """The hash over everything the event says and the hash before it."""
    content = [
        event.id,
        _moment(event.created_at),
        event.actor_id,
        event.actor_name,
        event.action,
        event.object_type,
        event.object_id,
        event.object_name,
        event.client_address,
        event.user_agent,
        event.request_id,
        event.before,
        event.after,
        event.prev_hash,
    ]
    return hashlib.sha256(_canonical(content).encode()).hexdigest()


def _locked_head() -> AuditChainHead:
    """The chain head, locked until the transaction ends; made on first use (or after a flush)."""
    head = AuditChainHead.objects.select_for_update().filter(pk=CHAIN_HEAD_ID).first()
    if head is not None:
        return head
    last = AuditEvent.objects.order_by("-id").only("id", "hash").first()
    anchor = AuditAnchor.objects.order_by("-last_removed_id").first()
    if last is not None:
        start = (last.id, last.hash)
    elif anchor is not None:
        start = (anchor.last_removed_id, anchor.last_removed_hash)
    else:
        start = (0, GENESIS_HASH)
    try:
        with transaction.atomic():
            AuditChainHead.objects.create(pk=CHAIN_HEAD_ID, last_id=start[0], last_hash=start[1])
    except IntegrityError:
        pass  # another writer made it first: wait for its lock below
    return AuditChainHead.objects.select_for_update().get(pk=CHAIN_HEAD_ID)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, cls=DjangoJSONEncoder)


def _jsonable(value: Any) -> Any:
    """The value as it reads back from a JSON column, so the hash is the same before and after storing.

    NUL characters are dropped: PostgreSQL stores none, in text or JSON.
    """
    if value is None:
        return None
    return _without_nul(json.loads(_canonical(value)))


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value


def _moment(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _printable(text: str) -> str:
    return "".join(char for char in text if char.isprintable())


# Snapshots: what `before` and `after` hold for the objects whose state matters.


def script_state(script) -> dict:
    version = script.current_version
    return {
        "name": script.name,
        "owner": script.owner.get_username(),
        "description": script.description,
        "is_global": script.is_global,
        "env_name": script.env_name,
        "version": version.number if version else None,
        "version_id": str(version.pk) if version else None,
    }


def dataset_state(dataset) -> dict:
    return {
        "name": dataset.name,
        "owner": dataset.owner.get_username(),
        "description": dataset.description,
        "is_global": dataset.is_global,
        "rows": dataset.row_count,
        "columns": dataset.column_count,
        "size_bytes": dataset.size_bytes,
        "schema": dataset.schema,
    }


def environment_state(environment) -> dict:
    return {
        "name": environment.name,
        "description": environment.description,
        "packages": environment.packages,
        "python": environment.python,
        "status": environment.status,
        "generation": environment.generation,
    }


def user_state(user) -> dict:
    groups = sorted(user.groups.values_list("name", flat=True))
    return {
        "username": user.get_username(),
        "is_active": user.is_active,
        "is_superuser": user.is_superuser,
        "groups": groups,
    }


def schedule_state(schedule) -> dict:
    return {
        "name": schedule.name,
        "owner": schedule.owner.get_username(),
        "script": f"{schedule.script.owner.get_username()}/{schedule.script.name}",
        "version": schedule.version.number if schedule.version else None,
        "parameters": schedule.parameters,
        "env_name": schedule.env_name,
        "service": schedule.service,
        "timeout_seconds": schedule.timeout_seconds,
        "cron": schedule.cron,
        "interval_seconds": schedule.interval_seconds,
        "time_zone": schedule.time_zone,
        "enabled": schedule.enabled,
        "missed_policy": schedule.missed_policy,
        "overlap_policy": schedule.overlap_policy,
        "max_retries": schedule.max_retries,
        "retry_user_errors": schedule.retry_user_errors,
    }


def notification_rule_state(rule) -> dict:
    """A rule as the trail keeps it: never its webhook secret."""
    return {
        "name": rule.name,
        "owner": rule.owner.get_username(),
        "script_id": str(rule.script_id) if rule.script_id else None,
        "schedule_id": str(rule.schedule_id) if rule.schedule_id else None,
        "on_failure": rule.on_failure,
        "on_success": rule.on_success,
        "longer_than_seconds": rule.longer_than_seconds,
        "channel": rule.channel,
        "url": rule.url,
        "enabled": rule.enabled,
    }


def run_state(run) -> dict:
    return {
        "script": f"{run.script_owner}/{run.script_name}",
        "version_id": str(run.script_version_id),
        "mode": run.mode,
        "service": run.service,
        "env_name": run.env_name,
        "parameters": run.parameters,
        "status": run.status,
    }


# Reading


@dataclasses.dataclass(frozen=True)
class Filters:
    actor: str = ""
    action: str = ""
    object_type: str = ""
    object_id: str = ""
    since: datetime | None = None
    until: datetime | None = None

    def apply(self, events: QuerySet[AuditEvent]) -> QuerySet[AuditEvent]:
        if self.actor:
            events = events.filter(actor_name=self.actor)
        if self.action:
            # "script." (or "script") matches every script action; a whole name matches itself.
            if self.action.endswith(".") or "." not in self.action:
                events = events.filter(action__startswith=self.action.rstrip(".") + ".")
            else:
                events = events.filter(action=self.action)
        if self.object_type:
            events = events.filter(object_type=self.object_type)
        if self.object_id:
            events = events.filter(object_id=self.object_id)
        if self.since:
            events = events.filter(created_at__gte=self.since)
        if self.until:
            events = events.filter(created_at__lt=self.until)
        return events

    def is_empty(self) -> bool:
        return not any(dataclasses.asdict(self).values())


def events_page(
    *, filters: Filters, before_id: int | None = None, limit: int = 50
) -> tuple[list[AuditEvent], int | None]:
    """One page of events, newest first, and the id to pass as `before_id` for the next page (or None)."""
    events = filters.apply(AuditEvent.objects.all())
    if before_id is not None:
        events = events.filter(id__lt=before_id)
    page = list(events.order_by("-id")[: limit + 1])
    if len(page) > limit:
        return page[:limit], page[limit - 1].id
    return page, None


# An export carries every stored field of an event, so the chain can be verified from it.
EXPORT_FIELDS = INSERT_FIELDS


# Fields people type (names, ids, the user agent): a CSV cell of theirs never starts a formula.
_TYPED = {3, 6, 7, 9, 10}
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def export_lines(*, filters: Filters, fmt: str, chunk: int = 2000) -> Iterator[str]:
    """Every event the filters match, newest first, as CSV (with a header) or JSON Lines.

    Read in keyset chunks by id (each one indexed query, whatever the depth), with before/after
    as the database's own JSON text, so nothing is decoded and encoded again: memory stays flat and
    the cost is the database's plus one line of formatting per event.
    """
    events = (
        filters.apply(AuditEvent.objects.all())
        .order_by("-id")
        .annotate(before_text=Cast("before", TextField()), after_text=Cast("after", TextField()))
    )
    columns = (*EXPORT_FIELDS[:11], "before_text", "after_text", "prev_hash", "hash")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    if fmt == "csv":
        writer.writerow(EXPORT_FIELDS)
    last: int | None = None
    while True:
        rows = events.filter(id__lt=last) if last is not None else events
        batch = list(rows.values_list(*columns)[:chunk])
        if not batch:
            break
        for row in batch:
            if fmt == "csv":
                writer.writerow(_csv_row(row))
            else:
                buffer.write(_json_line(row))
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        last = batch[-1][0]
        if len(batch) < chunk:
            break
    tail = buffer.getvalue()
    if tail:
        yield tail


def _csv_row(row: tuple) -> list:
    cells = list(row)
    cells[1] = _moment(cells[1])
    for index in _TYPED:
        if cells[index][:1] in _FORMULA_STARTS:
            cells[index] = "'" + cells[index]
    return cells


def _json_line(row: tuple) -> str:
    head = json.dumps(
        dict(zip(EXPORT_FIELDS[:11], (row[0], _moment(row[1]), *row[2:11]), strict=True)), ensure_ascii=False
    )
    return (
        f'{head[:-1]}, "before": {row[11] or "null"}, "after": {row[12] or "null"}, '
        f'"prev_hash": "{row[13]}", "hash": "{row[14]}"}}\n'
    )


def event_dict(event: AuditEvent) -> dict:
    row = {field: getattr(event, field) for field in EXPORT_FIELDS}
    row["created_at"] = _moment(event.created_at)
    return row


# Verifying and pruning


@dataclasses.dataclass(frozen=True)
class Verification:
    checked: int
    broken_id: int | None = None
    reason: str = ""
    anchor_id: int | None = None

    @property
    def ok(self) -> bool:
        return self.broken_id is None and not self.reason


def verify(*, chunk: int = 5000) -> Verification:
    """Walk the chain from its start (or the last anchor) and report the first event that breaks it.

    The chain head is read first and the walk stops at the event it names: events recorded while
    the walk goes on are left to the next verification, not mistaken for a broken tail.
    """
    head = AuditChainHead.objects.filter(pk=CHAIN_HEAD_ID).first()
    anchor = AuditAnchor.objects.order_by("-last_removed_id").first()
    previous = anchor.last_removed_hash if anchor else GENESIS_HASH
    last_id = anchor.last_removed_id if anchor else 0
    anchor_id = anchor.last_removed_id if anchor else None
    checked = 0
    events = AuditEvent.objects.filter(id__gt=last_id).order_by("id")
    if head is not None:
        events = events.filter(id__lte=head.last_id)
    for event in events.iterator(chunk_size=chunk):
        if event.id != last_id + 1:
            return Verification(checked, event.id, f"event #{last_id + 1} is missing before it", anchor_id)
        if event.prev_hash != previous:
            return Verification(checked, event.id, "its previous hash is not the hash of the event before", anchor_id)
        if event_hash(event) != event.hash:
            return Verification(checked, event.id, "its content does not match its hash (changed)", anchor_id)
        previous, last_id = event.hash, event.id
        checked += 1
    if head is not None and (head.last_id, head.last_hash) != (last_id, previous):
        return Verification(
            checked,
            last_id + 1,
            f"the chain head names event #{head.last_id}: events after #{last_id} are missing",
            anchor_id,
        )
    return Verification(checked, anchor_id=anchor_id)


@transaction.atomic
def prune(*, before: datetime, batch: int = 10000) -> AuditAnchor | None:
    """Remove the events older than `before` and leave an anchor: the kept chain still verifies.

    Recorded itself as an `audit.prune` event (the first after the anchor's, or a later one).
    """
    _locked_head()
    last = AuditEvent.objects.filter(created_at__lt=before).order_by("-id").only("id", "hash").first()
    if last is None:
        return None
    first_id = AuditEvent.objects.order_by("id").values_list("id", flat=True).first()
    anchor = AuditAnchor.objects.create(
        pruned_before=before,
        last_removed_id=last.id,
        last_removed_hash=last.hash,
        removed_count=AuditEvent.objects.filter(id__lte=last.id).count(),
    )
    start = first_id or 1
    while start <= last.id:
        end = min(start + batch - 1, last.id)
        # The one delete the trail allows: a prefix of the chain, behind an anchor.
        models.QuerySet.delete(AuditEvent.objects.filter(id__gte=start, id__lte=end))
        start = end + 1
    record(
        "audit.prune",
        object_type="audit",
        object_id=str(last.id),
        object_name=f"events up to #{last.id}",
        after={"pruned_before": _moment(before), "removed": anchor.removed_count, "anchor_hash": last.hash},
    )
    return anchor


def object_link(event: AuditEvent) -> str | None:
    """The URL of the object's current page, when it has one and still exists."""
    from django.core.exceptions import ValidationError
    from django.urls import NoReverseMatch, reverse

    from scripts_app.models import Dataset, Environment, Run, Script, ScriptVersion

    try:
        if event.object_type == "script" and Script.objects.filter(pk=event.object_id).exists():
            version = (event.after or {}).get("version") if isinstance(event.after, dict) else None
            if version and ScriptVersion.objects.filter(script_id=event.object_id, number=version).exists():
                return reverse("web:version_detail", args=[event.object_id, version])
            return reverse("web:script_detail", args=[event.object_id])
        if event.object_type == "dataset" and Dataset.objects.filter(pk=event.object_id).exists():
            return reverse("web:dataset_detail", args=[event.object_id])
        if event.object_type == "run" and Run.objects.filter(pk=event.object_id).exists():
            return reverse("web:run_detail", args=[event.object_id])
        if event.object_type == "environment":
            environment = Environment.objects.filter(pk=event.object_id).first()
            if environment is not None:
                return reverse("environments:detail", args=[environment.name])
    except (NoReverseMatch, ValueError, ValidationError):
        return None
    return None


def filters_from(params) -> Filters:
    """Filters from a query string (pages and API alike). since/until: a date (YYYY-MM-DD, until is
    inclusive) or an ISO date-time. A malformed value is refused, not ignored."""

    def text(name: str, limit: int) -> str:
        value = (params.get(name) or "").strip()
        if len(value) > limit or "\x00" in value:
            raise BadRequest(f"{name} is too long or holds a NUL character.")
        return value

    return Filters(
        actor=text("actor", 150),
        action=text("action", 64),
        object_type=text("object_type", 32),
        object_id=text("object_id", 64),
        since=_moment_param(text("since", 40), "since", end_of_day=False),
        until=_moment_param(text("until", 40), "until", end_of_day=True),
    )


def _moment_param(value: str, name: str, *, end_of_day: bool) -> datetime | None:
    if not value:
        return None
    try:
        moment = parse_datetime(value)
        if moment is None:
            day = parse_date(value)
            if day is None:
                raise ValueError(value)
            moment = datetime.combine(day + timedelta(days=1) if end_of_day else day, time.min)
    except ValueError:
        raise BadRequest(f"{name} {value!r} is not a date (YYYY-MM-DD) or an ISO date-time.") from None
    return timezone.make_aware(moment) if timezone.is_naive(moment) else moment


ACTIONS = (
    "auth.sign_in",
    "auth.sign_in_failed",
    "script.create",
    "script.new_version",
    "script.restore",
    "script.update",
    "script.make_global",
    "script.make_private",
    "script.grant",
    "script.revoke",
    "script.delete",
    "dataset.create",
    "dataset.replace",
    "dataset.update",
    "dataset.make_global",
    "dataset.make_private",
    "dataset.grant",
    "dataset.revoke",
    "dataset.delete",
    "environment.define",
    "environment.update",
    "environment.rebuild",
    "environment.build",
    "environment.delete",
    "user.create",
    "user.role",
    "user.activate",
    "user.deactivate",
    "token.issue",
    "token.refresh",
    "token.revoke",
    "token.personal_create",
    "run.submit",
    "run.cancel",
    "schedule.create",
    "schedule.update",
    "schedule.pause",
    "schedule.resume",
    "schedule.delete",
    "notification_rule.create",
    "notification_rule.update",
    "notification_rule.new_secret",
    "notification_rule.delete",
    "admin.add",
    "admin.change",
    "admin.delete",
    "audit.prune",
)
