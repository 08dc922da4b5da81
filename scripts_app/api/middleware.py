from __future__ import annotations

import calendar
import json
import logging
import re
import tempfile

from django.conf import settings
from django.http import HttpResponseBadRequest
from django.utils.http import http_date

from scripts_app.api.errors import DATABASE_DOWN, database_unavailable, error_body, json_error, unavailable_response
from scripts_app.errors import ErrorCode

logger = logging.getLogger(__name__)

API_PREFIXES = ("/oml/", "/omlusers/")
# Dataset uploads carry files: their own, larger limit.
DATASET_UPLOAD = re.compile(r"^/oml/api/py-scripts/v[12]/datasets(/[^/]+)?$")
# Some Oracle deployments print the tenant-qualified base path; it is an alias of /oml/api/.
TENANT_BASE = re.compile(r"^/oml/tenants/[^/]+/databases/[^/]+/api/")
V1 = re.compile(r"^/oml/api/py-scripts/v1(/|$)")


class OmlApiMiddleware:
    """What Oracle's API does outside any one view: the body limit, its cache headers, JSON errors only.

    For every path, pages too: a NUL in the URL (`%00`) is a 400 before any view looks it up, since
    PostgreSQL refuses NUL in any text, even in a query's WHERE.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if "\x00" in request.path or "%00" in request.META.get("QUERY_STRING", ""):
            message = "The URL holds a NUL character (%00), which no name or value can hold."
            if is_api(canonical_path(request.path_info)):
                return json_error(message, ErrorCode.UNSUPPORTED_VALUE, 400)
            return HttpResponseBadRequest(message, content_type="text/plain")
        path = canonical_path(request.path_info)
        if not is_api(path):
            return self.get_response(request)
        if path != request.path_info:
            # A base URL with a trailing slash (//omlusers/...), a tenant-qualified path or a trailing
            # slash: served as the path it means, not redirected (a redirected POST loses its body).
            request.path = request.META.get("SCRIPT_NAME", "").rstrip("/") + path
            request.path_info = path
        limit = body_limit(path)
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > limit:
            response = json_error(
                f"The request body is larger than the limit of {limit} bytes.", ErrorCode.BODY_TOO_LARGE, 413
            )
        else:
            response = self.get_response(request)
            if response.status_code == 404 and not _is_json(response):
                response = json_error(f"No API endpoint at {request.path}.", ErrorCode.NOT_FOUND, 404)
            elif response.status_code == 405 and not _is_json(response):
                response = json_error(f"Method {request.method} not allowed.", ErrorCode.BAD_REQUEST, 405)
        response["Cache-Control"] = "no-cache, no-store, private"
        response["X-XSS-Protection"] = "1;mode=block"
        sunset = settings.OMLWEB_V1_SUNSET_DATE
        if sunset is not None and V1.match(path):
            # RFC 9745 and RFC 8594. Oracle's notice gives one date, "DEPRECATED@<date>", for both.
            moment = calendar.timegm(sunset.timetuple())
            response["Deprecation"] = f"@{moment}"
            response["Sunset"] = http_date(moment)
            response["Link"] = f'<{request.build_absolute_uri("/oml/api/py-scripts/v2")}>; rel="successor-version"'
        return response

    def process_exception(self, request, exception):
        if is_api(request.path) and isinstance(exception, DATABASE_DOWN):
            return unavailable_response(database_unavailable(exception))
        if is_api(request.path):
            logger.exception("Unhandled error at %s", request.path)
            return json_error("Internal error of the service.", ErrorCode.INTERNAL, 500)
        return None


def canonical_path(path: str) -> str:
    """The API path a request means: repeated slashes as one, the tenant alias, no trailing slash."""
    path = re.sub(r"/{2,}", "/", path)
    path = TENANT_BASE.sub("/oml/api/", path)
    if is_api(path):
        path = path.rstrip("/")
    return path


def is_api(path: str) -> bool:
    """The paths the API owns: everything under /oml and /omlusers, those two included."""
    return path.startswith(API_PREFIXES) or path.rstrip("/") in ("/oml", "/omlusers")


def body_limit(path: str) -> int:
    """The largest request body read at `path`: dataset uploads have their own, larger limit."""
    path = canonical_path(path)
    if DATASET_UPLOAD.match(path) or not is_api(path):
        # The pages upload datasets too; Django itself bounds their other fields.
        return max(settings.OMLWEB_MAX_BODY_BYTES, settings.OMLWEB_DATASET_MAX_UPLOAD_MB * 1024**2)
    return settings.OMLWEB_MAX_BODY_BYTES


class ChunkedBodies:
    """WSGI: a chunked request body (no Content-Length) is read, never taken as empty.

    Django reads a body only as far as CONTENT_LENGTH, so a chunked one would read as empty and its
    request run without its parameters. gunicorn de-chunks the body and marks where it ends
    (`wsgi.input_terminated`): it is read here, up to the path's limit (413 past it), and handed on
    with its length, spooled to a temporary file past 1 MiB. A server that does not mark the end
    (runserver) gets 411, since reading on could wait forever.
    """

    SPOOL_BYTES = 1 << 20
    READ_BYTES = 1 << 16

    def __init__(self, app) -> None:
        self.app = app

    def __call__(self, environ, start_response):
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if not chunked or environ.get("CONTENT_LENGTH"):
            return self.app(environ, start_response)
        if not environ.get("wsgi.input_terminated"):
            message = "A chunked request body cannot be read here: send a Content-Length."
            return _wsgi_error(start_response, 411, message, ErrorCode.LENGTH_REQUIRED)
        limit = body_limit(environ.get("PATH_INFO", ""))
        body = tempfile.SpooledTemporaryFile(max_size=self.SPOOL_BYTES)  # noqa: SIM115 - lives as long as the request
        size = 0
        stream = environ["wsgi.input"]
        while size <= limit:
            chunk = stream.read(min(self.READ_BYTES, limit + 1 - size))
            if not chunk:
                break
            body.write(chunk)
            size += len(chunk)
        if size > limit:
            body.close()
            message = f"The request body is larger than the limit of {limit} bytes."
            return _wsgi_error(start_response, 413, message, ErrorCode.BODY_TOO_LARGE)
        body.seek(0)
        environ["wsgi.input"] = body
        environ["CONTENT_LENGTH"] = str(size)
        return self.app(environ, start_response)


def _wsgi_error(start_response, status: int, message: str, code: int) -> list[bytes]:
    data = json.dumps(error_body(message, code)).encode()
    reason = {411: "Length Required", 413: "Request Entity Too Large"}[status]
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data))), ("Connection", "close")]
    start_response(f"{status} {reason}", headers)
    return [data]


def _is_json(response) -> bool:
    return response.get("Content-Type", "").startswith("application/json")
