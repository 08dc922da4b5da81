"""The last resort for errors no view or middleware answered: a dependency that is down says so."""

from __future__ import annotations

import sys

from django.http import HttpResponse
from django.template.loader import render_to_string
from django.views import defaults

from scripts_app.api.errors import DATABASE_DOWN, database_unavailable, json_error, unavailable_response
from scripts_app.api.middleware import API_PREFIXES
from scripts_app.errors import ErrorCode


def server_error(request) -> HttpResponse:
    """handler500: called while the exception is being handled, so sys.exc_info() names it.

    Errors outside views land here too (the session or auth middleware reading the database).
    """
    error = sys.exc_info()[1]
    api = request.path.startswith(API_PREFIXES)
    if isinstance(error, DATABASE_DOWN):
        if api:
            return unavailable_response(database_unavailable(error))
        # Plain, no context processors: rendering must not touch the database that is down.
        response = HttpResponse(render_to_string("503.html"), status=503)
        response["Retry-After"] = "10"
        return response
    if api:
        return json_error("Internal error of the service.", ErrorCode.INTERNAL, 500)
    return defaults.server_error(request)
