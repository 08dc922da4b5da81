"""Notifications: tell a rule's owner when one of their runs fails, succeeds or runs long.

How a notification travels (docs/notifications.md):
1. A run reaches a final state (RunQuerySet.finish sends `run_finished`). Once that is committed, one
   PENDING delivery is recorded per matching rule and event, and its id is published on the
   notifications queue. No SMTP or HTTP happens in the run's process or the web request.
2. The reaper's loop calls `check_long_running()`: a run still running past a rule's N seconds gets
   its delivery then (a run that finished past N gets it from step 1).
3. A worker's `deliver` task claims the delivery (PENDING -> SENDING, a conditional UPDATE: a second
   message for it does nothing), sends it and records the answer. A failure with attempts left adds
   the next attempt as a new row, due after an exponential backoff, so every try stays visible.
4. `sweep()`, also in the reaper's loop, publishes again due deliveries whose message was lost, and
   takes back those whose worker died while sending.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import secrets
import smtplib
import socket
import ssl
import time
import uuid
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.core.mail import EmailMessage
from django.db import IntegrityError, connection, transaction
from django.db.models import Field, Model, Q, QuerySet
from django.dispatch import receiver
from django.urls import reverse
from django.utils import timezone

from scripts_app import roles
from scripts_app.errors import ErrorCode, NotFound, OmlError, PermissionDenied, Unavailable
from scripts_app.models import NotificationDelivery, NotificationRule, Run, Schedule, Script, run_finished
from scripts_app.services import audit

logger = logging.getLogger(__name__)

Event = NotificationDelivery.Event
Channel = NotificationRule.Channel
Status = NotificationDelivery.Status

SIGNATURE_HEADER = "X-Omlweb-Signature"
TIMESTAMP_HEADER = "X-Omlweb-Timestamp"
DELIVERY_HEADER = "X-Omlweb-Delivery"
EVENT_HEADER = "X-Omlweb-Event"
# What a delivery keeps of the other side's answer.
EXCERPT_CHARS = 1000
ERROR_MESSAGE_CHARS = 2000
# A delivery left SENDING this long lost its worker; a PENDING one due this long ago lost its message.
SENDING_LOST_SECONDS = 300
REPUBLISH_AFTER_SECONDS = 60
LONG_RUNNING_BATCH = 200


class RuleInvalid(OmlError):
    code = ErrorCode.NOTIFICATION_RULE_INVALID


class WebhookRefused(OmlError):
    code = ErrorCode.WEBHOOK_URL_REFUSED


def notify_queue() -> str:
    """The queue every served worker also consumes (like the builds' queue)."""
    return f"{settings.OMLWEB_QUEUE_PREFIX}.notifications"


# Rules


def rules_visible_to(user) -> QuerySet[NotificationRule]:
    """Admins and auditors read every rule; an analyst their own."""
    rules = NotificationRule.objects.select_related("owner", "script")
    return rules if roles.sees_everything(user) else rules.filter(owner=user)


def rule_get(*, user, rule_id) -> NotificationRule:
    try:
        pk = uuid.UUID(str(rule_id))
    except ValueError:
        raise NotFound(f"Notification rule {rule_id} does not exist.") from None
    rule = rules_visible_to(user).filter(pk=pk).first()
    if rule is None:
        raise NotFound(f"Notification rule {rule_id} does not exist.")
    return rule


def rule_for_change(*, user, rule_id) -> NotificationRule:
    """A rule the user may change, delete or test: their own, or any for an admin; never for an auditor."""
    rule = rule_get(user=user, rule_id=rule_id)
    if roles.is_read_only(user):
        raise PermissionDenied("Auditors have read-only access: they do not change notification rules.")
    if rule.owner_id != user.pk and not roles.is_admin(user):
        raise NotFound(f"Notification rule {rule_id} does not exist.")
    return rule


def shows_secret(user, rule: NotificationRule) -> bool:
    """Only the owner reads a webhook's secret: with it anyone could forge their notifications."""
    return rule.owner_id == user.pk


def rule_create(
    *,
    owner,
    name: str,
    channel: str,
    script: Script | None = None,
    schedule: Schedule | None = None,
    on_failure: bool = True,
    on_success: bool = False,
    longer_than_seconds: int | None = None,
    url: str = "",
    enabled: bool = True,
) -> NotificationRule:
    if roles.is_read_only(owner):
        raise PermissionDenied("Auditors have read-only access: they do not create notification rules.")
    rule = NotificationRule(owner=owner)
    _apply(
        rule,
        name=name,
        channel=channel,
        script=script,
        schedule=schedule,
        on_failure=on_failure,
        on_success=on_success,
        longer_than_seconds=longer_than_seconds,
        url=url,
        enabled=enabled,
    )
    if rule.channel == Channel.WEBHOOK:
        rule.secret = new_secret()
    with transaction.atomic():
        rule.save()
        audit.record("notification_rule.create", obj=rule, actor=owner, after=audit.notification_rule_state(rule))
    return rule


def rule_update(*, rule: NotificationRule, **changes) -> NotificationRule:
    """Change the given fields of the rule, checked as when it was created."""
    before = audit.notification_rule_state(NotificationRule.objects.get(pk=rule.pk))
    _apply(rule, **changes)
    if rule.channel == Channel.WEBHOOK and not rule.secret:
        rule.secret = new_secret()
    with transaction.atomic():
        rule.save()
        if (after := audit.notification_rule_state(rule)) != before:
            audit.record("notification_rule.update", obj=rule, before=before, after=after)
    return rule


def rule_rotate_secret(*, rule: NotificationRule) -> NotificationRule:
    rule.secret = new_secret()
    with transaction.atomic():
        rule.save(update_fields=["secret", "updated_at"])
        audit.record("notification_rule.new_secret", obj=rule)
    return rule


def rule_delete(*, rule: NotificationRule) -> None:
    with transaction.atomic():
        audit.record("notification_rule.delete", obj=rule, before=audit.notification_rule_state(rule))
        rule.delete()


def new_secret() -> str:
    return secrets.token_hex(32)


def _apply(rule: NotificationRule, **changes) -> None:
    allowed = {
        "name",
        "channel",
        "script",
        "schedule",
        "on_failure",
        "on_success",
        "longer_than_seconds",
        "url",
        "enabled",
    }
    unknown = set(changes) - allowed
    if unknown:
        raise TypeError(f"unknown rule fields: {sorted(unknown)}")
    for field, value in changes.items():
        setattr(rule, field, value)
    rule.name = (rule.name or "").strip()
    if not rule.name or len(rule.name) > 100:
        raise RuleInvalid("A rule needs a name of 1 to 100 characters.")
    if rule.channel not in Channel.values:
        raise RuleInvalid(f"The channel must be one of {', '.join(Channel.values)}.")
    if rule.longer_than_seconds is not None and not 1 <= rule.longer_than_seconds <= 7 * 24 * 3600:
        raise RuleInvalid("'Longer than' is a number of seconds from 1 to 604800 (a week).")
    if not (rule.on_failure or rule.on_success or rule.longer_than_seconds):
        raise RuleInvalid("Choose at least one event: on failure, on success, or longer than N seconds.")
    if rule.script is not None and not roles.can_view_script(rule.owner, rule.script):
        raise RuleInvalid("The rule's owner may not read that script.")
    if rule.schedule is not None and rule.schedule.owner_id != rule.owner_id:
        # A schedule's runs are its owner's: a rule only ever reports its own owner's runs.
        raise RuleInvalid("A rule may only follow one of its owner's own schedules.")
    if rule.channel == Channel.EMAIL:
        rule.url = ""
        rule.secret = ""
        if not rule.owner.email:
            raise RuleInvalid(
                "Your account has no e-mail address: ask an admin to set one, or use a webhook.",
                code=ErrorCode.NOTIFICATION_NO_EMAIL,
            )
    else:
        rule.url = check_webhook_url(rule.url or "")


# Webhook addresses (SSRF)


def check_webhook_url(url: str) -> str:
    """The URL, if it may be a webhook: http(s), a host, no credentials, not a refused address literal.

    Host names are resolved, and their addresses checked, at each delivery (DNS may change).
    """
    url = url.strip()
    if not url:
        raise WebhookRefused("A webhook needs a URL.")
    if len(url) > 2000:
        raise WebhookRefused("A webhook URL has at most 2000 characters.")
    if any(ord(char) < 33 or ord(char) == 127 for char in url):
        raise WebhookRefused("A webhook URL may not contain spaces or control characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise WebhookRefused(f"The webhook URL is not valid: {error}.") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise WebhookRefused("A webhook URL must start with http:// or https://.")
    if not parts.hostname:
        raise WebhookRefused("A webhook URL must name a host.")
    if parts.username is not None or parts.password is not None:
        raise WebhookRefused("A webhook URL may not carry a user name or password: the rule's secret signs it.")
    if port == 0:
        raise WebhookRefused("A webhook URL may not use port 0.")
    try:
        literal = ipaddress.ip_address(parts.hostname)
    except ValueError:
        literal = None
    if literal is not None:
        refusal = address_refusal(literal)
        if refusal:
            raise WebhookRefused(refusal)
    return url


def _allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(entry, strict=False) for entry in settings.OMLWEB_WEBHOOK_ALLOWED_NETWORKS]


def address_refusal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why a webhook may not go to this address, or None. Non-public ones only if allowed by the setting."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in _allowed_networks()):
        return None
    if not address.is_global or address.is_multicast:
        return (
            f"Webhooks to {address} are refused: it is not a public address "
            "(an admin may allow its network with OMLWEB_WEBHOOK_ALLOWED_NETWORKS)."
        )
    return None


def _resolve(host: str, port: int) -> str:
    """One address of the host that webhooks may reach; refused if any of its addresses may not be reached."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise WebhookRefused(f"The host {host} could not be resolved: {error.strerror}.") from None
    # A host name resolves to AF_INET/AF_INET6 entries only, whose address (item 0) is already text.
    addresses = [str(info[4][0]) for info in infos]
    for address in addresses:
        refusal = address_refusal(ipaddress.ip_address(address.split("%")[0]))
        if refusal:
            raise WebhookRefused(refusal)
    return addresses[0]


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to the address that was checked, not to whatever the name resolves to a moment later."""

    def __init__(self, host: str, port: int, *, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, *, address: str, timeout: float) -> None:
        self._ssl_context = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self._ssl_context)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._ssl_context.wrap_socket(sock, server_hostname=self.host)


