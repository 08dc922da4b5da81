"""What the parent accepts from a run, and the JSON values the service can store and answer.

A run's child is the user's code: it can write anything on its result pipe (`os.write(3, ...)`),
patch the harness before it encodes, or exit half-way through. `read_document` therefore checks the
whole result document against what the harness can write, and gives either a `Document` or an
`InvalidResult` saying what is wrong. It runs on every result, so it checks the value's text with simdjson
without building it where simdjson takes only what the standard library takes, else parses it once with
orjson where orjson reads it as the standard library does (docs/runner.md "What the parent accepts").

The same rules serve requests (`loads_strict`): PostgreSQL cannot store NUL in text nor `\\u0000` in
jsonb, no database driver can encode a lone UTF-16 surrogate, and JSON has no NaN or Infinity.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import reprlib
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from scripts_app.runner.types import UNDECODED, Failure, Figure, LazyValue, Limits, Outcome

try:
    import simdjson
except ImportError:  # pragma: no cover - an environment without the wheel checks with orjson (_read_fast)
    simdjson = None  # type: ignore[assignment]

# The harness refuses values nested deeper than 100 levels; a little room for its own wrapping.
MAX_DEPTH = 128
# Longest figure title kept (RunImage.title holds 500 characters).
MAX_TITLE_CHARS = 500
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# matplotlib's Agg renderer cannot draw more than 2**16 pixels in either direction.
MAX_PNG_SIDE = 1 << 16
META_KEYS = frozenset({"outcome", "failure", "error_message", "traceback"})
FIGURE_KEYS = frozenset({"title", "png"})
# The only verdicts a child may give about itself; the others (timeout, CPU, cancel, crash, invalid
# result) are the parent's to give.
CHILD_OUTCOMES = (Outcome.SUCCEEDED, Outcome.FAILED)
CHILD_FAILURES = frozenset(
    {
        Failure.SCRIPT_ERROR,
        Failure.OUTPUT_TOO_LONG,
        Failure.RESULT_TOO_LARGE,
        Failure.NOT_SERIALIZABLE,
        Failure.IMAGE_TOO_LARGE,
        Failure.MEMORY_LIMIT,
        Failure.PROCESS_LIMIT,
        Failure.FILE_TOO_LARGE,
    }
)
REPLACEMENT = "\ufffd"
# JSON escapes that may decode to NUL or to part of a surrogate pair.
_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")
_HIGH = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}")
_LOW = re.compile(r"\\u[dD][c-fC-F][0-9a-fA-F]{2}")


class InvalidResult(Exception):
    """The result document is not one the harness could have written."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnsupportedValue(ValueError):
    """JSON the service cannot take: NaN, an infinity, NUL or a lone surrogate."""


class NestedTooDeeply(ValueError):
    pass


@dataclass
class Document(LazyValue):
    """A checked result document. Its `value` is decoded from `value_json` only when read (LazyValue)."""

    outcome: Outcome
    failure: Failure | None = None
    error_message: str = ""
    traceback: str = ""
    value_json: str = "null"
    figures: list[Figure] = field(default_factory=list)
    _value: Any = field(default=UNDECODED, init=False, repr=False, compare=False)


# --------------------------------------------------------------------------------------------
# Text and JSON values


def storable_text(text: str) -> str:
    """`text` with NUL and lone surrogates replaced by U+FFFD: what every database can store."""
    if "\x00" in text:
        text = text.replace("\x00", REPLACEMENT)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # Through UTF-16, a surrogate pair split over two code points becomes its character again.
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _bad_text(text: str) -> bool:
    return storable_text(text) is not text


def check_value(value: Any, *, max_depth: int = MAX_DEPTH) -> None:
    """Raise NestedTooDeeply or UnsupportedValue (a number that is not finite) for a decoded value.

    Walks the containers only, without recursion; scalars other than floats are not looked at.
    """
    isfinite = math.isfinite
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        kind = type(node)
        if kind is float:
            if not isfinite(node):
                raise UnsupportedValue("a number that is not finite (NaN, Infinity or beyond a float's range)")
            continue
        if kind is not dict and kind is not list:
            continue
        if depth >= max_depth:
            raise NestedTooDeeply(f"a value nested more than {max_depth} levels deep")
        for item in node.values() if kind is dict else node:
            item_kind = type(item)
            if item_kind is float:
                if not isfinite(item):
                    raise UnsupportedValue("a number that is not finite (NaN, Infinity or beyond a float's range)")
            elif item_kind is dict or item_kind is list:
                stack.append((item, depth + 1))


