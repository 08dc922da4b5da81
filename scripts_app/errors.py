"""The one error vocabulary of the service.

Services raise `OmlError`s; the API turns them into Oracle's body {"errorMessage", "errorCode"} with the
HTTP status, and the pages into messages. docs/errors.md lists every code.
"""

from __future__ import annotations

import enum

from scripts_app.runner import Failure


class ErrorCode(enum.IntEnum):
    BAD_REQUEST = 1000
    MALFORMED_JSON = 1001
    BODY_TOO_LARGE = 1002
    UNKNOWN_ENVIRONMENT = 1003
    INVALID_SCRIPT = 1004
    SCRIPT_EXISTS = 1005
    ENVIRONMENT_NOT_READY = 1006
    ENVIRONMENT_CONFLICT = 1007
    UNSUPPORTED_VALUE = 1008
    LENGTH_REQUIRED = 1009
    NOT_AUTHENTICATED = 1010
    TOKEN_EXPIRED = 1011
    BAD_CREDENTIALS = 1012
    PERMISSION_DENIED = 1013
    NOT_FOUND = 1020
    # 1024 and 1026 are Oracle's own codes.
    OUTPUT_TOO_LONG = 1024
    RESULT_TOO_LARGE = 1025
    NOT_SERIALIZABLE = 1027
    SCRIPT_ERROR = 1030
    TIMED_OUT = 1031
    CPU_LIMIT = 1032
    MEMORY_LIMIT = 1033
    PROCESS_LIMIT = 1034
    FILE_TOO_LARGE = 1035
    IMAGE_TOO_LARGE = 1036
    CANCELLED = 1037
    CRASHED = 1038
    INVALID_RESULT = 1039
    BUSY = 1040
    RUNNER_UNAVAILABLE = 1041
    DATABASE_UNAVAILABLE = 1042
    BROKER_UNAVAILABLE = 1043
    TOO_MANY_RUNS = 1045
    QUOTA_EXCEEDED = 1046
    LOGIN_LOCKED = 1047
    PRESET_NOT_FOUND = 1050
    INVALID_PRESET = 1051
    INVALID_VERSION_MESSAGE = 1052
    # Schedules and retries (docs/schedules.md).
    WORKER_LOST = 1060
    INVALID_SCHEDULE = 1061
    # Notifications (docs/notifications.md).
    NOTIFICATION_RULE_INVALID = 1080
    WEBHOOK_URL_REFUSED = 1081
    NOTIFICATION_NO_EMAIL = 1082
    NOTIFICATIONS_UNAVAILABLE = 1083
    INTERNAL = 1099


class OmlError(Exception):
    status = 400
    code = ErrorCode.BAD_REQUEST
    # Seconds a client should wait before trying again (the Retry-After header), when that is known.
    retry_after: int | None = None

    def __init__(self, message: str, *, code: ErrorCode | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class BadRequest(OmlError):
    pass


class NotAuthenticated(OmlError):
    status = 401
    code = ErrorCode.NOT_AUTHENTICATED


class PermissionDenied(OmlError):
    status = 403
    code = ErrorCode.PERMISSION_DENIED


class NotFound(OmlError):
    status = 404
    code = ErrorCode.NOT_FOUND


class Conflict(OmlError):
    status = 409
    code = ErrorCode.ENVIRONMENT_CONFLICT


class Busy(OmlError):
    status = 503
    code = ErrorCode.BUSY
    busy_message = "The service is busy: every run slot is taken. Try again shortly."


class Unavailable(OmlError):
    """A dependency of the service (the database, the broker) does not answer: try again later."""

    status = 503
    code = ErrorCode.BROKER_UNAVAILABLE
    retry_after = 10


DATABASE_UNAVAILABLE_MESSAGE = (
    "The database is unavailable: the service can neither read nor record anything. Try again shortly."
)
BROKER_UNAVAILABLE_MESSAGE = (
    "The job queue (broker) is unavailable: async jobs cannot be accepted now. Try again shortly, or run synchronously."
)


class TooManyRuns(OmlError):
    """The user is at their share of runs at once (or of queued jobs); other users are not."""

    status = 429
    code = ErrorCode.TOO_MANY_RUNS

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QuotaExceeded(OmlError):
    code = ErrorCode.QUOTA_EXCEEDED


FAILURE_CODES: dict[Failure | None, ErrorCode] = {
    Failure.SCRIPT_ERROR: ErrorCode.SCRIPT_ERROR,
    Failure.OUTPUT_TOO_LONG: ErrorCode.OUTPUT_TOO_LONG,
    Failure.RESULT_TOO_LARGE: ErrorCode.RESULT_TOO_LARGE,
    Failure.NOT_SERIALIZABLE: ErrorCode.NOT_SERIALIZABLE,
    Failure.IMAGE_TOO_LARGE: ErrorCode.IMAGE_TOO_LARGE,
    Failure.TIMEOUT: ErrorCode.TIMED_OUT,
    Failure.CPU_LIMIT: ErrorCode.CPU_LIMIT,
    Failure.MEMORY_LIMIT: ErrorCode.MEMORY_LIMIT,
    Failure.PROCESS_LIMIT: ErrorCode.PROCESS_LIMIT,
    Failure.FILE_TOO_LARGE: ErrorCode.FILE_TOO_LARGE,
    Failure.CANCELLED: ErrorCode.CANCELLED,
    Failure.CRASHED: ErrorCode.CRASHED,
    Failure.INVALID_RESULT: ErrorCode.INVALID_RESULT,
}
