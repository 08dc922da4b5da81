"""What a script's entry function takes, read from its source with the ast (never by running it).

The run form turns each parameter into a field; anything it cannot type is a JSON field.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

from scripts_app.runner.source import ScriptSourceError, top_level_functions

# What a field can hold. "json" takes any JSON value (or, failing that, the text as a string).
KINDS = ("int", "float", "bool", "str", "list", "json")
_NAMED_KINDS = {"int": "int", "float": "float", "bool": "bool", "str": "str", "list": "list", "List": "list"}
_LIST_NAMES = {"list", "List", "Sequence", "tuple", "Tuple", "Iterable"}
_MISSING = object()


@dataclass(frozen=True)
class Parameter:
    name: str
    kind: str
    # The kind of each item of a list ("json" when unknown).
    item_kind: str = "json"
    default: Any = _MISSING
    annotation: str = ""

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    @property
    def has_default(self) -> bool:
        return self.default is not _MISSING


@dataclass(frozen=True)
class Signature:
    function: str
    parameters: list[Parameter]
    # **kwargs or *args: the function takes more than the form can list.
    takes_more: bool = False


def entry_signature(source: str, function_name: str) -> Signature:
    """The parameters of the named top-level function; ScriptSourceError when it cannot be read."""
    return signature_in(top_level_functions(source), function_name)


def signature_in(functions: list[ast.FunctionDef], function_name: str) -> Signature:
    """entry_signature for a source already parsed."""
    for node in functions:
        if node.name == function_name:
            try:
                return _signature(node)
            except (RecursionError, MemoryError):
                # ast.literal_eval and ast.unparse recurse: a default or annotation nested thousands deep.
                raise ScriptSourceError(
                    f"the parameters of {function_name!r} are nested too deeply to be read", node.lineno
                ) from None
    raise ScriptSourceError(f"the script has no top-level function {function_name!r}")


def _signature(node: ast.FunctionDef) -> Signature:
    args = node.args
    positional = args.args
    defaults: list[Any] = [_MISSING] * (len(positional) - len(args.defaults)) + [_literal(d) for d in args.defaults]
    parameters = [_parameter(arg, default) for arg, default in zip(positional, defaults, strict=True)]
    kw_defaults = [_MISSING if d is None else _literal(d) for d in args.kw_defaults]
    parameters += [_parameter(arg, default) for arg, default in zip(args.kwonlyargs, kw_defaults, strict=True)]
    # Positional-only parameters cannot be given by keyword, which is all a run passes.
    takes_more = bool(args.vararg or args.kwarg or args.posonlyargs)
    return Signature(function=node.name, parameters=parameters, takes_more=takes_more)


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        # A default the form cannot show (a call, a name): the field stays optional and empty.
        return None


def _parameter(arg: ast.arg, default: Any) -> Parameter:
    annotation = ast.unparse(arg.annotation) if arg.annotation is not None else ""
    kind, item_kind = _kind_of_annotation(arg.annotation)
    if kind == "json" and default is not _MISSING and default is not None:
        kind, item_kind = _kind_of_value(default)
    return Parameter(name=arg.arg, kind=kind, item_kind=item_kind, default=default, annotation=annotation)


def _kind_of_annotation(node: ast.expr | None) -> tuple[str, str]:
    if node is None:
        return "json", "json"
    node = _without_none(node)
    name = _name(node)
    if name in _NAMED_KINDS:
        return _NAMED_KINDS[name], "json"
    if isinstance(node, ast.Subscript) and _name(node.value) in _LIST_NAMES:
        item = node.slice.elts[0] if isinstance(node.slice, ast.Tuple) and node.slice.elts else node.slice
        item_kind = _NAMED_KINDS.get(_name(item), "json")
        return "list", item_kind if item_kind in ("int", "float", "str", "bool") else "json"
    if name in _LIST_NAMES:
        return "list", "json"
    return "json", "json"


def _without_none(node: ast.expr) -> ast.expr:
    """X for `X | None` and `Optional[X]`."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        sides = [side for side in (node.left, node.right) if not _is_none(side)]
        if len(sides) == 1:
            return sides[0]
    if isinstance(node, ast.Subscript) and _name(node.value) == "Optional":
        return node.slice
    return node


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _kind_of_value(value: Any) -> tuple[str, str]:
    if isinstance(value, bool):
        return "bool", "json"
    if isinstance(value, int):
        return "int", "json"
    if isinstance(value, float):
        return "float", "json"
    if isinstance(value, str):
        return "str", "json"
    if isinstance(value, list | tuple):
        kinds = {_kind_of_value(item)[0] for item in value}
        item_kind = kinds.pop() if len(kinds) == 1 else "json"
        return "list", item_kind if item_kind in ("int", "float", "str", "bool") else "json"
    return "json", "json"
