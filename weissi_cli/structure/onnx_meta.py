"""Output shapes of the most common ops (elementwise, concatenation, layer norm, matrix
products, softmax), computed here.

Their meta kernels are Python functions that import `torch._dynamo` (1.1-1.5 s here) or
sympy (0.6 s) on first use: more than reading a 2 GB model. Broadcasting, type promotion
and the products' shape rules are all these ops need, so the front-end applies them itself;
every other op runs its own meta kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

BOOLEAN = frozenset(
    [
        "eq",
        "gt",
        "lt",
        "ge",
        "le",
        "ne",
        "logical_and",
        "logical_or",
        "logical_xor",
        "logical_not",
        "isnan",
        "isinf",
    ]
)
FLOATING = frozenset(
    [
        "div",
        "sigmoid",
        "tanh",
        "exp",
        "log",
        "sqrt",
        "reciprocal",
        "erf",
        "sin",
        "cos",
        "tan",
        "atan",
        "softplus",
        "softsign",
        "gelu",
        "elu",
        "selu",
        "celu",
        "mish",
        "hardsigmoid",
        "hardswish",
    ]
)
ELEMENTWISE = (
    BOOLEAN
    | FLOATING
    | frozenset(
        [
            "add",
            "sub",
            "mul",
            "rsub",
            "fmod",
            "remainder",
            "maximum",
            "minimum",
            "bitwise_and",
            "bitwise_or",
            "pow",
            "relu",
            "leaky_relu",
            "neg",
            "abs",
            "floor",
            "ceil",
            "round",
            "sign",
            "where",
            "clamp",
            "_to_copy",
        ]
    )
)


def broadcast(shapes: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """NumPy's broadcasting of `shapes` (ValueError where they do not broadcast)."""
    rank = max((len(shape) for shape in shapes), default=0)
    result = [1] * rank
    for shape in shapes:
        for index, size in enumerate(shape, start=rank - len(shape)):
            if size != 1:
                if result[index] not in (1, size):
                    raise ValueError(f"shapes {list(shapes)} do not broadcast")
                result[index] = size
    return tuple(result)


def meta_output(torch: Any, name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """The op's output on the meta device, or None where its own meta kernel must run."""
    if name in ELEMENTWISE:
        return _elementwise(torch, name, args, kwargs)
    if name == "cat":
        return _cat(torch, args, kwargs)
    if name in ("matmul", "mm", "linear", "addmm"):
        return _product(torch, name, args)
    if name in ("_softmax", "_log_softmax"):
        return torch.empty(tuple(args[0].shape), dtype=args[0].dtype, device="meta")
    if name == "native_layer_norm":
        x, normalized = args[0], list(args[1])
        if list(x.shape[len(x.shape) - len(normalized) :]) != normalized:
            raise ValueError(f"normalized shape {normalized} is not the end of {list(x.shape)}")
        statistics = tuple(x.shape[: len(x.shape) - len(normalized)]) + (1,) * len(normalized)
        return (
            torch.empty(tuple(x.shape), dtype=x.dtype, device="meta"),
            torch.empty(statistics, dtype=x.dtype, device="meta"),
            torch.empty(statistics, dtype=x.dtype, device="meta"),
        )
    return None


def _elementwise(torch: Any, name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if not tensors:
        return None
    shape = broadcast([tuple(t.shape) for t in tensors])
    values = list(args[1:3]) if name == "where" else list(args[:2])
    values = [v for v in values if isinstance(v, torch.Tensor | int | float | bool)]
    if name in BOOLEAN:
        dtype = torch.bool
    elif name == "_to_copy":
        dtype = kwargs.get("dtype") or tensors[0].dtype
    elif len(values) == 2:
        dtype = torch.result_type(values[0], values[1])
    else:
        dtype = tensors[0].dtype if name != "where" else tensors[-1].dtype
    if name in FLOATING and not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    return torch.empty(shape, dtype=dtype, device="meta")


def _cat(torch: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    parts = [t for t in args[0] if tuple(t.shape) != (0,)]  # torch skips 1-D empty parts
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    if not parts:
        return None
    rank = len(parts[0].shape)
    dim %= max(rank, 1)
    shape = list(parts[0].shape)
    dtype = parts[0].dtype
    for part in parts[1:]:
        other = list(part.shape)
        if len(other) != rank or any(
            a != b for i, (a, b) in enumerate(zip(shape, other, strict=True)) if i != dim
        ):
            raise ValueError(f"cannot concatenate shapes {shape} and {other}")
        shape[dim] += other[dim]
        dtype = torch.promote_types(dtype, part.dtype)
    return torch.empty(tuple(shape), dtype=dtype, device="meta")


def _product(torch: Any, name: str, args: Sequence[Any]) -> Any:
    """`matmul` (NumPy's rules), `mm`, `linear` (x · Wᵀ) and `addmm` (bias + a · b)."""
    if name == "addmm":
        a, b = args[1], args[2]
    elif name == "linear":
        a, b = args[0], args[1]
        if len(b.shape) != 2:
            raise ValueError("a linear layer's weight must be a matrix")
        b = b.t()
    else:
        a, b = args[0], args[1]
    left, right = list(a.shape), list(b.shape)
    if not left or not right:
        raise ValueError("a matrix product of a number")
    if name in ("mm", "addmm") and (len(left) != 2 or len(right) != 2):
        raise ValueError("mm takes matrices")
    vector_left, vector_right = len(left) == 1, len(right) == 1
    if vector_left:
        left = [1, *left]
    if vector_right:
        right = [*right, 1]
    if left[-1] != right[-2]:
        raise ValueError(f"shapes {list(a.shape)} and {list(b.shape)} cannot be multiplied")
    shape = [*broadcast([left[:-2], right[:-2]]), left[-2], right[-1]]
    if vector_left:
        del shape[-2]
    if vector_right:
        del shape[-1]
    dtype = torch.promote_types(a.dtype, b.dtype)
    out = torch.empty(tuple(shape), dtype=dtype, device="meta")
    if name == "addmm":
        broadcast([tuple(args[0].shape), tuple(shape)])
    if name == "linear" and len(args) > 2 and args[2] is not None:
        broadcast([tuple(args[2].shape), tuple(shape)])
    return out
