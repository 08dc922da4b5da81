from __future__ import annotations

import logging
import re

from django.conf import settings

from scripts_app.api.errors import DATABASE_DOWN, database_unavailable, json_error, unavailable_response
from scripts_app.errors import ErrorCode

logger = logging.getLogger(__name__)

API_PREFIXES = ("/oml/", "/omlusers/")
# Dataset uploads carry files: their own, larger limit.
DATASET_UPLOAD = re.compile(r"^/oml/api/py-scripts/v[12]/datasets(/[^/]+)?$")


class OmlApiMiddleware:
    """What Oracle's API does outside any one view: the body limit, its cache headers, JSON errors only."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if not request.path.startswith(API_PREFIXES):
            return self.get_response(request)
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
        return response

    def process_exception(self, request, exception):
        if request.path.startswith(API_PREFIXES) and isinstance(exception, DATABASE_DOWN):
            return unavailable_response(database_unavailable(exception))
        if request.path.startswith(API_PREFIXES):
            logger.exception("Unhandled error at %s", request.path)
            return json_error("Internal error of the service.", ErrorCode.INTERNAL, 500)
        return None


def _is_json(response) -> bool:
    return response.get("Content-Type", "").startswith("application/json")
