"""Reading a script's source without running it."""

from __future__ import annotations

import ast
import functools
import sys


class ScriptSourceError(ValueError):
    """The source cannot be run: a syntax error, or no top-level function."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


def parse(source: str) -> ast.Module:
    """The source's syntax tree; ScriptSourceError when it has none.

    A deeply nested expression (`x = -(-(-...))`, `1+1+...` a million times) makes the parser raise
    RecursionError or MemoryError: those are bounds of the parser, not faults of this process.
    """
    try:
        return ast.parse(source)
    except SyntaxError as exc:
        raise ScriptSourceError(f"syntax error: {exc.msg}", exc.lineno) from None
    except (RecursionError, MemoryError):
        raise ScriptSourceError("syntax error: the source is nested too deeply to be read") from None


def top_level_functions(source: str) -> list[ast.FunctionDef]:
    return [node for node in parse(source).body if isinstance(node, ast.FunctionDef)]


def entry_function(source: str, script_name: str) -> str:
    """The function a run calls: the one named like the script, else the first one defined."""
    return entry_function_in(top_level_functions(source), source, script_name)


def entry_function_in(functions: list[ast.FunctionDef], source: str, script_name: str) -> str:
    """entry_function for a source already parsed (parsing is most of the time of a live check)."""
    if not functions:
        # Point at the end of the script: that is where a function is missing.
        raise ScriptSourceError("the script defines no top-level function", max(1, len(source.splitlines())))
    for function in functions:
        if function.name == script_name:
            return function.name
    return functions[0].name


@functools.lru_cache(maxsize=512)
def imports_only_stdlib(source: str) -> bool:
    """Whether every import in the source, anywhere in it, is of a standard-library module.

    A script that imports dynamically (`__import__`, `importlib.import_module`) counts as not.
    """
    try:
        tree = parse(source)
    except ScriptSourceError:
        return True  # it fails at once wherever it runs
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                return False
            names = [node.module or ""]
        elif (isinstance(node, ast.Name) and node.id == "__import__") or (
            isinstance(node, ast.Attribute) and node.attr == "import_module"
        ):
            return False
        else:
            continue
        if any(name.partition(".")[0] not in sys.stdlib_module_names for name in names):
            return False
    return True
