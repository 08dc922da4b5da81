"""The notifications pages: rules (create, edit, test, delete) and every delivery with its answer."""

from __future__ import annotations

from uuid import UUID

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST
from django_htmx.http import HttpResponseStopPolling

from scripts_app import roles
from scripts_app.errors import NotFound, OmlError
from scripts_app.errors import PermissionDenied as OmlPermissionDenied
from scripts_app.forms import NotificationRuleForm
from scripts_app.models import NotificationDelivery, NotificationRule
from scripts_app.services import notifications
from scripts_app.views.base import HtmxHttpRequest, paginate

FORM_FIELDS = (
    "name",
    "script",
    "schedule",
    "on_failure",
    "on_success",
    "longer_than_seconds",
    "channel",
    "url",
    "enabled",
)
# Which form field a service refusal belongs to.
ERROR_FIELDS = {1081: "url", 1082: "channel"}
RECENT_DELIVERIES = 20
OPEN = (NotificationDelivery.Status.PENDING, NotificationDelivery.Status.SENDING)


@require_http_methods(["GET", "POST"])
@login_required
def rule_list(request: HtmxHttpRequest) -> HttpResponse:
    may_create = not roles.is_read_only(request.user)
    form = NotificationRuleForm(request.POST or None, user=request.user)
    if request.method == "POST":
        if not may_create:
            raise PermissionDenied("Auditors have read-only access.")
        if form.is_valid():
            rule = _save(form, lambda changes: notifications.rule_create(owner=request.user, **changes))
            if rule is not None:
                messages.success(request, f"Notification rule {rule.name!r} created.")
                return redirect("web:notification_detail", rule.pk)
    deliveries = notifications.deliveries_visible_to(request.user)
    if request.htmx and request.htmx.target == "deliveries":
        return _deliveries_partial(request, deliveries[:RECENT_DELIVERIES], show_rule=True)
    rules = notifications.rules_visible_to(request.user).select_related("script__owner")
    context = {
        "form": form,
        "may_create": may_create,
        "rules": paginate(request, rules, 50),
        "sees_everything": roles.sees_everything(request.user),
        **_deliveries_context(request, deliveries[:RECENT_DELIVERIES], show_rule=True),
    }
    return render(request, "notifications/list.html", context, status=422 if form.errors else 200)


@require_http_methods(["GET", "POST"])
@login_required
def rule_detail(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    rule = _visible_rule(request, pk)
    may_change = _may_change(request, rule)
    deliveries = rule.deliveries.select_related("rule")
    if request.htmx and request.htmx.target == "deliveries":
        return _deliveries_partial(request, deliveries[:100], show_rule=False)
    initial = {field: getattr(rule, field) for field in FORM_FIELDS}
    form = NotificationRuleForm(request.POST or None, user=rule.owner, initial=initial)
    if request.method == "POST":
        if not may_change:
            raise PermissionDenied("You may not change this rule.")
        if form.is_valid() and _save(form, lambda changes: notifications.rule_update(rule=rule, **changes)):
            messages.success(request, f"Notification rule {rule.name!r} saved.")
            return redirect("web:notification_detail", rule.pk)
        rule.refresh_from_db()  # The page shows the rule as saved, the form what was typed.
    context = {
        "rule": rule,
        "form": form,
        "may_change": may_change,
        "shows_secret": notifications.shows_secret(request.user, rule),
        **_deliveries_context(request, deliveries[:100], show_rule=False),
        "signature_header": notifications.SIGNATURE_HEADER,
        "timestamp_header": notifications.TIMESTAMP_HEADER,
    }
    return render(request, "notifications/detail.html", context, status=422 if form.errors else 200)


@require_POST
@login_required
def rule_test(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    rule = _rule_for_change(request, pk)
    try:
        notifications.rule_test_send(rule=rule)
    except OmlError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, "Test notification queued: its delivery shows below once a worker sends it.")
    return redirect("web:notification_detail", rule.pk)


@require_POST
@login_required
def rule_rotate_secret(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    rule = _rule_for_change(request, pk)
    if rule.channel != NotificationRule.Channel.WEBHOOK or not notifications.shows_secret(request.user, rule):
        raise PermissionDenied("Only the owner of a webhook rule replaces its secret.")
    notifications.rule_rotate_secret(rule=rule)
    messages.success(request, "New secret made: the old one no longer signs deliveries.")
    return redirect("web:notification_detail", rule.pk)


@require_POST
@login_required
def rule_delete(request: HtmxHttpRequest, pk: UUID) -> HttpResponse:
    rule = _rule_for_change(request, pk)
    notifications.rule_delete(rule=rule)
    messages.success(request, f"Notification rule {rule.name!r} deleted, with its deliveries.")
    return redirect("web:notification_list")


def _save(form: NotificationRuleForm, save) -> NotificationRule | None:
    changes = {field: form.cleaned_data[field] for field in FORM_FIELDS}
    changes["url"] = changes["url"] or ""
    try:
        return save(changes)
    except OmlError as error:
        form.add_error(ERROR_FIELDS.get(int(error.code)), error.message)
        return None


def _deliveries_context(request: HtmxHttpRequest, deliveries, *, show_rule: bool) -> dict:
    deliveries = list(deliveries)
    return {
        "deliveries": deliveries,
        "deliveries_url": request.path,
        "show_rule": show_rule,
        # The list refreshes itself while a delivery waits or is being sent.
        "polling": any(delivery.status in OPEN for delivery in deliveries),
    }


def _deliveries_partial(request: HtmxHttpRequest, deliveries, *, show_rule: bool) -> HttpResponse:
    context = _deliveries_context(request, deliveries, show_rule=show_rule)
    response = render(request, "notifications/_deliveries.html", context)
    if not context["polling"]:
        response.status_code = HttpResponseStopPolling.status_code
    return response


def _visible_rule(request: HtmxHttpRequest, pk: UUID) -> NotificationRule:
    try:
        return notifications.rule_get(user=request.user, rule_id=pk)
    except NotFound:
        raise Http404("No such notification rule.") from None


def _may_change(request: HtmxHttpRequest, rule: NotificationRule) -> bool:
    return not roles.is_read_only(request.user) and (rule.owner_id == request.user.pk or roles.is_admin(request.user))


def _rule_for_change(request: HtmxHttpRequest, pk: UUID) -> NotificationRule:
    try:
        return notifications.rule_for_change(user=request.user, rule_id=pk)
    except NotFound:
        raise Http404("No such notification rule.") from None
    except OmlPermissionDenied as error:
        raise PermissionDenied(error.message) from None
