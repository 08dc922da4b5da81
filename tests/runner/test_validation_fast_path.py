"""The parent checks a run's value with simdjson where it can, without building it (runner/validation.py
`_count_fast`), else reads it with orjson (`_read_fast`). A text either takes must be one the standard
library's path takes (json.loads and check_value), orjson's reading exactly its reading, and a document must
get the same verdict from `read_document` every way: forged, hostile and fuzzed texts."""

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

from scripts_app.runner import Failure, Limits, Outcome, validation
from scripts_app.runner.validation import (
    _ASK_STANDARD,
    MAX_DEPTH,
    InvalidResult,
    NestedTooDeeply,
    UnsupportedValue,
    _count_fast,
    _items,
    _nesting,
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
    # Around what simdjson reads differently or refuses.
    " \ufeff[1]",
    "[1]\ufeff",
    '"\ufeff"',
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775807",
    "[18446744073709551615, -18446744073709551615, 18446744073709551617]",
    "1.7976931348623157e308",
    "1.7976931348623158e308",
    "1.7976931348623159e308",
    "-1e999",
    "[-0, -0.0, 0e999, 1e-999]",
    '"\x00"',
    '"\x1f"',
    '"\x7f"',
    '"a\tb"',
    '"\\t"',
    '"\ud800\udc00"',
    '"\udbff\udfff"',
    '"\ud800\u0041"',
    '"\ud800\ud800"',
    '"\udc00"',
    '"\ud800"',
    '{"\u0000": 1}',
    '{"a": 1, "a": {"0": 1, "1": 2, "2": 3, "3": 4, "4": 5, "5": 6}}',
    '{"a": {"0": 1, "1": 2, "2": 3, "3": 4, "4": 5, "5": 6}, "a": 1}',
    '{"a": {"0": 1, "0": 2, "0": 3, "0": 4, "0": 5, "0": 6}}',
    '{"a": {"0": 1}, "b": [1, 2, 3, 4, 5, 6, 7]}',
    '{"a": {"0": 1, "1": 2, "2": 3, "3": 4, "4": 5, "5": 6}, "b": {"0": 1}}',
    '{"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "a": 6}',
    "[1, 2, 3, 4, 5]",
    "[1, 2, 3, 4, 5, 6]",
    "[1]\r",
    "\r\n [1]\t",
    "[1]\u00a0",
    "[" * 127 + '"]]]]"' + "]" * 127,
    "[" * 128 + '"]]]]"' + "]" * 128,
    "[" * 129 + '"]]]]"' + "]" * 129,
    "[" * 128 + '"[[[["' + "]" * 128,
    "[" * 127 + '"\\"]' + "]" * 127,
    "[" * 128 + '"\\"]' + "]" * 128,
    "[" * 128 + '"\\\\", "\\\\\\"]"' + "]" * 128,
    "[" * 129 + '"\\\\", "\\\\\\"]"' + "]" * 129,
    '[{"a": "[\\"{{"}, ' * 64 + "1" + "}]" * 64,
    '[{"a": "[\\"{{"}, ' * 65 + "1" + "}]" * 65,
    "[" * 127 + '{"a": [[]], "a": 1}' + "]" * 127,
    "[" * 126 + '{"a": [[]], "a": 1}' + "]" * 126,
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


def verdict(text: str | bytes, frame_orient: str = "records"):
    """What read_document makes of a document carrying `text` as its value."""
    line = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    raw = bytearray(META + b"\n" + line + b"\n[]")
    try:
        document = read_document(raw, Limits(max_output_items=5), frame_orient=frame_orient)
    except InvalidResult as error:
        return ("invalid", error.message)
    return (document.outcome, document.failure, document.error_message, document.value_json, document.value)


def verdict_without_simdjson(text: str | bytes, frame_orient: str = "records"):
    """The verdict of the orjson and standard paths alone, as where pysimdjson cannot be imported."""
    kept = validation.simdjson
    validation.simdjson = None
    try:
        return verdict(text, frame_orient)
    finally:
        validation.simdjson = kept


def assert_simdjson_agrees(text: str | bytes) -> None:
    """simdjson's check gives the verdict the other paths give, in both orientations; a count it gives is
    one the standard reading holds to (never smaller than `_items`, the same for a list)."""
    for orient in ("records", "columns"):
        assert same_verdict(verdict(text, orient), verdict_without_simdjson(text, orient)), (text[:80], orient)
        line = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
        count = _count_fast(memoryview(line), orient)
        if count is None:
            continue
        expected = standard(line.decode("utf-8"))
        assert not isinstance(expected, type), f"simdjson took {text[:80]!r}, which the standard library refuses"
        assert count >= _items(expected, orient), text[:80]
        if isinstance(expected, list):
            assert count == len(expected)


def same_verdict(a, b) -> bool:
    return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.skipif(validation.simdjson is None, reason="pysimdjson is not installed")
@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_simdjson_takes_only_what_the_standard_library_takes(text):
    assert_simdjson_agrees(text)


INVALID_UTF8 = [
    b'"\xff"',
    b'["\xc0\x80"]',
    b'"\xed\xa0\x80"',  # a raw surrogate, as "surrogatepass" writes it
    b'"\xed\xa0\xbd\xed\xb8\x80"',  # a raw surrogate pair
    b'"\xf4\x90\x80\x80"',  # beyond U+10FFFF
    b'"\xe2\x82"',
    b"\xef\xbb\xbf[1]",
    b"[1]\xef\xbb\xbf",
]


@pytest.mark.skipif(validation.simdjson is None, reason="pysimdjson is not installed")
@pytest.mark.parametrize("line", INVALID_UTF8, ids=range(len(INVALID_UTF8)))
def test_simdjson_and_bytes_that_are_not_utf8(line):
    for orient in ("records", "columns"):
        assert same_verdict(verdict(line, orient), verdict_without_simdjson(line, orient))


def test_nesting_is_check_values_depth():
    """_nesting counts the brackets outside strings, whatever the strings hold (brackets, escaped quotes and
    backslashes); a text nested more than MAX_DEPTH levels is one check_value refuses. (A repeated member
    can only make the text nest deeper than its value: `{"a": [[]], "a": 1}`, which goes to the standard
    path when it is too deep.)"""
    assert _nesting(b'{"a": [[]], "a": 1}') == 3
    rng = random.Random(7)
    for _ in range(2000):
        text = nested_text(rng)
        value = json.loads(text)
        assert _nesting(text.encode()) == depth(value), text[:80]
        refused = False
        try:
            check_value(value)
        except NestedTooDeeply:
            refused = True
        assert refused == (depth(value) > MAX_DEPTH)


def test_nesting_of_strings_with_and_without_brackets():
    """Quotes side by side are dropped as strings only when no quote is left over: a bracket in a string,
    or a closing and an opening quote that meet, never counts (the deep cases past MAX_DEPTH)."""
    cases = [
        ["[", "]"],
        ["]", "["] * 3,
        [{"a": "", "b": ""}] * 300,
        [{"a": "[", "b": "]"}] * 300,
        [["x"] * 3, "[[[[", {"": "}}}}"}] * 50,
        "[" * 300,
        "x" * 300,
        12345678901234567890.5,
        ['"[', '"', "\\", '\\"', '{"}'] * 60,
    ]
    value: list = []
    for _ in range(MAX_DEPTH + 5):
        value = [value, "", "]", ""]
    cases.append(value)
    value = []
    for _ in range(MAX_DEPTH - 3):
        value = [{"k": value, "": "["}]
    cases.append(value)
    for value in cases:
        for text in (json.dumps(value), json.dumps(value, separators=(",", ":")), json.dumps(value, indent=1)):
            assert _nesting(text.encode()) == depth(value), text[:80]


def depth(value) -> int:
    if isinstance(value, list):
        return 1 + max((depth(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(item) for item in value.values()), default=0)
    return 0


def nested_text(rng: random.Random) -> str:
    parts = ["[", "]", "{", "}", '\\"', "\\\\", "\\n", "\\u005b", "x", ":", ","]

    def string() -> str:
        return '"' + "".join(rng.choice(parts) for _ in range(rng.randrange(5))) + '"'

    target = rng.choice((1, 5, 127, 128, 129, 130))
    keys = iter(range(1_000_000))

    def key() -> str:
        # Unique: a repeated member keeps only its last value, and the text may nest deeper than that.
        return f'"{next(keys)}' + string()[1:]

    def value(level: int) -> str:
        if level >= target:
            return string() if rng.random() < 0.7 else rng.choice(["1", "null", "[]", "{}"])
        # Siblings hold strings full of brackets, and shallower containers.
        siblings = [string() if rng.random() < 0.8 else "[" + string() + "]" for _ in range(rng.randrange(3))]
        if rng.random() < 0.5:
            return "[" + ",".join(siblings + [value(level + 1)] + siblings) + "]"
        members = [f"{key()}:{item}" for item in siblings]
        return "{" + ",".join([*members, key() + ":" + value(level + 1)]) + "}"

    return value(0)


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


STRING_PARTS = [
    "a",
    "é",
    '\\"',
    "\\\\",
    "\\n",
    "\\u00e9",
    "\\u0000",
    "\\ud83d\\ude00",
    "\\ud800",
    "\\/",
    "𝄞",
    "[",
    "}",
    "\ufeff",
    "\\udbff\\udfff",
]


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


@pytest.mark.skipif(validation.simdjson is None, reason="pysimdjson is not installed")
def test_fuzzed_texts_get_the_same_verdict_with_simdjson():
    rng = random.Random(12)
    for _ in range(3000):
        assert_simdjson_agrees(fuzzed(rng))


@pytest.mark.skipif(validation.simdjson is None, reason="pysimdjson is not installed")
def test_a_checked_value_is_decoded_only_when_read():
    """A value simdjson checked stays text until something reads `value`, which decodes it as json does."""
    text = '[{"id": 18446744073709551615, "x": 0.5, "name": "row\\ud83d\\ude00"}, {"big": -9223372036854775808}]'
    raw = bytearray(META + b"\n" + text.encode() + b"\n[]")
    document = read_document(raw, LIMITS)
    assert document.decoded_value is None
    assert document.value_json == text
    assert same(document.value, json.loads(text))
    assert document.decoded_value is document.value


def test_check_value_still_refuses_what_it_refused():
    """The standard path's own checks are unchanged (loads_strict and the fallback use them)."""
    with pytest.raises(UnsupportedValue):
        check_value([float("nan")])
    with pytest.raises(NestedTooDeeply):
        check_value(json.loads("[" * 129 + "]" * 129))


def test_without_pysimdjson_the_parent_checks_with_orjson():
    """An environment where pysimdjson cannot be imported still checks every run (with orjson)."""
    code = (
        "import sys; sys.modules['simdjson'] = None\n"
        "from scripts_app.runner import Limits\n"
        "from scripts_app.runner import validation\n"
        "assert validation.simdjson is None\n"
        f"meta = {META!r}\n"
        "document = validation.read_document(bytearray(meta + b'\\n[{\"a\": 1}]\\n[]'), Limits())\n"
        "assert document.value == [{'a': 1}] and document.value_json == '[{\"a\": 1}]'\n"
        "print('ok')\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr


@pytest.mark.skipif(validation.simdjson is None, reason="pysimdjson is not installed")
def test_the_kept_parser_serves_text_after_text():
    """A thread's parser reads one text after another, a refused one and one over 1 MB between them."""
    big = b"[" + b"1," * 800_000 + b"1]"
    for line, count in [(b"[1, 2]", 2), (b"[1,]", None), (big, 800_001), (b'{"a": 1}', 1), (b"[[]]", 1)]:
        assert _count_fast(memoryview(line), "records") == count
