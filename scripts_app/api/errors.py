"""Every API error leaves as Oracle's flat body: {"errorMessage": ..., "errorCode": ...}."""

from __future__ import annotations

import logging

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import InterfaceError, OperationalError
from django.http import Http404, JsonResponse
from rest_framework import exceptions
from rest_framework.response import Response

from scripts_app.errors import DATABASE_UNAVAILABLE_MESSAGE, ErrorCode, OmlError, Unavailable

logger = logging.getLogger(__name__)

DRF_CODES = {
    exceptions.ParseError: ErrorCode.MALFORMED_JSON,
    exceptions.AuthenticationFailed: ErrorCode.NOT_AUTHENTICATED,
    exceptions.NotAuthenticated: ErrorCode.NOT_AUTHENTICATED,
    exceptions.PermissionDenied: ErrorCode.PERMISSION_DENIED,
    exceptions.NotFound: ErrorCode.NOT_FOUND,
}


def error_body(message: str, code: int) -> dict:
    return {"errorMessage": message, "errorCode": int(code)}


# What the database driver raises when the server is stopped, unreachable, or (SQLite) locked too long.
DATABASE_DOWN = (OperationalError, InterfaceError)


def database_unavailable(error: Exception) -> Unavailable:
    logger.warning("The database is unavailable: %s", str(error).strip().splitlines()[0] if str(error) else error)
    return Unavailable(DATABASE_UNAVAILABLE_MESSAGE, code=ErrorCode.DATABASE_UNAVAILABLE)


def oml_exception_handler(exc, context):
    if isinstance(exc, DATABASE_DOWN):
        exc = database_unavailable(exc)
    if isinstance(exc, OmlError):
        response = _response(exc.message, exc.code, exc.status, context)
        if exc.retry_after is not None:
            response["Retry-After"] = str(exc.retry_after)
        return response
    if isinstance(exc, Http404):
        return _response("Not found.", ErrorCode.NOT_FOUND, 404, context)
    if isinstance(exc, DjangoPermissionDenied):
        return _response("Permission denied.", ErrorCode.PERMISSION_DENIED, 403, context)
    if isinstance(exc, exceptions.ValidationError):
        return _response(validation_message(exc.detail), ErrorCode.BAD_REQUEST, 400, context)
    if isinstance(exc, exceptions.APIException):
        code = exc.get_codes() if isinstance(exc, exceptions.AuthenticationFailed) else None
        error_code = code if isinstance(code, int) else DRF_CODES.get(type(exc), ErrorCode.BAD_REQUEST)
        response = _response(str(exc.detail), error_code, exc.status_code, context)
        wait = getattr(exc, "wait", None)  # Throttled's
        if wait:
            response["Retry-After"] = str(int(wait))
        return response
    logger.exception("Unhandled error in %s", context.get("view"))
    return _response("Internal error of the service.", ErrorCode.INTERNAL, 500, context)


def _response(message: str, code: int, status: int, context) -> Response:
    response = Response(error_body(message, code), status=status)
    if status == 401:
        # DRF only sends 401 (rather than 403) when the challenge header is there.
        response["WWW-Authenticate"] = 'Bearer realm="omlweb"'
    return response


def validation_message(detail, prefix: str = "") -> str:
    """DRF's nested validation errors as one readable line: 'graphicsFlag: Must be a valid boolean.'"""
    if isinstance(detail, dict):
        return "; ".join(validation_message(value, f"{prefix}{key}: ") for key, value in detail.items())
    if isinstance(detail, list):
        return "; ".join(validation_message(item, prefix) for item in detail)
    return f"{prefix}{detail}"


def json_error(message: str, code: int, status: int) -> JsonResponse:
    return JsonResponse(error_body(message, code), status=status)


def unavailable_response(error: Unavailable) -> JsonResponse:
    response = json_error(error.message, error.code, error.status)
    response["Retry-After"] = str(error.retry_after)
    return response
