from __future__ import annotations

from rest_framework import authentication, exceptions

from scripts_app.errors import NotAuthenticated
from scripts_app.services.tokens import token_authenticate


class BearerTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer <token>`, with an OML token or a personal API token."""

    keyword = "bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header: use 'Bearer <token>'.")
        try:
            raw = header[1].decode("ascii")
            token = token_authenticate(raw)
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid token.") from None
        except NotAuthenticated as error:
            # DRF keeps any object as the code (its stubs say str): ours is the numeric error code, which
            # the exception handler answers with.
            raise exceptions.AuthenticationFailed(error.message, code=int(error.code)) from None  # type: ignore[arg-type]
        return token.user, token

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="omlweb"'
