from __future__ import annotations

import calendar
import logging
import re

from django.conf import settings
from django.utils.http import http_date

from scripts_app.api.errors import json_error
from scripts_app.errors import ErrorCode

logger = logging.getLogger(__name__)

API_PREFIXES = ("/oml/", "/omlusers/")
# Dataset uploads carry files: their own, larger limit.
DATASET_UPLOAD = re.compile(r"^/oml/api/py-scripts/v[12]/datasets(/[^/]+)?$")
# Some Oracle deployments print the tenant-qualified base path; it is an alias of /oml/api/.
TENANT_BASE = re.compile(r"^/oml/tenants/[^/]+/databases/[^/]+/api/")
V1 = re.compile(r"^/oml/api/py-scripts/v1(/|$)")


class OmlApiMiddleware:
    """What Oracle's API does outside any one view: the body limit, its cache headers, JSON errors only."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        path = canonical_path(request.path_info)
        if not is_api(path):
            return self.get_response(request)
        if path != request.path_info:
            # A base URL with a trailing slash (//omlusers/...), a tenant-qualified path or a trailing
            # slash: served as the path it means, not redirected (a redirected POST loses its body).
            request.path = request.META.get("SCRIPT_NAME", "").rstrip("/") + path
            request.path_info = path
        limit = settings.OMLWEB_MAX_BODY_BYTES
        if DATASET_UPLOAD.match(request.path):
            limit = settings.OMLWEB_DATASET_MAX_UPLOAD_MB * 1024**2
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


def _is_json(response) -> bool:
    return response.get("Content-Type", "").startswith("application/json")