# Every byte but JSON's quote and brackets, deleted before the nesting is measured.
_NOT_STRUCTURE = bytes(byte for byte in range(256) if byte not in b'"[]{}')
_STEP = np.zeros(256, dtype=np.int16)
_STEP[list(b"[{")] = 1
_STEP[list(b"]}")] = -1
_BOM = b"\xef\xbb\xbf"
# Each thread's simdjson parser, kept for values up to this size: its buffers stay as large as the
# largest value it read, about 13 times the text at worst (a 1 MB "[1,1,...]" keeps 13 MB resident).
_PARSERS = threading.local()
_KEPT_PARSER_BYTES = 1024**2


def _count_fast(line: memoryview, frame_orient: str) -> int | None:
    """`_items` of a value whose text holds no \\u0000 or surrogate escape, checked by simdjson without
    building it; None when the standard path must read it (its verdict stands).

    simdjson refuses what JSON refuses, and more: NaN, Infinity, a number beyond a float's range or beyond
    64-bit integers, a surrogate escape not in a pair (a test holds it against the standard library). It
    takes a leading BOM, which json.loads refuses, and a member repeated in an object, which the standard
    reading keeps once: the first goes to the standard path, the second can only make the count here larger
    (a count over the limit goes to the standard path too). The nesting is measured on the text itself.
    """
    if simdjson is None:
        return None
    data = bytes(line)
    if data.startswith(_BOM):
        return None
    # A parser must not parse again while proxies of its document live: none outlive _count_parsed.
    # A thread's parser keeps its buffers (allocating them again takes longer than the parse of a
    # 0.8 MB text), for values up to _KEPT_PARSER_BYTES (1 MB); a larger value gets a parser of its own.
    parser = _PARSERS.__dict__.get("parser") if len(data) <= _KEPT_PARSER_BYTES else None
    if parser is None:
        parser = simdjson.Parser()
        if len(data) <= _KEPT_PARSER_BYTES:
            _PARSERS.parser = parser
    try:
        count = _count_parsed(parser.parse(data), frame_orient)
    except Exception:  # noqa: BLE001 - whatever simdjson refuses, json.loads gives the verdict
        _PARSERS.__dict__.pop("parser", None)
        return None
    if count is None:
        return None
    # Measured once the parser's buffers are freed (with them alive it takes four times as long).
    # Each level takes two brackets: a short text needs no count.
    if len(data) > 2 * MAX_DEPTH and _nesting(data) > MAX_DEPTH:
        return None
    return count


def _count_parsed(document: Any, frame_orient: str) -> int | None:
    """`_items` of simdjson's proxy of a value; None when an object repeats a member of a column."""
    if isinstance(document, simdjson.Array):
        return len(document)
    if not isinstance(document, simdjson.Object):
        return 0
    count = len(document)
    if frame_orient != "columns" or not count:
        return count
    keys = list(document.keys())
    if len(set(keys)) != count:
        return None
    columns = [column for column in (document[key] for key in keys) if isinstance(column, simdjson.Object)]
    if len(columns) == count:
        count = max(count, *(len(column) for column in columns))
    return count


def _nesting(data: bytes) -> int:
    """How deeply the containers of valid JSON text nest (check_value's depth + 1), without decoding it:
    escaped backslashes and quotes dropped, then everything but quotes and brackets, then the brackets
    outside strings counted up and down."""
    if b"\\" in data:
        # A run of backslashes inside a string starts with an escape: pairs from the left are escapes.
        data = data.replace(b"\\\\", b"")
    if b"\\" in data:
        data = data.replace(b'\\"', b"")
    structure = data.translate(None, _NOT_STRUCTURE)
    # A string with no bracket in it is two quotes side by side here. Pairs dropped from the left leave
    # no quote only if each pair was one string's own (the first quote opens a string: it can only go
    # with the next byte, its closing quote; and so on for the next), so what stays is the brackets
    # outside strings: a DataFrame's records, 0.14 MB of quotes and brackets, become 20 KB of brackets.
    bare = structure.replace(b'""', b"")
    if b'"' not in bare:
        if not bare:
            return 0
        return int(np.cumsum(_STEP[np.frombuffer(bare, dtype=np.uint8)], dtype=np.int64).max())
    kept = np.frombuffer(structure, dtype=np.uint8)
    steps = _STEP[kept]
    # An odd count of quotes so far: inside a string, where a bracket is text.
    steps[np.cumsum(kept == ord('"'), dtype=np.int64) & 1 == 1] = 0
    return int(np.cumsum(steps, dtype=np.int64).max())


