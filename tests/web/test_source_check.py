"""The live check's fast path (symtable, then the entry function's header alone) answers exactly what the
whole tree (ast.parse, entry_function, entry_signature) answers, on sources meant to trip it."""

from __future__ import annotations

import pytest
from django.urls import reverse

from scripts_app.runner.source import ScriptSourceError, entry_function
from scripts_app.signature import entry_signature
from scripts_app.source_check import check_source
from tests.web.conftest import logged_in

SOURCES = {
    "plain": "def f(a, b: int = 2, *, c: list[float] = [1.0]):\n    return a\n",
    "named like the script": "def g():\n    pass\n\ndef report(n: int = 3):\n    return n\n",
    "decorated": "import functools\n@functools.cache\ndef report(x=1):\n    return x\n",
    "multi-line header": (
        "def report(\n    a: int = 1,  # first (a comment with a colon: here)\n    b={'k': (1, 2)},\n"
        "    c=lambda y: y,\n) -> dict[str, int]:\n    return {}\n"
    ),
    "one-line body": "def report(x=1): return x\n",
    "in a string": 'doc = """\ndef report(evil=1):\n"""\ndef other(ok=2):\n    return ok\n',
    "inside an if": "import sys\nif sys:\n    def report(a=1):\n        return a\ndef later(b=2):\n    return b\n",
    "only inside an if": "if True:\n    def report(a=1):\n        return a\n",
    "async only": "async def report(a=1):\n    return a\n",
    "async then sync": "async def report(a=1):\n    return a\ndef sync(b=2):\n    return b\n",
    "a def named listcomp": "xs = [i for i in range(3)]\ndef listcomp(n=1):\n    return n\n",
    "a class first": "class report:\n    def report(self, z=1):\n        pass\ndef run(q=1):\n    return q\n",
    "crlf": "x = 1\r\n\r\ndef report(a=1,\r\n           b=2):\r\n    return a\r\n",
    "lone cr": "x = 1\rdef report(a=1):\r    return a\r",
    "twice the same name": "def report(a=1):\n    pass\ndef report(b=2):\n    pass\n",
    "no function": "x = 1\ny = 2\n",
    "empty": "",
    "syntax error": "def report(:\n    pass\n",
    "error on the last line": "def report():\n    return (\n",
    "form feed": "\x0cdef report(a=1):\n    return a\n",
    "continued line": "x = 1\n\\\n\ndef report(a=1):\n    return a\n",
    "star args": "def report(a, /, b, *args, **kwargs):\n    pass\n",
    "nested too deep to read the signature": "def report(x: " + "+".join(["1"] * 2500) + " = 1):\n    return x\n",
    "header in a string default": "def report(s='def x(:', t=\"):\"):\n    return s\n",
}


def old_answer(source: str, name: str) -> tuple[str, int | None] | object:
    try:
        return entry_signature(source, entry_function(source, name))
    except ScriptSourceError as exc:
        return (exc.message, exc.line)


@pytest.mark.parametrize("source", SOURCES.values(), ids=SOURCES.keys())
def test_the_fast_check_answers_as_the_whole_tree(source):
    result = check_source(source, "report")
    new = (result.error.message, result.error.line) if result.error else result.signature
    assert new == old_answer(source, "report")


def test_a_syntax_error_has_its_line_and_column(client, analyst):
    response = logged_in(client, analyst).post(
        reverse("web:script_check"), {"name": "f", "source": "def f():\n    return 1 +* 2\n"}
    )
    assert b'data-check-line="2"' in response.content
    assert b'data-check-column="15"' in response.content
    assert b"Line 2: syntax error" in response.content


def test_the_same_source_twice_gives_the_same_answer():
    source = "def report(a=1):\n    return a\n"
    assert check_source(source, "report") == check_source(source, "report")
    assert check_source(source, "other").signature.function == "report"
