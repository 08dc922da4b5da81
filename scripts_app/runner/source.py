"""Reading a script's source without running it."""

from __future__ import annotations

import ast


class ScriptSourceError(ValueError):
    """The source cannot be run: a syntax error, or no top-level function."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


def top_level_functions(source: str) -> list[ast.FunctionDef]:
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ScriptSourceError(f"syntax error: {exc.msg}", exc.lineno) from None
    return [node for node in tree.body if isinstance(node, ast.FunctionDef)]


def entry_function(source: str, script_name: str) -> str:
    """The function a run calls: the one named like the script, else the first one defined."""
    functions = top_level_functions(source)
    if not functions:
        # Point at the end of the script: that is where a function is missing.
        raise ScriptSourceError("the script defines no top-level function", max(1, len(source.splitlines())))
    for function in functions:
        if function.name == script_name:
            return function.name
    return functions[0].name
