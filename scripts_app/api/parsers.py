from __future__ import annotations

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from scripts_app.errors import ErrorCode, OmlError
from scripts_app.runner.validation import NestedTooDeeply, UnsupportedValue, loads_strict


class StrictJSONParser(JSONParser):
    """JSON that fails with a clear 400 or 413 on hostile input, never a 500 or an HTML page."""

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.OMLWEB_MAX_BODY_BYTES
        raw = stream.read(limit + 1) if stream is not None else b""
        if len(raw) > limit:
            raise body_too_large(limit)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ParseError(f"The request body is not UTF-8 (byte {error.start}).") from None
        try:
            return loads_strict(text)
        except NestedTooDeeply:
            raise ParseError("The JSON body is nested too deeply.") from None
        except UnsupportedValue as error:
            raise unsupported_value("The request body", error) from None
        except ValueError as error:
            raise ParseError(f"Malformed JSON: {error}") from None


def unsupported_value(where: str, error: UnsupportedValue) -> OmlError:
    return OmlError(f"{where} holds {error}.", code=ErrorCode.UNSUPPORTED_VALUE)


def body_too_large(limit: int) -> OmlError:
    return OmlError(
        f"The request body is larger than the limit of {limit} bytes.", code=ErrorCode.BODY_TOO_LARGE, status=413
    )
