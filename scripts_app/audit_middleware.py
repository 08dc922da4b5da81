"""Binds the request being served to the audit trail, so events know who and from where."""

from __future__ import annotations

from scripts_app.services import audit


class AuditRequestMiddleware:
    """After AuthenticationMiddleware: services.audit.record reads request.user and META from here."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        token = audit.bind_request(request)
        try:
            return self.get_response(request)
        finally:
            audit.unbind_request(token)