# orjson reads an integer beyond 64 bits as a float; the standard library keeps it an int.
_BEYOND_INT64 = 2.0**63
# What `_read_fast` gives when the standard library must read the text instead.
_ASK_STANDARD = object()


def _read_fast(text: str | memoryview) -> Any:
    """The value of JSON text that holds no \\u0000 or surrogate escape, read by orjson (about 2.5 times
    faster than json.loads), or _ASK_STANDARD when orjson's reading may differ from the standard library's.

    orjson refuses NaN, Infinity and numbers beyond a float's range, so its floats are finite; it refuses
    what the standard library refuses (a test holds the two side by side). A float beyond 64-bit integers
    may be an integer orjson changed, and a value nested too deeply gets the standard path's own verdict:
    both go to `json.loads`, whose reading stands.
    """
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return _ASK_STANDARD
    # check_value without the finiteness test orjson made: containers' depth, and floats' size.
    kind = type(value)
    if kind is float:
        return value if -_BEYOND_INT64 < value < _BEYOND_INT64 else _ASK_STANDARD
    if kind is not dict and kind is not list:
        return value
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth >= MAX_DEPTH:
            return _ASK_STANDARD
        for item in node.values() if type(node) is dict else node:
            kind = type(item)
            if kind is float:
                if not -_BEYOND_INT64 < item < _BEYOND_INT64:
                    return _ASK_STANDARD
            elif kind is dict or kind is list:
                stack.append((item, depth + 1))
    return value


