"""Strings of a `.pt2` program that torch evaluates or compiles, checked before it sees them.

torch's deserializer parses symbolic shapes with `sympy.sympify`, which is `eval`, and
rebuilds input/output tree specs whose contexts may name modules to import; turning a program
that has example inputs into a module compiles its guard code, with string inputs spliced in.
Each of these is allowed only in a small language that cannot name, import or call anything
but arithmetic and shape functions.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

from weissi_cli.errors import InputError

# Functions a symbolic shape may call: sympy's constructors (torch writes `srepr` strings such
# as "Add(Mul(Integer(2), Symbol('s0', positive=True, integer=True)), Integer(1))"), its
# relations, and the deserializer's own table of shape functions.
SHAPE_FUNCTIONS = frozenset(
    {
        "Add", "Mul", "Pow", "Symbol", "Integer", "Rational", "Float", "Max", "Min", "Abs",
        "Mod", "floor", "ceiling", "sqrt", "Piecewise", "ExprCondPair", "ITE", "And", "Or",
        "Not", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality", "StrictLessThan",
        "StrictGreaterThan", "LessThan", "GreaterThan", "BooleanTrue", "BooleanFalse",
        "Infinity", "NegativeInfinity", "FloorDiv", "ModularIndexing", "Where", "PythonMod",
        "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural",
        "FloatPow", "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator",
        "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity",
    }
)  # fmt: skip
POWERS = frozenset({"Pow", "PowByNatural", "FloatPow"})
EXPRESSION_NODES = (
    ast.Expression, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.Call, ast.Name,
    ast.Constant, ast.Tuple, ast.keyword, ast.Load, ast.operator, ast.unaryop, ast.cmpop,
    ast.boolop,
)  # fmt: skip
# Guard code (Python source torch compiles when a program with example inputs is turned
# into a module): comparisons of input sizes, e.g. "1 + (L['x'].size()[0] // 2) <= 3*L['y']".
GUARD_NODES = (*EXPRESSION_NODES, ast.Subscript, ast.Attribute)
GUARD_NAMES = frozenset({"L", "math", "inf"})
GUARD_ATTRIBUTES = frozenset(
    {"size", "stride", "storage_offset", "isnan", "inf", "floor", "ceil", "trunc", "sqrt"}
)
MAX_EXPRESSION = 2000  # characters
MAX_PRECISION = 1024  # bits of a sympy Float
MAX_LITERAL = 2**64
# Containers a tree spec may name: the ones whose contexts are plain JSON (dict keys).
TREE_TYPES = frozenset(
    {
        "builtins.tuple",
        "builtins.list",
        "builtins.dict",
        "collections.OrderedDict",
        "collections.namedtuple",
        "torch.fx.immutable_collections.immutable_list",
        "torch.fx.immutable_collections.immutable_dict",
    }
)


def check_strings(program_json: Any, member: str, path: Path) -> None:
    """Every string torch evaluates or compiles: symbolic expressions and tree specs wherever
    they sit, the guard code, and string inputs (which torch splices into guard code)."""
    guards = program_json.get("guards_code", []) if isinstance(program_json, dict) else []
    for guard in guards if isinstance(guards, list) else [guards]:
        reason = guard_problem(guard)
        if reason is not None:
            raise InputError(
                f"{path}: refused: {member} holds guard code {preview(guard)} that {reason}; "
                "nothing of it was compiled"
            )
    graph = program_json.get("graph_module") if isinstance(program_json, dict) else None
    graph = graph.get("graph") if isinstance(graph, dict) else None
    inputs = graph.get("inputs") if isinstance(graph, dict) else None
    for argument in inputs if isinstance(inputs, list) else []:
        text = argument.get("as_string") if isinstance(argument, dict) else None
        if text is not None and not (
            isinstance(text, str) and text.isprintable() and not set(text) & set("'\"\\")
        ):
            raise InputError(
                f"{path}: refused: {member} has a string input {preview(text)} with quotes, "
                "backslashes or control characters (torch splices it into guard code)"
            )
    stack = [program_json]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        for key, value in item.items():
            if key == "expr_str":
                reason = expression_problem(value)
                if reason is not None:
                    raise InputError(
                        f"{path}: refused: {member} holds a symbolic shape "
                        f"{preview(value)} that {reason}; nothing of it was evaluated"
                    )
            elif key in ("in_spec", "out_spec") and isinstance(value, str):
                reason = tree_spec_problem(value)
                if reason is not None:
                    raise InputError(
                        f"{path}: refused: {member} holds an input/output spec that "
                        f"{reason}; nothing of it was evaluated"
                    )
            else:
                stack.append(value)


def expression_problem(text: Any) -> str | None:
    """Why `text` is not a symbolic shape sympy may parse (it parses with `eval`), or None:
    numbers, symbols, arithmetic and comparisons, and calls of `SHAPE_FUNCTIONS` whose only
    strings are a symbol's name or a float's digits. sympy evaluates numeric powers
    eagerly (9**9**9 would not finish), so a power has a small or symbolic exponent and no
    power inside it."""
    tree = _parse(text)
    if isinstance(tree, str):
        return tree
    allowed_strings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else None
            if name not in SHAPE_FUNCTIONS:
                return f"calls {name or 'something'} (not a shape function)"
            problem = _call_problem(name, node, allowed_strings)
            if problem is not None:
                return problem
        if _is_power(node) and not _power_is_small(node):
            return "raises to a power that is not small"
    return _nodes_problem(tree, EXPRESSION_NODES, allowed_strings)


def guard_problem(text: Any) -> str | None:
    """Why `text` is not guard code of size comparisons, or None: the names `L`, `math` and
    `inf`, subscripts, size/stride lookups and `math` functions, shape functions, numbers,
    and strings that are plain identifiers (torch splices the code into a string literal)."""
    tree = _parse(text)
    if isinstance(tree, str):
        return tree
    allowed_strings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in GUARD_NAMES | SHAPE_FUNCTIONS:
            return f"names {node.id!r}"
        if isinstance(node, ast.Attribute) and node.attr not in GUARD_ATTRIBUTES:
            return f"looks up {node.attr!r}"
        if isinstance(node, ast.Call) and node.keywords:
            return "passes keyword arguments"
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if not node.value.isidentifier():
                return f"contains the string {preview(node.value)}"
            allowed_strings.add(id(node))
    return _nodes_problem(tree, GUARD_NODES, allowed_strings)


def _parse(text: Any) -> ast.Expression | str:
    if not isinstance(text, str):
        return "is not a string"
    if len(text) > MAX_EXPRESSION:
        return f"is longer than {MAX_EXPRESSION} characters"
    try:
        return ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return "is not an expression"


def _nodes_problem(tree: ast.AST, allowed: tuple[type, ...], strings: set[int]) -> str | None:
    for node in ast.walk(tree):
        if not isinstance(node, allowed):
            return f"contains {type(node).__name__} syntax"
        if isinstance(node, ast.Name) and node.id.startswith("_"):
            return f"names {node.id!r}"
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, str) and id(node) in strings:
                continue
            if not isinstance(value, int | float):  # bool is an int
                return f"contains the literal {preview(value)}"
            if isinstance(value, int) and abs(value) > MAX_LITERAL:
                return "contains an integer over 2**64"
    return None


def _call_problem(name: str, node: ast.Call, strings: set[int]) -> str | None:
    """Only `Symbol('s0', positive=True)` and `Float('1.5', precision=53)` take strings or
    keywords."""
    first = node.args[0] if node.args else None
    text = first.value if isinstance(first, ast.Constant) else None
    if name == "Symbol":
        if len(node.args) != 1 or not isinstance(text, str) or not text.isidentifier():
            return "makes a symbol whose name is not an identifier"
        if not all(
            isinstance(k.value, ast.Constant) and isinstance(k.value.value, bool)
            for k in node.keywords
        ):
            return "gives a symbol an assumption that is not True or False"
        strings.add(id(first))
    elif name == "Float" and isinstance(text, str):
        try:
            float(text)
        except ValueError:
            return f"makes a Float of {preview(text)}"
        if any(
            k.arg != "precision"
            or not isinstance(k.value, ast.Constant)
            or type(k.value.value) is not int
            or not 0 < k.value.value <= MAX_PRECISION
            for k in node.keywords
        ):
            return "gives a Float a precision that is not a small number"
        strings.add(id(first))
    elif node.keywords:
        return f"passes keyword arguments to {name}"
    return None


def _is_power(node: ast.AST) -> bool:
    if isinstance(node, ast.BinOp):
        return isinstance(node.op, ast.Pow)
    return isinstance(node, ast.Call) and getattr(node.func, "id", None) in POWERS


def _power_is_small(node: ast.AST) -> bool:
    if isinstance(node, ast.BinOp):
        base, exponent = node.left, node.right
    else:
        assert isinstance(node, ast.Call)
        if len(node.args) != 2:
            return False
        base, exponent = node.args
    if any(_is_power(inner) for inner in (*ast.walk(base), *ast.walk(exponent))):
        return False
    if isinstance(exponent, ast.UnaryOp) and isinstance(exponent.op, ast.USub):
        exponent = exponent.operand
    if isinstance(exponent, ast.Call) and getattr(exponent.func, "id", None) == "Integer":
        exponent = exponent.args[0] if len(exponent.args) == 1 else exponent
    if isinstance(exponent, ast.Call) and getattr(exponent.func, "id", None) == "Rational":
        return all(_small_number(argument) for argument in exponent.args)
    if isinstance(exponent, ast.Constant):
        return _small_number(exponent)
    return isinstance(exponent, ast.Name) or (
        isinstance(exponent, ast.Call) and getattr(exponent.func, "id", None) == "Symbol"
    )


def _small_number(node: ast.AST) -> bool:
    value = node.value if isinstance(node, ast.Constant) else None
    return isinstance(value, int | float) and abs(value) <= 64


def tree_spec_problem(text: str) -> str | None:
    """Why `text` is not a tree spec of plain containers, or None. Tree specs name Python
    types and may carry enum or default-factory contexts that torch imports by name."""
    try:
        protocol, root = json.loads(text)
    except (ValueError, TypeError, RecursionError):
        return "is not a tree spec"
    if protocol != 1:
        return f"uses tree-spec protocol {protocol!r}"
    stack = [root]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict) or not isinstance(node.get("children_spec"), list):
            return "is not a tree spec"
        kind, context = node.get("type"), node.get("context")
        if kind is None:
            if context is not None or node["children_spec"]:
                return "has a leaf with contents"
        elif kind not in TREE_TYPES:
            return f"names the container type {preview(kind)}"
        elif kind == "collections.namedtuple":
            if not _registered_namedtuple(context):
                return f"names a named tuple {preview(context)} torch does not know"
        elif not isinstance(context, str) or not _plain_keys(context):
            return f"gives {kind} a context other than plain keys"
        stack.extend(node["children_spec"])
    return None


def _plain_keys(context: str) -> bool:
    try:
        keys = json.loads(context)
    except (ValueError, RecursionError):
        return False
    return keys is None or (
        isinstance(keys, list) and all(isinstance(k, str | int | None) for k in keys)
    )


def _registered_namedtuple(context: Any) -> bool:
    from torch.utils import _pytree

    kind = _pytree.SERIALIZED_TYPE_TO_PYTHON_TYPE.get(context) if isinstance(context, str) else None
    return isinstance(kind, type) and issubclass(kind, tuple) and hasattr(kind, "_fields")


def preview(value: Any) -> str:
    """`value` for a message: its repr, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
