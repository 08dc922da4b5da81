"""Bearer tokens: OML's 60-minute tokens (refreshable for 8 hours) and personal API tokens."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.utils import timezone

from scripts_app.errors import ErrorCode, NotAuthenticated
from scripts_app.models import AccessToken
from scripts_app.services import audit, plain_sql

# Writing last_used_at on every request would serialise all API calls on the database's write lock.
LAST_USED_RESOLUTION = timedelta(seconds=60)


def token_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def _new_raw_token() -> str:
    return "oml_" + secrets.token_urlsafe(32)


@transaction.atomic
def token_issue(*, user) -> tuple[str, AccessToken]:
    """A fresh OML token for a user who just gave their password."""
    now = timezone.now()
    raw = _new_raw_token()
    token = AccessToken.objects.create(
        user=user,
        kind=AccessToken.Kind.OAUTH,
        token_hash=token_hash(raw),
        created_at=now,
        chain_started_at=now,
        expires_at=now + timedelta(seconds=settings.OMLWEB_TOKEN_LIFETIME_SECONDS),
    )
    audit.record("token.issue", obj=token, actor=user, after=_token_state(token))
    return raw, token


@transaction.atomic
def personal_token_create(*, user, name: str) -> tuple[str, AccessToken]:
    raw = _new_raw_token()
    token = AccessToken.objects.create(user=user, kind=AccessToken.Kind.PERSONAL, name=name, token_hash=token_hash(raw))
    audit.record("token.personal_create", obj=token, actor=user, after=_token_state(token))
    return raw, token


def _token_state(token: AccessToken) -> dict:
    # The hash's first characters tell tokens apart in the trail without being usable as the token.
    return {
        "kind": token.kind,
        "name": token.name,
        "user": token.user.get_username(),
        "expires_at": token.expires_at,
        "revoked_at": token.revoked_at,
        "fingerprint": token.token_hash[:12],
    }


@transaction.atomic
def token_refresh(*, raw: str) -> tuple[str, AccessToken]:
    """Swap a live OML token for a new one; the chain ends 8 hours after its first token."""
    old = _live_token(raw)
    if old.kind != AccessToken.Kind.OAUTH:
        raise NotAuthenticated("Only OML tokens can be refreshed.")
    now = timezone.now()
    chain_end = old.chain_started_at + timedelta(seconds=settings.OMLWEB_TOKEN_MAX_AGE_SECONDS)
    if now >= chain_end:
        raise NotAuthenticated(
            "The token can no longer be refreshed: ask for a new one with your password.",
            code=ErrorCode.TOKEN_EXPIRED,
        )
    new_raw = _new_raw_token()
    new = AccessToken.objects.create(
        user=old.user,
        kind=AccessToken.Kind.OAUTH,
        token_hash=token_hash(new_raw),
        created_at=now,
        chain_started_at=old.chain_started_at,
        expires_at=min(now + timedelta(seconds=settings.OMLWEB_TOKEN_LIFETIME_SECONDS), chain_end),
    )
    old.revoked_at = now
    old.save(update_fields=["revoked_at"])
    audit.record("token.refresh", obj=new, actor=old.user, before=_token_state(old), after=_token_state(new))
    return new_raw, new


@transaction.atomic
def token_revoke(*, token: AccessToken) -> None:
    if token.revoked_at is None:
        before = _token_state(token)
        token.revoked_at = timezone.now()
        token.save(update_fields=["revoked_at"])
        audit.record(
            "token.revoke", obj=token, actor=_request_user_or(token.user), before=before, after=_token_state(token)
        )


def _request_user_or(user):
    """Who revokes: the signed-in user of the page, else (the API's revoke endpoint) the token's owner."""
    request = audit.current_request()
    request_user = getattr(request, "user", None)
    return request_user if request_user is not None and request_user.is_authenticated else user


def token_authenticate(raw: str) -> AccessToken:
    """The live token for a raw bearer string, or NotAuthenticated saying why not."""
    token = _live_token(raw)
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        AccessToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
    return token


def _token_with_user(hashed: str) -> AccessToken | None:
    """`AccessToken.objects.select_related("user").filter(token_hash=hashed).first()` in one plain
    statement (services.plain_sql): every API request reads it, and revocation, expiry and an inactive
    user take effect at once because it is read every time."""
    user_model = get_user_model()
    quote = connection.ops.quote_name
    sql = (
        f"SELECT {plain_sql.columns(AccessToken, 't')}, {plain_sql.columns(user_model, 'u')} "
        f"FROM {quote(AccessToken._meta.db_table)} t INNER JOIN {quote(user_model._meta.db_table)} u "
        f"ON t.{quote('user_id')} = u.{quote(user_model._meta.pk.column or 'id')} WHERE t.{quote('token_hash')} = %s"
    )
    found = plain_sql.row_of(sql, [hashed], AccessToken, user_model)
    if found is None:
        return None
    token, user = found
    assert isinstance(token, AccessToken)
    assert isinstance(user, user_model)
    token.user = user
    return token


def _live_token(raw: str) -> AccessToken:
    token = _token_with_user(token_hash(raw))
    if token is None:
        raise NotAuthenticated("Invalid token.")
    if token.revoked_at is not None:
        raise NotAuthenticated("The token has been revoked.")
    if token.expires_at is not None and timezone.now() >= token.expires_at:
        raise NotAuthenticated("The token has expired.", code=ErrorCode.TOKEN_EXPIRED)
    if not token.user.is_active:
        raise NotAuthenticated("The user is inactive.")
    return token
