"""The API tokens page: create (shown once), see last use, revoke personal tokens."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from scripts_app.forms import TokenForm
from scripts_app.models import AccessToken
from scripts_app.services import tokens as token_services
from scripts_app.views.base import HtmxHttpRequest


@require_http_methods(["GET", "POST"])
@login_required
def token_list(request: HtmxHttpRequest) -> HttpResponse:
    user = request.user
    assert user.is_authenticated  # login_required
    form = TokenForm(request.POST or None)
    new_token = None
    if request.method == "POST" and form.is_valid():
        # Rendered, not redirected: the raw token exists only in this response and is never stored.
        new_token, _ = token_services.personal_token_create(user=request.user, name=form.cleaned_data["name"])
        form = TokenForm()
    tokens = AccessToken.objects.filter(user=user, kind=AccessToken.Kind.PERSONAL).order_by("revoked_at", "-created_at")
    response = render(
        request,
        "tokens/list.html",
        {"form": form, "tokens": tokens, "new_token": new_token},
        status=422 if form.errors else 200,
    )
    response["Cache-Control"] = "no-store"
    return response


@require_POST
@login_required
def token_revoke(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    token = get_object_or_404(AccessToken, pk=pk, user=request.user, kind=AccessToken.Kind.PERSONAL)
    token_services.token_revoke(token=token)
    messages.success(request, f"Token {token.name!r} revoked: it no longer works.")
    return redirect("web:token_list")
