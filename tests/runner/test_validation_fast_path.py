"""The parent reads a run's value with orjson where it can (runner/validation.py `_read_fast`). A value it
takes must be exactly the value the standard library's path takes (json.loads and check_value), and a
document must get the same verdict from `read_document` either way: forged, hostile and fuzzed texts."""

import json
import math
import random

import pytest

from scripts_app.runner import Failure, Limits, Outcome
from scripts_app.runner.validation import (
    _ASK_STANDARD,
    InvalidResult,
    NestedTooDeeply,
    UnsupportedValue,
    _read_fast,
    check_value,
    read_document,
)

META = b'{"outcome": "SUCCEEDED", "failure": null, "error_message": "", "traceback": ""}'
LIMITS = Limits(max_output_items=100_000)

HOSTILE = [
    "null",
    "0",
    "-0",
    "-0.0",
    '"text"',
    "[]",
    "{}",
    '{"a": [1, 2.5, -0.0, 1e308, 5e-324, 0.1, 1E+2, 2.2250738585072014e-308], "b": {"c": "é𝄞\\u00e9\\/"}}',
    "NaN",
    "[Infinity]",
    '{"x": -Infinity}',
    "[1e999]",
    "-1e400",
    "1e-400",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "-9223372036854775809",
    "[123456789012345678901234567890]",
    "1" * 5000,  # more digits than int() takes
    "[1e19, 9223372036854775807.0, -9.3e18]",
    '[{"x": 1, "x": 2, "y": 3}]',
    '{"b": 1, "a": 2, "b": 3}',
    '"\\u0000"',
    '["\\ud800"]',
    '"\\udc00\\ud800"',
    '"\\ud83d\\ude00"',
    '"\\\\u0000"',  # an escaped backslash, then "u0000": no NUL
    "\ufeff[1]",
    " [1] ",
    "\t\n\r 1",
    "\x0c1",
    "[1,]",
    "[1] x",
    "[1]\x00",
    "01",
    "1.",
    ".5",
    "+1",
    '"\x01"',
    '"\\x41"',
    "{'x': 1}",
    '{"a" 1}',
    "[" * 127 + "]" * 127,
    "[" * 128 + "]" * 128,
    "[" * 129 + "]" * 129,
    "[" * 1024 + "]" * 1024,
    "[" * 1025 + "]" * 1025,
    '{"a":' * 129 + "1" + "}" * 129,
    '{"a":' * 128 + "[]" + "}" * 128,
    "",
    "   ",
    "\u2028",
    '"\u2028\u2029"',
]


def standard(text: str):
    """The standard library's reading, as the parent did before: the value, or the exception type."""
    try:
        value = json.loads(text)
        check_value(value)
    except (ValueError, RecursionError) as error:
        return type(error)
    return value


