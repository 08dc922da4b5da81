"""The users page: admins create users and give them a role (analyst, admin or auditor)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db.models import Prefetch
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from scripts_app import roles
from scripts_app.forms import ROLE_CHOICES, UserCreateForm, UserRoleForm
from scripts_app.services import users as user_services
from scripts_app.views.base import HtmxHttpRequest


def _require_admin(request: HtmxHttpRequest) -> None:
    if not roles.is_admin(request.user):
        raise PermissionDenied("Only admins manage users.")


@require_http_methods(["GET", "POST"])
@login_required
def user_list(request: HtmxHttpRequest) -> HttpResponse:
    _require_admin(request)
    form = UserCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.submit(
            lambda: user_services.user_create(
                username=form.cleaned_data["username"],
                password=form.cleaned_data["password"],
                role=form.cleaned_data["role"],
            )
        )
        if user is not None:
            messages.success(request, f"User {user.username} created.")
            return redirect("web:user_list")
    users = (
        get_user_model()
        .objects.order_by("username")
        .prefetch_related(Prefetch("groups", queryset=Group.objects.filter(name__in=roles.ROLES)))
    )
    rows = [(user, [group.name for group in user.groups.all()]) for user in users]
    return render(
        request,
        "users/list.html",
        {"form": form, "rows": rows, "role_choices": ROLE_CHOICES},
        status=422 if form.errors else 200,
    )


@require_POST
@login_required
def user_update(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    _require_admin(request)
    user = get_object_or_404(get_user_model(), pk=pk)
    form = UserRoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose a role.")
    elif user.pk == request.user.pk:
        messages.error(request, "You cannot change your own role or deactivate yourself.")
    elif user.is_superuser:
        messages.error(request, f"{user.username} is a superuser: change them in Django's admin.")
    else:
        user_services.user_set_role(user=user, role=form.cleaned_data["role"])
        user_services.user_set_active(user=user, active=form.cleaned_data["is_active"])
        messages.success(request, f"{user.username} saved.")
    return redirect("web:user_list")