def _has_bad_string(value: Any) -> bool:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if _bad_text(node):
                return True
        elif isinstance(node, dict):
            if any(_bad_text(key) for key in node):
                return True
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def _cleaned(value: Any) -> Any:
    """`value` with every string (keys too) made storable. Only called on a depth-checked value."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, list):
        return [_cleaned(item) for item in value]
    if isinstance(value, dict):
        return {storable_text(key): _cleaned(item) for key, item in value.items()}
    return value


def _suspect(text: str) -> bool:
    """Whether JSON text may decode to a NUL or a lone surrogate: a \\u0000 escape, or a surrogate escape
    that is not half of a pair (pandas writes every emoji as a pair). A false alarm (an escaped backslash
    before "u0000") only costs the exact check. Raw surrogates are the caller's to know: strict UTF-8
    decoding never gives one."""
    # One character first: a search for it is several times faster than for the two.
    if "\\" not in text or "\\u" not in text:
        return False
    paired_low = -1
    for match in _ESCAPE.finditer(text):
        start, end = match.span()
        if start == paired_low:
            continue
        if match.group() == "\\u0000":
            return True
        if _HIGH.fullmatch(match.group()) and _LOW.match(text, end):
            paired_low = end
            continue
        return True
    return False


def _refuse_constant(name: str) -> Any:
    raise UnsupportedValue(f"{name}, which is not JSON")


def loads_strict(text: str, *, max_depth: int = MAX_DEPTH) -> Any:
    """JSON text from a client, as a value the service can run with, store and answer.

    Raises json.JSONDecodeError for text that is not JSON, NestedTooDeeply, and UnsupportedValue for
    NaN, Infinity, a number beyond a float's range (1e999), a NUL character or a lone surrogate.
    """
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise NestedTooDeeply(f"a value nested more than {max_depth} levels deep") from None
    check_value(value, max_depth=max_depth)
    if _suspect(text) and _has_bad_string(value):
        raise UnsupportedValue("a NUL character (\\u0000) or a lone UTF-16 surrogate, which cannot be stored")
    return value


# --------------------------------------------------------------------------------------------
# The result document


def split_document(raw: bytes | bytearray) -> tuple[memoryview, memoryview, memoryview] | None:
    """The three lines of a document, or None when it is not whole (no two line breaks)."""
    first, last = raw.find(b"\n"), raw.rfind(b"\n")
    if first < 0 or last == first:
        return None
    view = memoryview(raw)
    return view[:first], view[first + 1 : last], view[last + 1 :]


def read_document(raw: bytes | bytearray, limits: Limits, *, frame_orient: str = "records") -> Document | None:
    """The checked document the child wrote: None when it is not whole, InvalidResult when it is forged.

    A value or figures over the run's limits (which the harness checks, but can be fooled or patched
    into skipping) give the same FAILED document the harness would have written.
    """
    lines = split_document(raw)
    if lines is None:
        return None
    meta_line, value_line, figures_line = lines
    document = _meta(meta_line, limits)
    if document.outcome is Outcome.FAILED:
        if bytes(value_line) != b"null" or bytes(figures_line) != b"[]":
            raise InvalidResult("a failed run's document carries a value or figures")
        return document
    if len(value_line) > limits.max_result_bytes:
        return _over_limit(
            Failure.RESULT_TOO_LARGE,
            f"The result is {len(value_line)} bytes as JSON, over the limit of {limits.max_result_bytes} bytes",
        )
    verdict = _value(document, value_line, limits, frame_orient)
    if verdict is not None:
        return verdict
    return _figures(document, figures_line, limits)


def _over_limit(failure: Failure, message: str) -> Document:
    return Document(outcome=Outcome.FAILED, failure=failure, error_message=message)


def _meta(line: memoryview, limits: Limits) -> Document:
    try:
        # The harness writes a message holding lone surrogates with "surrogatepass"; they are cleaned below.
        meta = json.loads(str(line, "utf-8", "surrogatepass"), parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise InvalidResult("its first line is not a JSON object") from None
    if not isinstance(meta, dict) or set(meta) != META_KEYS:
        raise InvalidResult(f"its first line must be an object with exactly the keys {sorted(META_KEYS)}")
    try:
        outcome = Outcome(meta["outcome"])
    except (ValueError, TypeError):
        outcome = None
    if outcome not in CHILD_OUTCOMES:
        raise InvalidResult(f"unknown outcome {_shown(meta['outcome'])}")
    failure = None
    if meta["failure"] is not None:
        try:
            failure = Failure(meta["failure"])
        except (ValueError, TypeError):
            failure = None
        if failure not in CHILD_FAILURES:
            raise InvalidResult(f"unknown failure {_shown(meta['failure'])}")
    if (outcome is Outcome.FAILED) != (failure is not None):
        raise InvalidResult(f"outcome {outcome.value} with failure {_shown(meta['failure'])}")
    texts = []
    for key in ("error_message", "traceback"):
        text = meta[key]
        if not isinstance(text, str):
            raise InvalidResult(f"{key} is not a string")
        texts.append(_bounded(storable_text(text), limits.max_stream_bytes))
    return Document(outcome=outcome, failure=failure, error_message=texts[0], traceback=texts[1])


def _shown(value: Any) -> str:
    """A forged value, short and storable, for an error message (reprlib: a nested one stays shallow)."""
    return storable_text(reprlib.repr(value)[:80])


def _bounded(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... cut at {limit} characters ...]"


def _value(document: Document, line: memoryview, limits: Limits, frame_orient: str) -> Document | None:
    """Fill in the value; a FAILED document when it is over a limit."""
    try:
        text = str(line, "utf-8")
        raw_surrogates = False
    except UnicodeDecodeError:
        # The harness writes a str holding lone surrogates with "surrogatepass"; anything else is forged.
        try:
            text = str(line, "utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise InvalidResult("its value is not UTF-8") from None
        raw_surrogates = True
    suspect = raw_surrogates or _suspect(text)
    if not suspect:
        items = _count_fast(line, frame_orient)
        if items is not None and items <= limits.max_output_items:
            # The text is the value: stored and answered as it is, decoded only when something reads it.
            document.value_json = text
            return None
    # orjson reads the UTF-8 bytes themselves: given the str, it would keep a UTF-8 copy inside it.
    value = _ASK_STANDARD if suspect else _read_fast(line)
    try:
        if value is _ASK_STANDARD:
            # NaN and Infinity parse to floats that check_value refuses (a parse_constant hook would
            # double the time of json.loads).
            value = json.loads(text)
            check_value(value)
    except NestedTooDeeply as error:
        return _over_limit(Failure.NOT_SERIALIZABLE, f"The function returned {error}, which cannot be stored")
    except RecursionError:
        return _over_limit(
            Failure.NOT_SERIALIZABLE, f"The function returned a value nested more than {MAX_DEPTH} levels deep"
        )
    except UnsupportedValue as error:
        raise InvalidResult(f"its value holds {error}") from None
    except ValueError as error:
        raise InvalidResult(f"its value is not JSON ({error})") from None
    items = _items(value, frame_orient)
    if items > limits.max_output_items:
        return _over_limit(Failure.OUTPUT_TOO_LONG, f"Output exceeds maximum length {limits.max_output_items}")
    if suspect:
        cleaned = _cleaned(value)
        if cleaned != value:
            value, text = cleaned, json.dumps(cleaned, ensure_ascii=False, separators=(",", ":"))
    document.value = value
    document.value_json = text
    return None


def _items(value: Any, frame_orient: str) -> int:
    """OML's output length, counted on the JSON itself: the child's len() may lie.

    A list or object counts its members. In group-apply's column orientation a DataFrame arrives as
    {column: {index: value}}: there its longest column counts too.
    """
    if isinstance(value, list):
        return len(value)
    if not isinstance(value, dict):
        return 0
    count = len(value)
    if frame_orient == "columns" and value and all(isinstance(column, dict) for column in value.values()):
        count = max(count, *(len(column) for column in value.values()))
    return count


def _figures(document: Document, line: memoryview, limits: Limits) -> Document:
    try:
        # One copy of a line that may be hundreds of MB (json.loads of bytes would make two).
        figures = json.loads(str(line, "utf-8", "surrogatepass"), parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        raise InvalidResult("its figures line is not JSON") from None
    if not isinstance(figures, list):
        raise InvalidResult("its figures line is not a list")
    if len(figures) > limits.max_figures:
        return _over_limit(
            Failure.IMAGE_TOO_LARGE, f"{len(figures)} figures are open, over the limit of {limits.max_figures}"
        )
    for position, figure in enumerate(figures, start=1):
        if not isinstance(figure, dict) or set(figure) != FIGURE_KEYS:
            raise InvalidResult(f"figure {position} is not an object with exactly the keys {sorted(FIGURE_KEYS)}")
        png, title = figure["png"], figure["title"]
        if not isinstance(png, str) or not (title is None or isinstance(title, str)):
            raise InvalidResult(f"figure {position}: png must be a string and title a string or null")
        if len(png) // 4 * 3 > limits.max_image_bytes + 2:
            return _over_limit(
                Failure.IMAGE_TOO_LARGE,
                f"Figure {position} is over {limits.max_image_bytes} bytes as PNG, "
                f"over the limit of {limits.max_image_bytes} bytes",
            )
        try:
            data = base64.b64decode(png, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidResult(f"figure {position} is not base64") from None
        if len(data) > limits.max_image_bytes:
            return _over_limit(
                Failure.IMAGE_TOO_LARGE,
                f"Figure {position} is {len(data)} bytes as PNG, over the limit of {limits.max_image_bytes} bytes",
            )
        _check_png(data, position)
        if title is not None:
            title = _bounded(storable_text(title), MAX_TITLE_CHARS - 40)
        document.figures.append(Figure(png=data, title=title))
    return document


def _check_png(data: bytes, position: int) -> None:
    """A PNG signature, then an IHDR chunk with a size matplotlib could have drawn."""
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR" or int.from_bytes(data[8:12], "big") != 13:
        raise InvalidResult(f"figure {position} is not a PNG image")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if not (0 < width <= MAX_PNG_SIDE and 0 < height <= MAX_PNG_SIDE):
        raise InvalidResult(f"figure {position} claims {width}x{height} pixels")