def same(a, b) -> bool:
    """Equal with the same types all the way down (1 is not 1.0, -0.0 is not 0.0), keys in the same order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


def assert_fast_agrees(text: str) -> None:
    # As the parent reads it: the UTF-8 bytes of the document's value line.
    fast = _read_fast(memoryview(text.encode("utf-8", "surrogatepass")))
    if fast is _ASK_STANDARD:
        return
    expected = standard(text)
    assert not isinstance(expected, type), f"orjson took {text[:80]!r}, which the standard library refuses"
    assert same(fast, expected), f"orjson read {text[:80]!r} differently"


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_orjson_takes_only_what_the_standard_library_takes_as_it_does(text):
    assert_fast_agrees(text)


def verdict(text: str):
    """What read_document makes of a document carrying `text` as its value."""
    raw = bytearray(META + b"\n" + text.encode("utf-8", "surrogatepass") + b"\n[]")
    try:
        document = read_document(raw, Limits(max_output_items=5))
    except InvalidResult as error:
        return ("invalid", error.message)
    return (document.outcome, document.failure, document.error_message, document.value_json, document.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("NaN", "invalid"),
        ("[1e999]", "invalid"),
        ("[1,]", "invalid"),
        ("\ufeff[1]", "invalid"),
        ("[1] x", "invalid"),
        ("[" * 129 + "]" * 129, Failure.NOT_SERIALIZABLE),
        ('{"a":' * 129 + "1" + "}" * 129, Failure.NOT_SERIALIZABLE),
        ("[" * 2000 + "]" * 2000, Failure.NOT_SERIALIZABLE),
        ("[1, 2, 3, 4, 5, 6]", Failure.OUTPUT_TOO_LONG),
        ('["\\u0000", "\\ud800"]', Outcome.SUCCEEDED),
    ],
)
def test_hostile_values_get_the_verdict_they_always_got(text, expected):
    got = verdict(text)
    if expected == "invalid":
        assert got[0] == "invalid"
    elif isinstance(expected, Failure):
        assert got[:2] == (Outcome.FAILED, expected)
    else:
        assert got[0] is expected


def test_a_large_integer_keeps_its_digits():
    """orjson would read it as a float: the standard library's int is what the parent keeps."""
    text = "[123456789012345678901234567890, -9223372036854775809, 18446744073709551615]"
    _, _, _, value_json, value = verdict(text)
    assert value == [123456789012345678901234567890, -9223372036854775809, 18446744073709551615]
    assert all(type(item) is int for item in value)
    assert value_json == text


def test_nul_and_lone_surrogates_are_still_cleaned():
    _, _, _, value_json, value = verdict('{"a\\u0000": "\\ud800x"}')
    assert value == {"a\ufffd": "\ufffdx"}
    assert json.loads(value_json) == value


STRING_PARTS = ["a", "é", '\\"', "\\\\", "\\n", "\\u00e9", "\\u0000", "\\ud83d\\ude00", "\\ud800", "\\/", "𝄞"]


def fuzzed(rng: random.Random) -> str:
    """JSON-like text: valid values of every shape, then mutated at a few places."""

    def value(depth: int) -> str:
        pick = rng.randrange(10 if depth < 6 else 6)
        if pick == 0:
            return rng.choice(["null", "true", "false", "NaN", "-Infinity"])
        if pick == 1:
            return rng.choice(["0", "-0", "1", "-1", "9223372036854775807", "9223372036854775808", "1" * 25])
        if pick == 2:
            return rng.choice(["0.5", "-0.0", "1e308", "1e309", "5e-324", "1E-400", "1.7976931348623157e308"])
        if pick == 3:
            return repr(rng.uniform(-1e20, 1e20)).replace("inf", "1e999")
        if pick in (4, 5):
            body = "".join(rng.choice(STRING_PARTS) for _ in range(rng.randrange(4)))
            return f'"{body}"'
        if pick in (6, 7):
            return "[" + ",".join(value(depth + 1) for _ in range(rng.randrange(4))) + "]"
        items = [f'"{rng.choice("abc")}":{value(depth + 1)}' for _ in range(rng.randrange(4))]
        return "{" + ",".join(items) + "}"

    text = value(0)
    if rng.random() < 0.3:
        text = "[" * 126 + text + "]" * 126
    for _ in range(rng.randrange(3)):
        at = rng.randrange(len(text) + 1)
        if rng.random() < 0.5:
            text = text[:at] + rng.choice('[]{},:"\\ 0-eE.+\t\n\x00\x7f\ufeff') + text[at:]
        else:
            text = text[:at] + text[at + 1 :]
    return text


def test_fuzzed_texts_get_the_same_reading():
    rng = random.Random(11)
    for _ in range(5000):
        text = fuzzed(rng)
        assert_fast_agrees(text)


def test_check_value_still_refuses_what_it_refused():
    """The standard path's own checks are unchanged (loads_strict and the fallback use them)."""
    with pytest.raises(UnsupportedValue):
        check_value([float("nan")])
    with pytest.raises(NestedTooDeeply):
        check_value(json.loads("[" * 129 + "]" * 129))
