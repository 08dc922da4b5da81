"""What goes into a run and what comes out of it.

The runner knows nothing of Django or HTTP: it takes a `Job` and gives back a `Result`.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass(frozen=True)
class Limits:
    """Bounds on one run. Every one of them, when hit, ends the run with its own `Failure`."""

    wall_seconds: float = 60.0
    cpu_seconds: int = 60
    memory_bytes: int = 2 * 1024**3
    max_processes: int = 64
    max_file_bytes: int = 100 * 1024**2
    # stdout and stderr are each cut to this size, with a visible marker; the run still succeeds.
    max_stream_bytes: int = 1024**2
    max_result_bytes: int = 50 * 1024**2
    max_image_bytes: int = 10 * 1024**2
    # Open figures saved when graphics is on; more is an IMAGE_TOO_LARGE error, not a silent cut.
    max_figures: int = 50
    # Like OML's OML_OUTPUT_SZLIMIT: len() of the returned list, dict or DataFrame.
    max_output_items: int = 5000
    network: bool = False


@dataclass(frozen=True)
class DataInput:
    """Rows handed to the function as its first positional argument (OML's table/row/group apply)."""

    # The rows as a Parquet file; the child reads it with pyarrow.
    parquet: bytes
    # OML's oml_input_type: "pandas.DataFrame", "numpy.recarray", or "default" (an all-numeric
    # input becomes a 2-D float64 numpy.ndarray, anything else a pandas.DataFrame).
    input_type: str = "default"
    # OML's oml_na_omit: drop the rows with any missing value first.
    na_omit: bool = False


INPUT_TYPES = ("default", "pandas.DataFrame", "numpy.recarray")
FRAME_ORIENTS = ("records", "columns")


@dataclass(frozen=True)
class Job:
    source: str
    function: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    args: tuple[Any, ...] = ()
    graphics: bool = False
    limits: Limits = field(default_factory=Limits)
    # Interpreter of the environment to run in; None is the service's own.
    python: str | None = None
    # Data passed before `args`, as the function's first positional argument.
    data: DataInput | None = None
    # How a returned DataFrame becomes JSON: a list of records, or OML group-apply's
    # {column: {index: value}}.
    frame_orient: str = "records"

    def __post_init__(self) -> None:
        if self.data is not None and self.data.input_type not in INPUT_TYPES:
            raise ValueError(f"input_type must be one of {INPUT_TYPES}")
        if self.frame_orient not in FRAME_ORIENTS:
            raise ValueError(f"frame_orient must be one of {FRAME_ORIENTS}")


class Outcome(enum.StrEnum):
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    CANCELLED = "CANCELLED"


class Failure(enum.StrEnum):
    """Why a run did not succeed. The API maps each to an OML error code."""

    SCRIPT_ERROR = "script_error"  # the function raised
    OUTPUT_TOO_LONG = "output_too_long"  # more items than max_output_items
    RESULT_TOO_LARGE = "result_too_large"
    NOT_SERIALIZABLE = "not_serializable"
    IMAGE_TOO_LARGE = "image_too_large"
    TIMEOUT = "timeout"
    CPU_LIMIT = "cpu_limit"
    MEMORY_LIMIT = "memory_limit"
    PROCESS_LIMIT = "process_limit"
    FILE_TOO_LARGE = "file_too_large"
    CANCELLED = "cancelled"
    CRASHED = "crashed"  # the child died without a result (signal, os._exit)
    INVALID_RESULT = "invalid_result"  # the result document is not one the harness could write


@dataclass(frozen=True)
class Figure:
    png: bytes
    title: str | None


# What LazyValue._value holds until something reads the value.
UNDECODED: Any = object()


def decode_json(text: str) -> Any:
    """Decode a checked value's JSON text as the standard library reads it: orjson first (a 5,000 x 31 table
    decodes about four times faster), json.loads for what orjson reads differently (integers beyond 64 bits,
    which orjson turns into floats, and what it refuses)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
    return json.loads(text) if _has_float_beyond_int64(value) else value


def _has_float_beyond_int64(value: Any) -> bool:
    """Whether a float of 2**63 or more sits in the value: orjson's reading of a larger integer looks so."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if abs(item) >= 2.0**63:
                return True
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
    return False


class LazyValue:
    """A run's return value kept as the JSON text its child wrote (`value_json`), decoded on first read.

    The parent checks the text without building it (runner/validation.py); a do-eval run's answer and
    stored result are that text, so a 10,000-row DataFrame is only decoded by what needs its records
    (an apply run assembling pieces, a page)."""

    value_json: str
    _value: Any

    @property
    def value(self) -> Any:
        if self._value is UNDECODED:
            self._value = decode_json(self.value_json)
        return self._value

    @value.setter
    def value(self, value: Any) -> None:
        self._value = value

    def take_value(self, other: LazyValue) -> None:
        """Hold `other`'s value: its text, and its decoded value only if it has one."""
        self.value_json = other.value_json
        self._value = other._value

    @property
    def decoded_value(self) -> Any:
        """The value if something decoded it already, else None."""
        return None if self._value is UNDECODED else self._value


@dataclass
class Result(LazyValue):
    outcome: Outcome
    figures: list[Figure] = field(default_factory=list)
    stdout: str = ""
    stderr: str = ""
    failure: Failure | None = None
    error_message: str = ""
    traceback: str = ""
    duration_seconds: float = 0.0
    # The return value converted to plain JSON types (DataFrame -> list of records), as JSON text, as the
    # child wrote it: pass it on without encoding it again. `value` decodes it on first use.
    value_json: str = "null"
    _value: Any = field(default=UNDECODED, init=False, repr=False, compare=False)

    @property
    def succeeded(self) -> bool:
        return self.outcome is Outcome.SUCCEEDED


class RunnerBusy(Exception):
    """Every run slot of this process is taken and none freed up in time."""


class RunnerUnavailable(RuntimeError):
    """No run can start: the isolation level asked for (not "auto") is not available here."""
