"""Stored values are decoded by orjson when it can: what it gives must be what the standard library gives."""

import json
import math

import pytest

from scripts_app.models import decode_json

CASES = [
    "null",
    '{"a": [1, 2.5, -0.0, 1e308, 5e-324, 0.1], "b": {"c": "é𝄞\\u00e9"}}',
    "[18446744073709551616, -9223372036854775809]",  # beyond 64 bits: orjson refuses, json takes them
    "1e400",  # json reads it as infinity
    '[{"x": 1, "x": 2}]',
    '"\\ud800"',  # a lone surrogate escape (stored values are cleaned of them; old rows may not be)
    "[" * 128 + "1" + "]" * 128,  # as deep as a run's value may be
    "[1e19, 12345678901234567890.0, 9223372036854775807]",  # large floats: read again by json, same values
]


@pytest.mark.parametrize("text", CASES)
def test_decode_json_gives_what_json_gives(text):
    decoded, expected = decode_json(text), json.loads(text)
    assert json.dumps(decoded) == json.dumps(expected)
    if isinstance(expected, float):
        assert math.copysign(1, decoded) == math.copysign(1, expected)


def test_a_large_table_decodes_to_the_same_rows():
    rows = [{f"c{column}": row * 0.1 + column for column in range(31)} for row in range(5000)]
    text = json.dumps(rows)
    assert decode_json(text) == rows


def test_broken_text_still_raises():
    with pytest.raises(json.JSONDecodeError):
        decode_json('{"a": ')