# Signing


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=` and the HMAC-SHA256 of "<timestamp>.<body>" under the rule's secret.

    The timestamp is signed with the body, so a captured request replayed later cannot carry a fresh
    timestamp; receivers refuse timestamps older than a few minutes.
    """
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify(secret: str, timestamp: str, body: bytes, header: str, *, now: float | None = None, tolerance=300) -> bool:
    """What a receiver does (documented, and used by the tests' receiver)."""
    try:
        age = abs((now or time.time()) - int(timestamp))
    except ValueError:
        return False
    return age <= tolerance and hmac.compare_digest(signature(secret, timestamp, body), header)


# The run's summary


def absolute(path: str) -> str:
    return f"{settings.OMLWEB_BASE_URL}{path}"


def run_summary(run: Run) -> dict:
    version = run.script_version
    return {
        "id": str(run.pk),
        "script": run.script_name,
        "scriptOwner": run.script_owner,
        "scriptId": str(version.script_id) if version.script_id else None,
        "version": version.number,
        "user": run.user.get_username(),
        "status": run.status,
        "mode": run.mode,
        "kind": run.kind,
        "service": run.service,
        "attempts": run.attempts,
        "error": (
            {"code": run.error_code, "message": run.error_message[:ERROR_MESSAGE_CHARS]}
            if run.error_code or run.error_message
            else None
        ),
        "createdAt": _iso(run.created_at),
        "startedAt": _iso(run.started_at),
        "finishedAt": _iso(run.finished_at),
        "durationSeconds": run.duration_seconds,
        "links": {
            "page": absolute(reverse("web:run_detail", args=[run.pk])),
            "api": (
                absolute(reverse("oml-job", kwargs={"version": "v2", "job_id": str(run.pk)}))
                if run.mode == Run.Mode.ASYNC
                else None
            ),
        },
    }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def payload(*, rule: NotificationRule, event: str, run: Run | None, now: datetime) -> dict:
    body: dict = {
        "event": event,
        "rule": {"id": str(rule.pk), "name": rule.name},
        "run": run_summary(run) if run is not None else None,
    }
    if event == Event.LONG_RUNNING and run is not None:
        assert run.started_at is not None  # only runs that started run long
        body["runningSeconds"] = round(((run.finished_at or now) - run.started_at).total_seconds(), 3)
        body["longerThanSeconds"] = rule.longer_than_seconds
    if event == Event.TEST:
        body["message"] = "A test notification from omlweb: this rule's channel works."
    return body


# Matching runs to rules (the hook)


@receiver(run_finished)
def runs_finished(sender: type[Run], pks: list, **kwargs: object) -> None:
    """Runs reached a final state and it is committed (RunQuerySet.finish): their notifications go out.

    Never raises and never waits on SMTP or HTTP: at most it records deliveries and publishes their ids.
    """
    for run_id in pks:
        _notify_quietly(run_id)


def _notify_quietly(run_id) -> None:
    try:
        notify_finished(run_id=run_id)
    except Exception:
        # Notifications must never fail a run; the rules are still there for the next one.
        logger.exception("Run %s: its notifications could not be queued", run_id)


def rules_for_run(run: Run) -> QuerySet[NotificationRule]:
    """The enabled rules of the run's own user that cover it: all their runs, runs of its script, or
    runs of the schedule that started it."""
    return NotificationRule.objects.select_related("owner").filter(
        Q(script__isnull=True) | Q(script_id=run.script_version.script_id),
        Q(schedule__isnull=True) | Q(schedule_id=run.schedule_id),
        owner_id=run.user_id,
        enabled=True,
    )


# What a notification never reads of a run: it runs after every run, so it does not fetch the value
# (up to OMLWEB_RUN_MAX_RESULT_MB of JSON) nor the streams.
UNREAD_FIELDS = ("result_json", "stdout", "stderr", "traceback", "pieces")


def notify_finished(*, run_id) -> list[NotificationDelivery]:
    if not _owner_has_rules(run_id):
        # Most runs' users have no rule: one query, and the run is not read (every job ends here).
        return []
    run = Run.objects.select_related("script_version", "user").defer(*UNREAD_FIELDS).filter(pk=run_id).first()
    if run is None or not run.is_finished:
        return []
    if run.status in (Run.Status.FAILED, Run.Status.TIMED_OUT):
        outcome = Event.FAILURE
    elif run.status == Run.Status.SUCCEEDED:
        outcome = Event.SUCCESS
    else:
        outcome = None  # CANCELLED: someone asked for it; no failure to report.
    duration = run.duration_seconds
    created = []
    now = timezone.now()
    for rule in rules_for_run(run):
        events: list[Event] = []
        if (outcome == Event.FAILURE and rule.on_failure) or (outcome == Event.SUCCESS and rule.on_success):
            events.append(outcome)
        if rule.longer_than_seconds and duration is not None and duration > rule.longer_than_seconds:
            events.append(Event.LONG_RUNNING)
        for event in events:
            delivery = _record(rule=rule, run=run, event=event, now=now)
            if delivery is not None:
                created.append(delivery)
    for delivery in created:
        publish(delivery)
    return created


def _owner_has_rules(run_id) -> bool:
    """Whether the run's user has an enabled rule: `NotificationRule.objects.filter(owner_id__in=
    Run.objects.filter(pk=run_id).values("user_id"), enabled=True).exists()`'s statement, written once
    per process (`_has_rules_sql`; it runs after every run, and building it through the ORM took longer
    than the database takes to answer it)."""
    pk = _field(Run, "id").get_db_prep_value(run_id, connection)
    with connection.cursor() as cursor:
        cursor.execute(_has_rules_sql(connection.vendor), [True, pk])
        return cursor.fetchone() is not None


def _field(model: type[Model], name: str) -> Field:
    field = model._meta.get_field(name)
    assert isinstance(field, Field)
    assert field.column
    return field


@functools.cache
def _has_rules_sql(vendor: str) -> str:
    def column(model: type[Model], name: str) -> str:
        return connection.ops.quote_name(str(_field(model, name).column))

    rules, runs = (connection.ops.quote_name(model._meta.db_table) for model in (NotificationRule, Run))
    return (
        f"SELECT 1 FROM {rules} WHERE {column(NotificationRule, 'enabled')} = %s "
        f"AND {column(NotificationRule, 'owner')} IN (SELECT U0.{column(Run, 'user')} FROM {runs} U0 "
        f"WHERE U0.{column(Run, 'id')} = %s) LIMIT 1"
    )


def check_long_running(*, now: datetime | None = None) -> list[NotificationDelivery]:
    """Runs still running past a rule's `longer_than_seconds` get their delivery (once per rule and run)."""
    now = now or timezone.now()
    created = []
    for rule in NotificationRule.objects.select_related("owner").filter(enabled=True, longer_than_seconds__gt=0):
        assert rule.longer_than_seconds is not None  # filtered above
        already = NotificationDelivery.objects.filter(rule=rule, event=Event.LONG_RUNNING, run__isnull=False)
        late = (
            Run.objects.select_related("script_version", "user")
            .filter(
                user_id=rule.owner_id,
                status=Run.Status.RUNNING,
                started_at__lt=now - timedelta(seconds=rule.longer_than_seconds),
            )
            .exclude(pk__in=already.values("run_id"))
        )
        if rule.script_id:
            late = late.filter(script_version__script_id=rule.script_id)
        if rule.schedule_id:
            late = late.filter(schedule_id=rule.schedule_id)
        for run in late[:LONG_RUNNING_BATCH]:
            delivery = _record(rule=rule, run=run, event=Event.LONG_RUNNING, now=now)
            if delivery is not None:
                created.append(delivery)
    for delivery in created:
        publish(delivery)
    return created


def _record(*, rule: NotificationRule, run: Run | None, event: str, now: datetime) -> NotificationDelivery | None:
    """The first attempt of one notification; None when it was recorded before (a second report)."""
    delivery = NotificationDelivery(
        rule=rule,
        run=run,
        event=event,
        channel=rule.channel,
        target=rule.url if rule.channel == Channel.WEBHOOK else rule.owner.email,
        payload=payload(rule=rule, event=event, run=run, now=now),
        not_before=now,
    )
    try:
        with transaction.atomic():
            delivery.save(force_insert=True)
    except IntegrityError:
        return None
    return delivery


def rule_test_send(*, rule: NotificationRule) -> NotificationDelivery:
    """Queue a test notification through the rule's channel; the answer shows in its deliveries."""
    delivery = _record(rule=rule, run=None, event=Event.TEST, now=timezone.now())
    assert delivery is not None  # a test has no run: the uniqueness constraint never applies.
    try:
        publish(delivery, raise_errors=True)
    except Exception as error:
        delivery.delete()
        raise Unavailable(
            "The job queue (broker) is unavailable: the test notification could not be queued. Try again shortly.",
            code=ErrorCode.NOTIFICATIONS_UNAVAILABLE,
        ) from error
    return delivery


def publish(delivery: NotificationDelivery, *, countdown: float | None = None, raise_errors: bool = False) -> None:
    from scripts_app.tasks import deliver_notification

    try:
        deliver_notification.apply_async(
            args=(str(delivery.pk),),
            queue=notify_queue(),
            countdown=countdown,  # type: ignore[arg-type]  # None (deliver now) is Celery's own default
        )
    except Exception:
        if raise_errors:
            raise
        # The row stays PENDING: the reaper's sweep publishes it again.
        logger.exception("Notification %s: publishing to the broker failed", delivery.pk)


# Delivering (in a worker)


def deliver(*, delivery_id) -> NotificationDelivery | None:
    """Send one delivery and record the answer; schedule the next attempt when it failed.

    None when there is nothing to do: the delivery is gone, not due, or claimed by another worker.
    """
    now = timezone.now()
    claimed = NotificationDelivery.objects.filter(
        pk=delivery_id, status=Status.PENDING, not_before__lte=now + timedelta(seconds=1)
    ).update(status=Status.SENDING, started_at=now)
    if not claimed:
        return None
    delivery = NotificationDelivery.objects.select_related("rule__owner").get(pk=delivery_id)
    delivery.status_code, delivery.response_excerpt, delivery.error = None, "", ""
    retry = True
    try:
        if delivery.channel == Channel.EMAIL:
            _send_email(delivery)
        else:
            _post_webhook(delivery)
    except WebhookRefused as error:
        # The address is refused by this service's own rule: trying again would not change that.
        delivery.error = error.message
        retry = False
    except _NoAddress as error:
        delivery.error = str(error)
        retry = False
    except Exception as error:
        delivery.error = _describe(error)
        delivery.status_code = _smtp_code(error)
    succeeded = not delivery.error and (
        delivery.channel == Channel.EMAIL or (delivery.status_code is not None and 200 <= delivery.status_code < 300)
    )
    if not succeeded and not delivery.error:
        delivery.error = f"The receiver answered HTTP {delivery.status_code}."
    delivery.status = Status.SENT if succeeded else Status.FAILED
    delivery.finished_at = timezone.now()
    recorded = NotificationDelivery.objects.filter(pk=delivery.pk).update(
        status=delivery.status,
        status_code=delivery.status_code,
        response_excerpt=delivery.response_excerpt,
        error=delivery.error,
        finished_at=delivery.finished_at,
    )
    if not recorded:
        return None  # Its rule was deleted while it was being sent: nothing to record or retry.
    if not succeeded and retry and delivery.attempt < settings.OMLWEB_NOTIFY_MAX_ATTEMPTS:
        _schedule_retry(delivery)
    return delivery


def _smtp_code(error: Exception) -> int | None:
    """The SMTP reply code of a refusal (a whole message's, or the first refused recipient's)."""
    if isinstance(error, smtplib.SMTPResponseException):
        return error.smtp_code if error.smtp_code > 0 else None
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        for code, _ in error.recipients.values():
            return code
    return None


def _describe(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return f"{type(error).__name__}: {text}"[:EXCERPT_CHARS]


def backoff_seconds(attempt: int) -> float:
    """The wait after failed attempt `attempt` (1, 2, ...): the base, then doubling."""
    return settings.OMLWEB_NOTIFY_BACKOFF_SECONDS * 2 ** (attempt - 1)


def _schedule_retry(delivery: NotificationDelivery) -> None:
    wait = backoff_seconds(delivery.attempt)
    following = NotificationDelivery(
        rule=delivery.rule,
        run_id=delivery.run_id,
        event=delivery.event,
        channel=delivery.channel,
        target=delivery.target,
        attempt=delivery.attempt + 1,
        payload=delivery.payload,
        not_before=timezone.now() + timedelta(seconds=wait),
    )
    try:
        with transaction.atomic():
            following.save(force_insert=True)
    except IntegrityError:
        return
    publish(following, countdown=wait)


class _NoAddress(Exception):
    pass


def _send_email(delivery: NotificationDelivery) -> None:
    if not delivery.target:
        raise _NoAddress("The rule's owner has no e-mail address.")
    subject, text = email_text(delivery.payload)
    message = EmailMessage(subject=subject, body=text, to=[delivery.target])
    message.extra_headers = {"X-Omlweb-Event": delivery.event, DELIVERY_HEADER: str(delivery.pk)}
    sent = message.send(fail_silently=False)
    delivery.response_excerpt = f"Accepted by {settings.EMAIL_HOST}:{settings.EMAIL_PORT}" if sent else ""
    if not sent:
        delivery.error = "The e-mail backend sent nothing."


def email_text(body: dict) -> tuple[str, str]:
    run = body.get("run")
    event = body["event"]
    if run is None:
        return "[omlweb] Test notification", f"{body.get('message', '')}\n\nRule: {body['rule']['name']}\n"
    what = {
        Event.FAILURE: f"ended {run['status']}",
        Event.SUCCESS: "succeeded",
        Event.LONG_RUNNING: f"has run longer than {body.get('longerThanSeconds')} s",
        Event.TEST: "test",
    }[event]
    subject = f"[omlweb] {run['script']} v{run['version']} {what}"
    lines = [
        f"The run {run['id']} of {run['scriptOwner']}/{run['script']} (version {run['version']}) {what}.",
        "",
        f"Status:   {run['status']}",
        f"User:     {run['user']}",
        f"Mode:     {run['mode']} ({run['kind']}, {run['service']})",
        f"Created:  {run['createdAt']}",
        f"Started:  {run['startedAt'] or '-'}",
        f"Finished: {run['finishedAt'] or '-'}",
    ]
    if run["durationSeconds"] is not None:
        lines.append(f"Duration: {run['durationSeconds']:.3f} s")
    if run["error"]:
        lines += ["", f"Error {run['error']['code']}: {run['error']['message']}"]
    lines += ["", f"Run page: {run['links']['page']}"]
    if run["links"]["api"]:
        lines.append(f"API:      {run['links']['api']}")
    lines += ["", f"Sent by the notification rule {body['rule']['name']!r}."]
    return subject, "\n".join(lines) + "\n"


def _post_webhook(delivery: NotificationDelivery) -> None:
    url = check_webhook_url(delivery.target)
    parts = urlsplit(url)
    https = parts.scheme.lower() == "https"
    port = parts.port or (443 if https else 80)
    address = _resolve(parts.hostname or "", port)
    body = json.dumps(delivery.payload, separators=(",", ":"), sort_keys=True).encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "omlweb-notifications/1",
        SIGNATURE_HEADER: signature(delivery.rule.secret, timestamp, body),
        TIMESTAMP_HEADER: timestamp,
        DELIVERY_HEADER: str(delivery.pk),
        EVENT_HEADER: delivery.event,
    }
    connection_class = _PinnedHTTPSConnection if https else _PinnedHTTPConnection
    connection = connection_class(
        parts.hostname or "", port, address=address, timeout=settings.OMLWEB_WEBHOOK_TIMEOUT_SECONDS
    )
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        delivery.status_code = response.status
        # Redirects are not followed: a 3xx is an answer like any other, and not a success.
        delivery.response_excerpt = response.read(EXCERPT_CHARS).decode("utf-8", errors="replace")
    finally:
        connection.close()


def sweep(*, now: datetime | None = None) -> list[str]:
    """Take back deliveries whose worker died mid-send, and publish again due ones whose message was lost."""
    now = now or timezone.now()
    NotificationDelivery.objects.filter(
        status=Status.SENDING, started_at__lt=now - timedelta(seconds=SENDING_LOST_SECONDS)
    ).update(status=Status.PENDING, started_at=None)
    due = NotificationDelivery.objects.filter(
        status=Status.PENDING, not_before__lt=now - timedelta(seconds=REPUBLISH_AFTER_SECONDS)
    ).order_by("not_before")[:500]
    republished = []
    for delivery in due:
        # Renewed, so the next pass does not publish it again while this message waits in the queue.
        if NotificationDelivery.objects.filter(pk=delivery.pk, status=Status.PENDING).update(not_before=now):
            publish(delivery)
            republished.append(str(delivery.pk))
    return republished


# Reading deliveries


def deliveries_visible_to(user) -> QuerySet[NotificationDelivery]:
    deliveries = NotificationDelivery.objects.select_related("rule", "rule__owner")
    return deliveries if roles.sees_everything(user) else deliveries.filter(rule__owner=user)
