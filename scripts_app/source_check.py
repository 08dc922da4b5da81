"""The editor's live check of a source being typed: its syntax error (line and column), or the function a
run calls with its parameters, within the issue's 150 ms for a 3,000-line script.

`ast.parse` spends most of its time building a Python object for every node of the tree, which the check
never reads: it needs only whether the source parses and the header of one function. So:

1. the whole source goes through `symtable.symtable`, which runs the same parser (the same SyntaxError,
   line and column) and the scope analysis in C, and hands back only one object per scope: the module's
   child scopes name its functions and their `def` lines (about a quarter of `ast.parse`'s time);
2. the entry function (named like the script, else the first top-level one, as `entry_function`) is found
   among the top-level `def` lines, and only its header (tokenized from its `def` up to the header's colon)
   is parsed with `ast` to read the signature.

Whatever this cannot decide with certainty (a function defined inside a module-level `if`, a `def` line
that does not start the line, a header it cannot cut) goes the old way: the whole tree with `ast.parse`,
so the answer is always the one `entry_function` and `entry_signature` give. A few answers are saved by the
source's digest (an undo, a second check of the same text answers at once).

Hostile input stays bounded: the body's size is capped by DATA_UPLOAD_MAX_MEMORY_SIZE, and a source nested
too deeply for the parser is an error message (RecursionError, MemoryError), never a 500.
"""

from __future__ import annotations

import ast
import hashlib
import re
import symtable
import threading
import tokenize
from collections import OrderedDict
from dataclasses import dataclass
from itertools import islice

from scripts_app.runner.source import ScriptSourceError, entry_function_in, top_level_functions
from scripts_app.signature import Signature, signature_in

# A line that starts a top-level `def` (at column 0, as every top-level statement).
_DEF_LINE = re.compile(r"def[ \t]+([A-Za-z_][A-Za-z_0-9]*)[ \t]*\(")
_CACHE_SIZE = 64


@dataclass(frozen=True)
class CheckError:
    message: str
    line: int | None = None
    column: int | None = None


@dataclass(frozen=True)
class CheckResult:
    error: CheckError | None = None
    signature: Signature | None = None


class _Uncertain(Exception):
    """The fast path cannot tell for sure: read the whole tree instead."""


_cache: OrderedDict[bytes, CheckResult] = OrderedDict()
_cache_lock = threading.Lock()


def check_source(source: str, script_name: str) -> CheckResult:
    """The live check's answer for a source and the script's name."""
    key = hashlib.blake2b(source.encode("utf-8", "surrogatepass") + b"\0" + script_name.encode(), digest_size=16)
    digest = key.digest()
    with _cache_lock:
        if digest in _cache:
            _cache.move_to_end(digest)
            return _cache[digest]
    result = _check(source, script_name)
    with _cache_lock:
        _cache[digest] = result
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return result


def _check(source: str, script_name: str) -> CheckResult:
    # A browser's textarea sends \r\n; Python counts \r\n, \r and \n as one line end each.
    source = source.replace("\r\n", "\n").replace("\r", "\n")
    try:
        table = symtable.symtable(source, "<script>", "exec")
    except SyntaxError as exc:
        return CheckResult(error=CheckError(f"syntax error: {exc.msg}", exc.lineno, exc.offset))
    except (RecursionError, MemoryError):
        return CheckResult(error=CheckError("syntax error: the source is nested too deeply to be read"))
    try:
        try:
            return CheckResult(signature=_fast_signature(source, table, script_name))
        except _Uncertain:
            functions = top_level_functions(source)
            return CheckResult(signature=signature_in(functions, entry_function_in(functions, source, script_name)))
    except ScriptSourceError as exc:
        return CheckResult(error=CheckError(exc.message, exc.line))


def _top_level_defs(lines: list[str], table: symtable.SymbolTable) -> list[tuple[int, str]]:
    """(line, name) of each top-level `def` (not `async def`), in the source's order."""
    found: set[tuple[int, str]] = set()
    for child in table.get_children():
        if child.get_type() != "function":
            continue
        number = child.get_lineno()
        line = lines[number - 1] if 0 < number <= len(lines) else ""
        match = _DEF_LINE.match(line)
        if match and match.group(1) == child.get_name():
            found.add((number, child.get_name()))
        elif child.get_name() in ("lambda", "listcomp", "setcomp", "dictcomp", "genexpr"):
            continue  # an expression's scope, not a def (a def so named matched above)
        elif line.startswith("async") and line[5:6] in (" ", "\t"):
            continue  # an async def: not what a run calls
        elif line[:1] in (" ", "\t") and not (number > 1 and lines[number - 2].endswith("\\")):
            continue  # indented: a def inside a module-level if, for, with or try
        else:
            raise _Uncertain
    return sorted(found)


def _fast_signature(source: str, table: symtable.SymbolTable, script_name: str) -> Signature:
    lines = source.split("\n")
    defs = _top_level_defs(lines, table)
    if not defs:
        raise ScriptSourceError("the script defines no top-level function", max(1, len(source.splitlines())))
    number, name = next((d for d in defs if d[1] == script_name), defs[0])
    node = _header(lines, number, name)
    return signature_in([node], name)


def _header(lines: list[str], number: int, name: str) -> ast.FunctionDef:
    """The `def` at that line, parsed from its header alone (the body is replaced by `pass`)."""
    rest = (line + "\n" for line in islice(lines, number - 1, None))
    depth = 0
    end: tuple[int, int] | None = None
    try:
        for token in tokenize.generate_tokens(rest.__next__):
            if token.type == tokenize.OP:
                if token.string in "([{":
                    depth += 1
                elif token.string in ")]}":
                    depth -= 1
                elif token.string == ":" and depth == 0:
                    end = token.end
                    break
    except (tokenize.TokenError, SyntaxError, StopIteration):
        raise _Uncertain from None
    if end is None:
        raise _Uncertain
    row, column = end
    header = "".join(line + "\n" for line in lines[number - 1 : number - 2 + row]) + lines[number - 2 + row][:column]
    try:
        module = ast.parse(header + " pass\n")
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        raise _Uncertain from None
    node = module.body[0] if len(module.body) == 1 else None
    if not isinstance(node, ast.FunctionDef) or node.name != name:
        raise _Uncertain
    ast.increment_lineno(node, number - 1)
    return node
