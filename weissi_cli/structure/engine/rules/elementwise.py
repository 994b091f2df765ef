"""Elementwise ops: what passes a scale, what pins it, and products of two scaled values."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from weissi_cli.structure.engine.rules.common import (
    NON_HOMOGENEOUS,
    Arguments,
    align,
    first_argument,
    is_wildcard,
    out_shape,
)
from weissi_cli.structure.engine.scale import (
    Factor,
    Scale,
    constant,
    equate,
    expand,
    joint,
    reshape,
    simplify,
)
from weissi_cli.structure.engine.walk import Value, Walk, force_inputs


def passthrough(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """`f(c·x) = c·f(x)`: the output scales like the first input."""
    scale = walk.scale_of(first_argument(arguments))
    others = dict(list(arguments.items())[1:])
    force_inputs(walk, others, f"{walk.state.op}'s secondary input")
    if scale is None:
        return walk.ones_like_output(node)
    shape = walk.shape_of(node)
    if shape is not None and shape != scale.shape:
        return reshape(scale, shape, walk.atoms)
    return scale


def native_dropout(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """(output, mask): the output scales like the input, the mask is 1."""
    scale = walk.scale_of(arguments.get("input"))
    shapes = walk.output_shapes(node)
    mask = Scale.ones(shapes[1]) if len(shapes) > 1 and shapes[1] is not None else None
    return [scale, mask]


def prelu(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """A per-channel slope multiplies negative values only: the slope must not move."""
    slope = walk.scale_of(arguments.get("weight"))
    if slope is not None:  # the slope multiplies negative values only: it must not move
        for factor in slope.factors:
            walk.state.settle(factor.ids)
    return walk.scale_of(arguments.get("self")) or walk.ones_like_output(node)


def invariant(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """`f(c·x) = f(x)` (sign, comparisons with 0): the output is 1, the input unconstrained."""
    return walk.ones_like_output(node)


def forcing(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """Not homogeneous: its inputs and output are 1."""
    force_inputs(walk, arguments, f"{walk.state.op} {NON_HOMOGENEOUS}")
    return walk.ones_like_output(node)


def creation(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """A new tensor (zeros, arange, a shape-only `*_like`): scale 1, inputs untouched."""
    return walk.ones_like_output(node)


def clamp(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """`clamp(x, min=0)` is a ReLU (homogeneous); any other bound clips, pinning the scale."""
    low = arguments.get("min")
    high = arguments.get("max")
    if (low == 0 or low is None) and high is None:
        return passthrough(walk, node, {"self": arguments.get("self")})
    return forcing(walk, node, arguments)


def threshold_at_zero(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """Comparisons with 0 do not see a positive scale; with anything else they pin it."""
    values = list(arguments.values())
    if len(values) >= 2 and values[1] == 0:
        return invariant(walk, node, arguments)
    return forcing(walk, node, arguments)


def add(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """`a + b` (`sub`, `rsub`): both sides scale alike; a constant other than 0 pins the
    other side to 1 (an affine shift is not homogeneous)."""
    values = list(arguments.values())
    a, b = values[0], values[1]
    alpha = arguments.get("alpha", 1)
    scale_a, scale_b = walk.scale_of(a), walk.scale_of(b)
    shape = out_shape(walk, node)
    if scale_a is None or scale_b is None:
        tensor = scale_a if scale_a is not None else scale_b
        constant_side = b if scale_a is not None else a
        if tensor is None:
            return Scale.ones(shape)
        if is_wildcard(constant_side) or alpha == 0:
            return expand(tensor, shape) if tensor.shape != shape else tensor
        walk.state.force_scale(tensor, "adds a constant (an affine shift)")
        return Scale.ones(shape)
    return equate(scale_a, scale_b, walk.atoms)


def where(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """`where(cond, a, b)`: the value branches scale alike."""
    condition = arguments.get("condition")
    a, b = arguments.get("self"), arguments.get("other")
    walk.state.force_scale(walk.scale_of(condition), "a where's condition")
    return add(walk, node, {"self": a, "other": b})


def masked_fill(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """Filling with 0 or ±inf keeps the scale (a positive scale leaves them as they are); any
    other constant pins it."""
    value = arguments.get("value")
    walk.state.force_scale(walk.scale_of(arguments.get("mask")), "a mask")
    scale = walk.scale_of(arguments.get("self"))
    if scale is None:
        return walk.ones_like_output(node)
    if is_wildcard(value):
        return scale
    walk.state.force_scale(scale, "fills with a constant")
    return walk.ones_like_output(node)


def multiply(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """`a · b`: with a number the scale passes; with two tensors the output scales by the
    product, which is kept as a deferred constraint until one side is known to be 1 (the
    SiLU branch of a gated MLP, a cos/sin table, a norm's reciprocal); a stored tensor that
    nothing else settles is then held fixed as a constant, and the other side's scale passes."""
    return _product(walk, node, arguments, inverse=False)


def divide(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """`a / b`: like a product with the inverse of `b`'s scale."""
    return _product(walk, node, arguments, inverse=True)


def _product(walk: Walk, node: Any, arguments: Arguments, inverse: bool) -> Value:
    values = list(arguments.values())
    a, b = values[0], values[1]
    scale_a, scale_b = walk.scale_of(a), walk.scale_of(b)
    shape = out_shape(walk, node)
    if scale_b is None:  # times or over a number
        if scale_a is None:
            return Scale.ones(shape)
        if inverse and b == 0:
            walk.state.force_scale(scale_a, "a division by zero")
            return Scale.ones(shape)
        return expand(scale_a, shape) if scale_a.shape != shape else scale_a
    if scale_a is None:  # a number times or over a tensor
        if not inverse:
            return expand(scale_b, shape) if scale_b.shape != shape else scale_b
        return _inverse(walk, expand(scale_b, shape))
    atoms = walk.atoms
    a_full = simplify(expand(align(scale_a, len(shape)), shape), atoms)
    b_full = simplify(expand(align(scale_b, len(shape)), shape), atoms)
    if b_full.is_one(atoms):
        return a_full
    if a_full.is_one(atoms) and not inverse:
        return b_full
    if a_full.is_one(atoms):
        return _inverse(walk, b_full)
    # Both carry atoms. Where their free factors sit on different dimensions the product is
    # the union of the factors; where they overlap, the output gets new atoms tied to both
    # by a deferred product.
    free_a = [f for f in a_full.factors if not atoms.all_forced(f.ids)]
    free_b = [f for f in b_full.factors if not atoms.all_forced(f.ids)]
    dims_a = {d for f in free_a for d in f.dims}
    dims_b = {d for f in free_b for d in f.dims}
    if not dims_a & dims_b:
        if inverse:
            inverted = _inverse(walk, Scale(shape, tuple(free_b)))
            free_b = list(inverted.factors) if isinstance(inverted, Scale) else []
            free_b = [f for f in free_b if set(f.dims) <= dims_b]
        factors = list(free_a) + list(free_b)
        covered = {d for f in factors for d in f.dims}
        factors += [
            Factor((d,), constant((shape[d],))) for d in range(len(shape)) if d not in covered
        ]
        return Scale(shape, tuple(factors))
    dims = sorted(dims_a | dims_b)
    found_a = joint(a_full, dims, atoms)
    found_b = joint(b_full, dims, atoms)
    stored_a, stored_b = stored_tensor(walk, a), stored_tensor(walk, b)
    if (found_a is None or found_b is None) and (stored_a or stored_b):
        # no single atom per element follows the product: a stored factor is held fixed
        # as a constant, and the other side's scale passes it
        if stored_b:
            walk.hold_constant(stored_b, [f.ids for f in b_full.factors])
            return a_full
        walk.hold_constant(stored_a, [f.ids for f in a_full.factors])
        return _inverse(walk, b_full) if inverse else b_full
    if found_a is None or found_b is None:
        walk.state.force_scale(a_full, "a product of two values that both carry scales")
        walk.state.force_scale(b_full, "a product of two values that both carry scales")
        return Scale.ones(shape)
    ids_a = _arrange(found_a, dims)
    ids_b = _arrange(found_b, dims)
    out = atoms.new(ids_a.shape)
    if stored_a and not stored_b and not inverse:  # the stored factor goes second
        ids_a, ids_b, stored_b = ids_b, ids_a, stored_a
    walk.product(
        out.ravel(),
        np.ascontiguousarray(ids_a).ravel(),
        np.ascontiguousarray(ids_b).ravel(),
        inverse,
        stored_b,
    )
    factors = [Factor(tuple(dims), out)]
    factors += [Factor((d,), constant((shape[d],))) for d in range(len(shape)) if d not in dims]
    return Scale(shape, tuple(factors))


# Ops that move a tensor's values without computing new ones: a tensor read through them is
# still the stored tensor, up to its layout.
LAYOUT_OPS = frozenset(
    (
        "_to_copy",
        "alias",
        "clone",
        "contiguous",
        "expand",
        "permute",
        "reshape",
        "_unsafe_view",
        "slice",
        "squeeze",
        "t",
        "transpose",
        "unsqueeze",
        "view",
    )
)


def stored_tensor(walk: Walk, argument: Any) -> str:
    """The checkpoint tensor `argument` is read from through layout ops alone ("" if none):
    a factor the engine may hold fixed as a constant."""
    from weissi_cli.structure.engine.walk import _op_name

    node = argument
    while getattr(node, "op", None) == "call_function" and _op_name(node.target) in LAYOUT_OPS:
        node = node.args[0] if node.args else None
    if getattr(node, "op", None) != "placeholder":
        return ""
    tensor = walk.placeholders.get(node.name)
    return tensor if tensor is not None and walk.scalable(tensor) else ""


def _arrange(found: tuple[tuple[int, ...], Any], dims: Sequence[int]) -> Any:
    covered, ids = found
    extra = [d for d in covered if d not in dims]
    if extra:  # a joint factor reaching beyond `dims` is constant there (simplified)
        ids = np.take(ids, 0, axis=covered.index(extra[0]))
        covered = tuple(d for d in covered if d != extra[0])
        return _arrange((covered, ids), dims)
    return np.transpose(ids, [covered.index(d) for d in dims])


def _inverse(walk: Walk, scale: Scale) -> Scale:
    """New atoms that are the inverse of `scale`'s (`1/x`)."""
    factors = []
    for factor in scale.factors:
        if walk.atoms.all_forced(factor.ids):
            factors.append(Factor(factor.dims, constant(factor.ids.shape)))
            continue
        fresh = walk.atoms.new(factor.ids.shape)
        walk.atoms.join(fresh, factor.ids, True)
        factors.append(Factor(factor.dims, fresh))
    return Scale(scale.shape, tuple(factors))


def reciprocal(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """`1 / x`: the output scales by the inverse of the input's scale."""
    scale = walk.scale_of(first_argument(arguments))
    return _inverse(walk, scale) if scale is not None else walk.ones_like_output(node)


def power(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """`x ** p`: p = 1 passes the scale, p = -1 inverts it, any other power pins it."""
    exponent = arguments.get("exponent")
    if exponent == 1:
        return passthrough(walk, node, {"self": arguments.get("self")})
    if exponent == -1:
        return reciprocal(walk, node, {"self": arguments.get("self")})
    return forcing(walk, node, arguments)
