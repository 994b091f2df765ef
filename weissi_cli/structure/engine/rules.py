"""The op rules: how each ATen op relates the scales of its inputs and outputs.

The table at the end (`RULES`) maps an op's name to its rule; the export and core-ATen
spellings of one op share a rule. An op missing from the table stops every scale that
reaches it (its inputs are forced to 1) and is reported by name and node. Each rule is
written so that any scaling it allows leaves the op's result exact, up to float rounding:
where it cannot tell, it forces scales to 1, which only loses symmetries.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from weissi_cli.structure.engine import experts
from weissi_cli.structure.engine.atoms import ONE
from weissi_cli.structure.engine.scale import (
    Factor,
    Scale,
    concatenate,
    constant,
    drop_dim,
    equate,
    expand,
    joint,
    permute,
    reshape,
    simplify,
    take,
    unsqueeze,
)
from weissi_cli.structure.engine.walk import Derived, Rule, Value, Walk, force_inputs

Arguments = dict[str, Any]

NON_HOMOGENEOUS = "does not commute with a per-channel scale (not positively homogeneous)"


def _first(arguments: Arguments) -> Any:
    return next(iter(arguments.values()))


def _out_shape(walk: Walk, node: Any) -> tuple[int, ...]:
    shape = walk.shape_of(node)
    if shape is None:
        raise _Unknown("an output of unknown shape (export with static shapes)")
    return shape


class _Unknown(Exception):
    """A rule cannot follow this node: its inputs are stopped."""


def guarded(rule: Rule) -> Rule:
    """Run a rule; where it cannot follow the node (unknown shapes, odd arguments), stop the
    node's inputs instead."""

    def run(walk: Walk, node: Any, arguments: Arguments) -> Value:
        try:
            return rule(walk, node, arguments)
        except _Unknown as error:
            force_inputs(walk, arguments, str(error))
        except (TypeError, ValueError, IndexError, KeyError) as error:
            # arguments the rule cannot read (symbolic sizes of a dynamic-shape export, odd
            # values in an untrusted program): stop what reaches the node, say why
            force_inputs(walk, arguments, f"arguments the rule cannot follow ({error})")
        return walk.ones_like_output(node)

    run.__wrapped__ = rule  # type: ignore[attr-defined]
    return run


# -- elementwise -----------------------------------------------------------------------------


def passthrough(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """`f(c·x) = c·f(x)`: the output scales like the first input."""
    scale = walk.scale_of(_first(arguments))
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


def _is_wildcard(value: Any) -> bool:
    """A constant that any positive scale leaves as it is: 0 and ±inf."""
    return isinstance(value, int | float) and (value == 0 or math.isinf(value))


def add(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """`a + b` (`sub`, `rsub`): both sides scale alike; a constant other than 0 pins the
    other side to 1 (an affine shift is not homogeneous)."""
    values = list(arguments.values())
    a, b = values[0], values[1]
    alpha = arguments.get("alpha", 1)
    scale_a, scale_b = walk.scale_of(a), walk.scale_of(b)
    shape = _out_shape(walk, node)
    if scale_a is None or scale_b is None:
        tensor = scale_a if scale_a is not None else scale_b
        constant_side = b if scale_a is not None else a
        if tensor is None:
            return Scale.ones(shape)
        if _is_wildcard(constant_side) or alpha == 0:
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
    if _is_wildcard(value):
        return scale
    walk.state.force_scale(scale, "fills with a constant")
    return walk.ones_like_output(node)


def multiply(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """`a · b`: with a number the scale passes; with two tensors the output scales by the
    product, which is kept as a deferred constraint until one side is known to be 1 (the
    SiLU branch of a gated MLP, a cos/sin table, a norm's reciprocal)."""
    return _product(walk, node, arguments, inverse=False)


def divide(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """`a / b`: like a product with the inverse of `b`'s scale."""
    return _product(walk, node, arguments, inverse=True)


def _product(walk: Walk, node: Any, arguments: Arguments, inverse: bool) -> Value:
    values = list(arguments.values())
    a, b = values[0], values[1]
    scale_a, scale_b = walk.scale_of(a), walk.scale_of(b)
    shape = _out_shape(walk, node)
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
    a_full = simplify(expand(_align(scale_a, len(shape)), shape), atoms)
    b_full = simplify(expand(_align(scale_b, len(shape)), shape), atoms)
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
    if found_a is None or found_b is None:
        walk.state.force_scale(a_full, "a product of two values that both carry scales")
        walk.state.force_scale(b_full, "a product of two values that both carry scales")
        return Scale.ones(shape)
    ids_a = _arrange(found_a, dims)
    ids_b = _arrange(found_b, dims)
    out = atoms.new(ids_a.shape)
    walk.product(
        out.ravel(),
        np.ascontiguousarray(ids_a).ravel(),
        np.ascontiguousarray(ids_b).ravel(),
        inverse,
    )
    factors = [Factor(tuple(dims), out)]
    factors += [Factor((d,), constant((shape[d],))) for d in range(len(shape)) if d not in dims]
    return Scale(shape, tuple(factors))


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
    scale = walk.scale_of(_first(arguments))
    return _inverse(walk, scale) if scale is not None else walk.ones_like_output(node)


def power(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """`x ** p`: p = 1 passes the scale, p = -1 inverts it, any other power pins it."""
    exponent = arguments.get("exponent")
    if exponent == 1:
        return passthrough(walk, node, {"self": arguments.get("self")})
    if exponent == -1:
        return reciprocal(walk, node, {"self": arguments.get("self")})
    return forcing(walk, node, arguments)


def _align(scale: Scale, rank: int) -> Scale:
    while scale.rank < rank:
        scale = unsqueeze(scale, 0)
    return scale


# -- views -----------------------------------------------------------------------------------


def view(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """`view`/`reshape`/`flatten`: runs of axes map onto each other (a channel split into
    heads, a channel flattened with positions of scale 1); a reshape that mixes channels
    pins them."""
    scale = walk.scale_of(_first(arguments))
    shape = _out_shape(walk, node)
    if scale is None:
        return Scale.ones(shape)
    return reshape(scale, shape, walk.atoms)


def permute_rule(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """Axes follow their permutation."""
    scale = walk.scale_of(_first(arguments))
    if scale is None:
        return walk.ones_like_output(node)
    rank = scale.rank
    dims = arguments.get("dims")
    if dims is None:
        raise _Unknown("a permutation without dims")
    return permute(scale, [d % rank for d in dims])


def transpose_rule(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """Two axes swap."""
    scale = walk.scale_of(_first(arguments))
    if scale is None:
        return walk.ones_like_output(node)
    rank = scale.rank
    order = list(range(rank))
    if rank >= 2:
        first = arguments.get("dim0", 0) % rank
        second = arguments.get("dim1", 1) % rank
        order[first], order[second] = order[second], order[first]
    return permute(scale, order)


def unsqueeze_rule(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """A new axis of size 1 and scale 1."""
    scale = walk.scale_of(_first(arguments))
    if scale is None:
        return walk.ones_like_output(node)
    return unsqueeze(scale, arguments["dim"])


def squeeze_rule(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """An axis of size 1 goes (its one atom is pinned)."""
    scale = walk.scale_of(_first(arguments))
    if scale is None:
        return walk.ones_like_output(node)
    return reshape(scale, _out_shape(walk, node), walk.atoms)


def expand_rule(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """Broadcast copies carry the scale of the entry they copy."""
    scale = walk.scale_of(_first(arguments))
    shape = _out_shape(walk, node)
    if scale is None:
        return Scale.ones(shape)
    return expand(scale, shape)


def repeat_rule(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """`repeat` tiles: index i of the output is index i mod n of the input."""
    scale = walk.scale_of(_first(arguments))
    shape = _out_shape(walk, node)
    if scale is None:
        return Scale.ones(shape)
    scale = _align(scale, len(shape))
    for dim, size in enumerate(shape):
        if size != scale.shape[dim]:
            scale = take(scale, dim, np.arange(size) % scale.shape[dim])
    return scale


def repeat_interleave_rule(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """Each index repeated in place: copies carry its scale."""
    scale = walk.scale_of(_first(arguments))
    repeats = arguments.get("repeats")
    dim = arguments.get("dim")
    if scale is None:
        return walk.ones_like_output(node)
    if not isinstance(repeats, int) or dim is None:
        raise _Unknown("repeat_interleave with tensor repeats or no dim")
    dim %= scale.rank
    return take(scale, dim, np.repeat(np.arange(scale.shape[dim]), repeats))


def slice_rule(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """A range of one axis keeps the scales of its entries (fused projections, RoPE halves)."""
    scale = walk.scale_of(_first(arguments))
    if scale is None:
        return walk.ones_like_output(node)
    dim = arguments.get("dim", 0) % scale.rank
    size = scale.shape[dim]
    start, end, step = arguments.get("start"), arguments.get("end"), arguments.get("step", 1)
    positions = np.arange(size)[slice(start, end, step)]
    return take(scale, dim, positions)


def narrow_rule(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """A range of one axis keeps the scales of its entries."""
    scale = walk.scale_of(_first(arguments))
    if scale is None:
        return walk.ones_like_output(node)
    dim = arguments["dim"] % scale.rank
    start, length = arguments["start"], arguments["length"]
    if not isinstance(start, int):
        raise _Unknown("narrow at a tensor position")
    return take(scale, dim, np.arange(start, start + length))


def select_rule(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """One index of an axis: where the axis has a factor of its own, that atom is pinned."""
    scale = walk.scale_of(_first(arguments))
    if scale is None:
        return walk.ones_like_output(node)
    dim = arguments["dim"] % scale.rank
    index = arguments["index"]
    if not isinstance(index, int):
        raise _Unknown("select at a tensor position")
    return drop_dim(scale, dim, index % scale.shape[dim], walk.atoms)


def flip_rule(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """Reversed axes carry their entries' scales."""
    scale = walk.scale_of(_first(arguments))
    if scale is None:
        return walk.ones_like_output(node)
    for dim in arguments.get("dims", []):
        dim %= scale.rank
        scale = take(scale, dim, np.arange(scale.shape[dim])[::-1])
    return scale


def roll_rule(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """Rolled axes carry their entries' scales."""
    scale = walk.scale_of(_first(arguments))
    if scale is None:
        return walk.ones_like_output(node)
    shifts, dims = arguments.get("shifts"), arguments.get("dims")
    if not dims or shifts is None:
        raise _Unknown("roll over the flattened tensor")
    for shift, dim in zip(shifts, dims, strict=True):
        dim %= scale.rank
        scale = take(scale, dim, np.roll(np.arange(scale.shape[dim]), shift))
    return scale


def split_rule(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """`split`/`chunk`/`split_with_sizes`/`unbind`: consecutive ranges of one dimension."""
    scale = walk.scale_of(_first(arguments))
    shapes = walk.output_shapes(node)
    if scale is None:
        return [Scale.ones(s) if s is not None else None for s in shapes]
    dim = arguments.get("dim", 0) % scale.rank
    parts: list[Scale | None] = []
    start = 0
    unbind = walk.state.op == "unbind"
    for shape in shapes:
        if shape is None:
            raise _Unknown("a split into parts of unknown shape")
        if unbind:
            parts.append(drop_dim(scale, dim, start, walk.atoms))
            start += 1
        else:
            parts.append(take(scale, dim, np.arange(start, start + shape[dim])))
            start += shape[dim]
    return parts


def cat_rule(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """Concatenated on an axis: each part's scales at its offset; along every other axis the
    parts scale alike."""
    tensors = arguments.get("tensors")
    if not tensors:
        raise _Unknown("a concatenation of nothing")
    shapes = [walk.shape_of(t) for t in tensors]
    scales = []
    for tensor, shape in zip(tensors, shapes, strict=True):
        if shape is None:
            raise _Unknown("a concatenation of unknown shapes")
        scales.append(walk.scale_of(tensor) or Scale.ones(shape))
    nonempty = [s for s in scales if 0 not in s.shape]
    rank = nonempty[0].rank if nonempty else scales[0].rank
    dim = arguments.get("dim", 0) % rank
    return concatenate([s for s in scales if s.rank == rank], dim, walk.atoms)


def stack_rule(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """Stacked along a new axis: each part at its index; along every other axis the parts
    scale alike."""
    tensors = arguments.get("tensors")
    dim = arguments.get("dim", 0)
    scales = []
    for tensor in tensors or []:
        shape = walk.shape_of(tensor)
        if shape is None:
            raise _Unknown("a stack of unknown shapes")
        scales.append(unsqueeze(walk.scale_of(tensor) or Scale.ones(shape), dim))
    return concatenate(scales, dim % scales[0].rank, walk.atoms)


def pad_rule(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """Zero padding: the new entries are 0, which any scale leaves as it is (new atoms)."""
    scale = walk.scale_of(_first(arguments))
    shape = _out_shape(walk, node)
    if scale is None:
        return Scale.ones(shape)
    value = arguments.get("value", 0)
    mode = arguments.get("mode", "constant")
    pads = arguments.get("pad") or []
    if mode != "constant" or not _is_wildcard(value if value is not None else 0):
        walk.state.force_scale(scale, "pads with a constant other than zero")
        return Scale.ones(shape)
    for index in range(0, len(pads), 2):
        dim = scale.rank - 1 - index // 2
        before, after = pads[index], pads[index + 1]
        if before == 0 and after == 0:
            continue
        if before < 0 or after < 0:
            size = scale.shape[dim]
            scale = take(scale, dim, np.arange(size)[max(-before, 0) : size - max(-after, 0)])
            before, after = max(before, 0), max(after, 0)
        factor = scale.factor_of(dim)
        axis = factor.dims.index(dim)
        pad_shape_before = list(factor.ids.shape)
        pad_shape_before[axis] = before
        pad_shape_after = list(factor.ids.shape)
        pad_shape_after[axis] = after
        ids = np.concatenate(
            [
                walk.atoms.new(tuple(pad_shape_before)),
                np.asarray(factor.ids),
                walk.atoms.new(tuple(pad_shape_after)),
            ],
            axis=axis,
        )
        new_shape = list(scale.shape)
        new_shape[dim] += before + after
        factors = tuple(f if f is not factor else Factor(f.dims, ids) for f in scale.factors)
        scale = Scale(tuple(new_shape), factors)
    return scale


# -- reductions and pooling --------------------------------------------------------------------


def _reduce(walk: Walk, scale: Scale, dims: Sequence[int], keepdim: bool, reason: str) -> Scale:
    """Sum, mean, max over `dims`: the scale there must be uniform: forced to 1."""
    dims = sorted({d % scale.rank for d in dims}) if dims else list(range(scale.rank))
    for dim in dims:
        factor = scale.factor_of(dim)
        if len(factor.dims) == 1:
            walk.state.force(factor.ids, reason)
        else:  # a joint factor: every slice along `dim` must be the same atoms
            axis = factor.dims.index(dim)
            first = np.take(factor.ids, [0], axis=axis)
            walk.atoms.join(factor.ids, np.broadcast_to(first, factor.ids.shape))
            scale = Scale(
                scale.shape,
                tuple(
                    f if f is not factor else Factor(f.dims, np.broadcast_to(first, f.ids.shape))
                    for f in scale.factors
                ),
            )
            scale = simplify(scale, walk.atoms)
    for dim in reversed(dims):
        scale = (
            reshape(scale, scale.shape[:dim] + (1,) + scale.shape[dim + 1 :], walk.atoms)
            if keepdim
            else drop_dim(scale, dim, 0, walk.atoms)
        )
    return scale


def reduction(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """Sum, mean, max over axes: the scale along them must be uniform, so it is pinned; the
    kept axes keep theirs."""
    scale = walk.scale_of(_first(arguments))
    shapes = walk.output_shapes(node)
    if scale is None:
        return walk.ones_like_output(node)
    dims = arguments.get("dim")
    if isinstance(dims, int):
        dims = [dims]
    keepdim = bool(arguments.get("keepdim", False))
    result = _reduce(walk, scale, list(dims or []), keepdim, f"{walk.state.op} over a scaled axis")
    if shapes[0] is not None and result.shape != shapes[0]:
        result = reshape(result, shapes[0], walk.atoms)
    value = node.meta.get("val")
    if isinstance(value, list | tuple):  # max.dim: (values, indices)
        return [result, Scale.ones(shapes[1]) if shapes[1] is not None else None]
    return result


def pooling(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """Windows over positions of one channel (max, average, nearest/linear upsampling): the
    batch and channel dimensions keep their scale, positions are 1."""
    scale = walk.scale_of(_first(arguments))
    shapes = walk.output_shapes(node)
    if scale is None:
        return walk.ones_like_output(node)
    # the op's name says how many trailing axes are positions (1d, 2d, 3d)
    found = re.search(r"([123])d", walk.state.op)
    count = int(found.group(1)) if found else max(scale.rank - 2, 1)
    spatial = list(range(scale.rank - count, scale.rank))
    for dim in spatial:
        factor = scale.factor_of(dim)
        walk.state.force(factor.ids, "a pooling window over scaled positions")
    kept = [f for f in scale.factors if not set(f.dims) & set(spatial)]
    out_shape = shapes[0]
    if out_shape is None:
        raise _Unknown("a pooling output of unknown shape")
    factors = list(kept) + [Factor((d,), constant((out_shape[d],))) for d in spatial]
    result = Scale(out_shape, tuple(factors))
    value = node.meta.get("val")
    if isinstance(value, list | tuple):  # with indices
        return [result] + [Scale.ones(s) if s is not None else None for s in shapes[1:]]
    return result


def cumulative(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """A cumulative sum along an axis pins that axis's scale."""
    scale = walk.scale_of(_first(arguments))
    if scale is None:
        return walk.ones_like_output(node)
    dim = arguments["dim"] % scale.rank
    walk.state.force(scale.factor_of(dim).ids, "a cumulative sum over a scaled axis")
    return scale


# -- contractions ------------------------------------------------------------------------------


def contract(
    walk: Walk,
    a: Scale,
    a_labels: str,
    b: Scale,
    b_labels: str,
    out_labels: str,
    out_shape: tuple[int, ...],
) -> Scale:
    """`einsum(a_labels, b_labels -> out_labels)`: along a contracted label the two sides'
    scales multiply to 1 (joined as inverses); every other label passes its factor to the
    output (where both sides bring a free factor for one label, one is forced)."""
    atoms = walk.atoms
    contracted = (set(a_labels) | set(b_labels)) - set(out_labels)
    sides = []
    for scale, labels in ((a, a_labels), (b, b_labels)):
        scale = simplify(scale, atoms)
        touching = [f for f in scale.factors if {labels[d] for d in f.dims} & contracted]
        free = [f for f in touching if not atoms.all_forced(f.ids)]
        if len(free) > 1:
            for factor in free:
                walk.state.force(factor.ids, "a contraction over several scaled axes")
            free = []
        rest = [f for f in scale.factors if f not in touching]
        sides.append((labels, free[0] if free else None, rest))
    (la, fa, _), (lb, fb, _) = sides
    if fa is not None and fb is not None:
        letters = list(dict.fromkeys([la[d] for d in fa.dims] + [lb[d] for d in fb.dims]))
        size = {}
        for labels, factor in ((la, fa), (lb, fb)):
            for d, n in zip(factor.dims, factor.ids.shape, strict=True):
                size[labels[d]] = n
        ids_a = _spread(fa, la, letters, size)
        ids_b = _spread(fb, lb, letters, size)
        atoms.join(ids_a, ids_b, True)
    else:
        for side in (fa, fb):
            if side is not None:
                walk.state.force(side.ids, "a contraction with a side that cannot scale")
    factors: list[Factor] = []
    taken: set[str] = set()
    for labels, _, rest in sides:
        for factor in rest:
            letters = [labels[d] for d in factor.dims]
            if atoms.all_forced(factor.ids):
                continue
            if any(letter in taken or letter not in out_labels for letter in letters):
                walk.state.force(factor.ids, "two scaled factors meet in a product")
                continue
            taken.update(letters)
            factors.append(Factor(tuple(out_labels.index(x) for x in letters), factor.ids))
    covered = {d for f in factors for d in f.dims}
    factors += [
        Factor((d,), constant((out_shape[d],))) for d in range(len(out_shape)) if d not in covered
    ]
    return Scale(out_shape, tuple(factors))


def _spread(factor: Factor, labels: str, letters: list[str], size: dict[str, int]) -> Any:
    """A factor's atoms broadcast over `letters` (in that order)."""
    own = [labels[d] for d in factor.dims]
    order = [own.index(x) for x in letters if x in own]
    moved = np.transpose(factor.ids, order)
    shape = [size[x] if x in own else 1 for x in letters]
    return np.broadcast_to(moved.reshape(shape), tuple(size[x] for x in letters))


_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def linear(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """`x · Wᵀ + b`: the input's last axis meets the weight's columns; the output's last axis
    is the weight's rows, and the bias scales with them."""
    x = walk.scale_of(arguments["input"])
    w = walk.scale_of(arguments["weight"])
    shape = _out_shape(walk, node)
    x_shape = walk.shape_of(arguments["input"])
    if x_shape is None:
        raise _Unknown("a linear layer's input of unknown shape")
    x = x or Scale.ones(x_shape)
    w_shape = walk.shape_of(arguments["weight"])
    if w_shape is None:
        raise _Unknown("a linear layer's weight of unknown shape")
    w = w or Scale.ones(w_shape)
    batch = _LETTERS[: x.rank - 1]
    out = contract(walk, x, batch + "z", w, "yz", batch + "y", shape)
    return _add_bias(walk, out, arguments.get("bias"))


def _add_bias(walk: Walk, out: Scale, bias: Any) -> Scale:
    scale = walk.scale_of(bias)
    if scale is None:
        return out
    return equate(out, scale, walk.atoms)


def matmul(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """`matmul`/`mm`/`bmm`: batched, with broadcasting, over the last axis of the first and
    the second-to-last of the second."""
    values = list(arguments.values())
    a_node, b_node = values[0], values[1]
    a_shape, b_shape = walk.shape_of(a_node), walk.shape_of(b_node)
    shape = _out_shape(walk, node)
    if a_shape is None or b_shape is None:
        raise _Unknown("a matrix product of unknown shapes")
    a = walk.scale_of(a_node) or Scale.ones(a_shape)
    b = walk.scale_of(b_node) or Scale.ones(b_shape)
    vector_a, vector_b = a.rank == 1, b.rank == 1
    if vector_a:
        a = unsqueeze(a, 0)
    if vector_b:
        b = unsqueeze(b, 1)
    batch = max(a.rank, b.rank) - 2
    a, b = _align(a, batch + 2), _align(b, batch + 2)
    batch_shape = tuple(max(x, y) for x, y in zip(a.shape[:-2], b.shape[:-2], strict=True))
    a = expand(a, batch_shape + a.shape[-2:])
    b = expand(b, batch_shape + b.shape[-2:])
    letters = _LETTERS[:batch]
    out_labels = letters + "xy"
    full_shape = batch_shape + (a.shape[-2], b.shape[-1])
    out = contract(walk, a, letters + "xz", b, letters + "zy", out_labels, full_shape)
    if full_shape != shape:
        out = reshape(out, shape, walk.atoms)
    return out


def addmm(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """`beta·bias + alpha·(a @ b)` (`addmm`, `baddbmm`)."""
    product = matmul(
        walk,
        node,
        {
            "self": arguments["mat1" if "mat1" in arguments else "batch1"],
            "other": arguments["mat2" if "mat2" in arguments else "batch2"],
        },
    )
    assert isinstance(product, Scale)
    bias = walk.scale_of(arguments.get("self"))
    if bias is None:
        return product
    return equate(product, bias, walk.atoms)


def einsum(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """An explicit `einsum` of one or two operands: contracted labels multiply to 1, the
    others pass to the output."""
    equation = str(arguments.get("equation", "")).replace(" ", "")
    operands = arguments.get("tensors") or []
    if "..." in equation or "->" not in equation:
        raise _Unknown("an einsum with an ellipsis or without an explicit output")
    inputs, output = equation.split("->")
    labels = inputs.split(",")
    shape = _out_shape(walk, node)
    if len(operands) == 1:
        scale = walk.scale_of(operands[0])
        if scale is None:
            return Scale.ones(shape)
        summed = [d for d, x in enumerate(labels[0]) if x not in output]
        reduced = (
            _reduce(walk, scale, summed, False, "an einsum summing a scaled axis")
            if summed
            else scale
        )
        kept = [x for x in labels[0] if x in output]
        return permute(reduced, [kept.index(x) for x in output]) if kept else reduced
    if len(operands) != 2:
        raise _Unknown("an einsum of more than two operands")
    scales = []
    for operand in operands:
        operand_shape = walk.shape_of(operand)
        if operand_shape is None:
            raise _Unknown("an einsum operand of unknown shape")
        scales.append(walk.scale_of(operand) or Scale.ones(operand_shape))
    return contract(walk, scales[0], labels[0], scales[1], labels[1], output, shape)


def convolution(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """A convolution over channel axis 1: input channels meet the kernel's input axis, output
    channels are the kernel's output axis (axis 0; axis 1 for a transposed convolution).
    Kernel and positions do not scale. With groups, each group's input channels meet the
    same kernel columns, so their scales must follow the same pattern in every group."""
    x_node, w_node = arguments["input"], arguments["weight"]
    x_shape, w_shape = walk.shape_of(x_node), walk.shape_of(w_node)
    shape = _out_shape(walk, node)
    if x_shape is None or w_shape is None:
        raise _Unknown("a convolution of unknown shapes")
    x = simplify(walk.scale_of(x_node) or Scale.ones(x_shape), walk.atoms)
    w = simplify(walk.scale_of(w_node) or Scale.ones(w_shape), walk.atoms)
    transposed = bool(arguments.get("transposed", False)) or walk.state.op.startswith(
        "conv_transpose"
    )
    groups = int(arguments.get("groups", 1) or 1)
    batched = x.rank == len(w_shape)
    channel = 1 if batched else 0
    in_axis, out_axis = (0, 1) if transposed else (1, 0)
    # positions and kernel taps do not scale
    for dim in range(channel + 1, x.rank):
        walk.state.force(x.factor_of(dim).ids, "a convolution over scaled positions")
    for dim in range(2, w.rank):
        walk.state.force(w.factor_of(dim).ids, "a convolution kernel tap")
    x_channel = x.factor_of(channel)
    w_in, w_out = w.factor_of(in_axis), w.factor_of(out_axis)
    if len(x_channel.dims) > 1 or len(w_in.dims) > 1 or len(w_out.dims) > 1:
        walk.state.force([x_channel.ids, w_in.ids, w_out.ids], "a convolution over a joint factor")
        out_channel = constant((shape[channel],))
    else:
        channels = x.shape[channel]
        per_group = channels // groups
        if transposed:
            # weight [C_in, C_out/groups, k...]: input channel i meets row i; output channel
            # o of group g is column o mod (C_out/groups) of group g's rows
            walk.atoms.join(w_in.ids, x_channel.ids, True)
            out_per_group = w_shape[1]
            if groups == 1:
                out_channel = w_out.ids
            else:
                walk.state.force(w_out.ids, "a grouped transposed convolution's columns")
                out_channel = constant((out_per_group * groups,))
        else:
            if groups == 1:
                walk.atoms.join(w_in.ids, x_channel.ids, True)
            else:
                grid = np.asarray(x_channel.ids).reshape(groups, per_group)
                walk.atoms.join(np.broadcast_to(w_in.ids, grid.shape), grid, True)
            out_channel = w_out.ids
    factors = [Factor((channel,), np.asarray(out_channel))]
    if batched:
        batch = x.factor_of(0)
        factors.append(
            Factor((0,), batch.ids) if len(batch.dims) == 1 else Factor((0,), constant((shape[0],)))
        )
    factors += [Factor((d,), constant((shape[d],))) for d in range(channel + 1, len(shape))]
    out = Scale(shape, tuple(factors))
    bias = walk.scale_of(arguments.get("bias"))
    if bias is not None:
        walk.atoms.join(bias.factors[0].ids, out.factor_of(channel).ids)
    return out


def embedding(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """Rows picked by token ids: the row scale would depend on the data, so it is 1; the
    output's last axis is the table's columns."""
    table = walk.scale_of(arguments["weight"])
    shape = _out_shape(walk, node)
    if table is None:
        return Scale.ones(shape)
    walk.state.force(table.factor_of(0).ids, "embedding rows are picked by the data")
    walk.state.force_scale(walk.scale_of(arguments.get("indices")), "token ids")
    columns = table.factor_of(1)
    factors = [Factor((len(shape) - 1,), columns.ids)]
    factors += [Factor((d,), constant((shape[d],))) for d in range(len(shape) - 1)]
    return Scale(shape, tuple(factors))


def index(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """Advanced indexing `x[i, j, ...]`: indexed axes pick entries by the data (scale 1
    there); the other axes keep their scale."""
    scale = walk.scale_of(arguments.get("self"))
    shape = _out_shape(walk, node)
    indices = arguments.get("indices") or []
    if scale is None:
        return Scale.ones(shape)
    indexed = [d for d, item in enumerate(indices) if item is not None]
    for d in indexed:
        walk.state.force(scale.factor_of(d).ids, "indexed by the data")
        walk.state.force_scale(walk.scale_of(indices[d]), "an index")
    scale = simplify(scale, walk.atoms)
    kept = [d for d in range(scale.rank) if d not in indexed]
    index_rank = len(shape) - len(kept)
    adjacent = indexed == list(range(indexed[0], indexed[-1] + 1)) if indexed else True
    start = indexed[0] if adjacent and indexed else 0
    positions = {}
    for d in kept:
        before = d < start if adjacent else False
        positions[d] = d if before else d - len(indexed) + index_rank
    factors = []
    for factor in scale.factors:
        if set(factor.dims) & set(indexed):
            continue
        factors.append(Factor(tuple(positions[d] for d in factor.dims), factor.ids))
    covered = {d for f in factors for d in f.dims}
    factors += [Factor((d,), constant((shape[d],))) for d in range(len(shape)) if d not in covered]
    return Scale(shape, tuple(factors))


def index_put(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """`x[i] = v` (`index_put`, `index_add`): the written values scale like `x`."""
    scale = walk.scale_of(arguments.get("self"))
    source = walk.scale_of(arguments.get("values", arguments.get("source")))
    shape = _out_shape(walk, node)
    if scale is None:
        scale = Scale.ones(shape)
    if source is not None:
        walk.state.force_scale(source, "written at positions picked by the data")
        walk.state.force_scale(scale, "written at positions picked by the data")
    return scale


def select_scatter(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """Scatters pin every scale involved."""
    force_inputs(walk, arguments, "a scatter")
    return walk.ones_like_output(node)


# -- attention ---------------------------------------------------------------------------------


def attention(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """`softmax(q·kᵀ)·v`: query and key meet over the head dimension (their scales multiply
    to 1 there); the scores go through a softmax (1); the output scales like the value.
    Fewer key/value heads than query heads (GQA) repeat each key/value head over a group."""
    names = ("query", "key", "value")
    scales = []
    for name in names:
        shape = walk.shape_of(arguments[name])
        if shape is None:
            raise _Unknown("attention over unknown shapes")
        scales.append(walk.scale_of(arguments[name]) or Scale.ones(shape))
    q, k, v = scales
    walk.state.force_scale(walk.scale_of(arguments.get("attn_mask")), "an attention mask")
    heads = q.shape[-3] if q.rank >= 3 else 1
    if q.rank >= 3 and k.shape[-3] != heads:
        repeat = heads // k.shape[-3]
        k = take(k, k.rank - 3, np.repeat(np.arange(k.shape[-3]), repeat))
        v = take(v, v.rank - 3, np.repeat(np.arange(v.shape[-3]), repeat))
    batch = _LETTERS[: q.rank - 2]
    target = tuple(max(x, y) for x, y in zip(q.shape[:-2], k.shape[:-2], strict=True))
    q = expand(q, target + q.shape[-2:])
    k = expand(k, target + k.shape[-2:])
    v = expand(v, target + v.shape[-2:])
    scores_shape = target + (q.shape[-2], k.shape[-2])
    scores = contract(walk, q, batch + "lz", k, batch + "sz", batch + "ls", scores_shape)
    walk.state.force_scale(scores, f"softmax {NON_HOMOGENEOUS}")
    probabilities = Scale.ones(scores_shape)
    out_shape = target + (q.shape[-2], v.shape[-1])
    out = contract(walk, probabilities, batch + "ls", v, batch + "sy", batch + "ly", out_shape)
    value = node.meta.get("val")
    if isinstance(value, list | tuple):
        shapes_out = walk.output_shapes(node)
        return [out] + [Scale.ones(s) if s is not None else None for s in shapes_out[1:]]
    return out


# -- normalisation -----------------------------------------------------------------------------


def layer_norm(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """The input is normalised over its last axes: its scale is removed only up to eps, so it
    is forced to 1; the gain and shift scale the output together."""
    x = walk.scale_of(arguments["input"])
    walk.state.force_scale(x, "a normalisation's input (it divides by its own size)")
    shapes = walk.output_shapes(node)
    shape = shapes[0]
    if shape is None:
        raise _Unknown("a normalisation of unknown shape")
    normalized = list(arguments.get("normalized_shape") or [])
    tail = len(normalized)
    out = Scale.ones(shape)
    weight = walk.scale_of(arguments.get("weight"))
    bias = walk.scale_of(arguments.get("bias"))
    gain = weight or bias
    if gain is not None:
        factors = [
            Factor(tuple(d + len(shape) - tail for d in f.dims), f.ids) for f in gain.factors
        ]
        factors += [Factor((d,), constant((shape[d],))) for d in range(len(shape) - tail)]
        out = Scale(shape, tuple(factors))
        if weight is not None and bias is not None:
            for wf, bf in zip(weight.factors, bias.factors, strict=True):
                walk.atoms.join(wf.ids, bf.ids)
    value = node.meta.get("val")
    if isinstance(value, list | tuple):
        return [out] + [Scale.ones(s) if s is not None else None for s in shapes[1:]]
    return out


def group_norm(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """Group norm: the input is normalised (pinned); gain and shift scale the output."""
    x = walk.scale_of(arguments["input"])
    walk.state.force_scale(x, "a normalisation's input (it divides by its own size)")
    shapes = walk.output_shapes(node)
    shape = shapes[0]
    if shape is None:
        raise _Unknown("a normalisation of unknown shape")
    weight = walk.scale_of(arguments.get("weight"))
    bias = walk.scale_of(arguments.get("bias"))
    out = Scale.ones(shape)
    gain = weight or bias
    if gain is not None:
        factors = [Factor((1,), gain.factors[0].ids)]
        factors += [Factor((d,), constant((shape[d],))) for d in range(len(shape)) if d != 1]
        out = Scale(shape, tuple(factors))
        if weight is not None and bias is not None:
            walk.atoms.join(weight.factors[0].ids, bias.factors[0].ids)
    value = node.meta.get("val")
    if isinstance(value, list | tuple):
        return [out] + [Scale.ones(s) if s is not None else None for s in shapes[1:]]
    return out


def batch_norm(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """Evaluation-mode batch norm: the input's channel scale is absorbed by the running mean
    (× c) and variance (× c²), exactly only up to eps (marked approximate); the affine gain
    and shift scale the output."""
    x_node = arguments["input"]
    x = walk.scale_of(x_node)
    shapes = walk.output_shapes(node)
    shape = shapes[0]
    if shape is None:
        raise _Unknown("a batch norm of unknown shape")
    # instance norm with use_input_stats normalises by the input's own statistics
    training = bool(arguments.get("training", arguments.get("use_input_stats", False)))
    mean_node, var_node = arguments.get("running_mean"), arguments.get("running_var")
    mean, var = walk.scale_of(mean_node), walk.scale_of(var_node)
    var_name = walk.placeholders.get(getattr(var_node, "name", ""), None)
    if x is not None:
        if (
            not training
            and mean is not None
            and var is not None
            and var_name is not None
            and var_node is not None
            and len(var_node.users) == 1
            and len(x.factor_of(1).dims) == 1
        ):
            channel = x.factor_of(1).ids
            walk.atoms.join(mean.factors[0].ids, channel)
            walk.state.settle(var.factors[0].ids)
            walk.state.derived.append(Derived(var_name, 0, np.asarray(channel), 2))
            eps = arguments.get("eps", 1e-5)
            walk.state.approximate.append(
                (
                    np.asarray(channel),
                    f"batch norm {node.name} absorbs the scale only up to its eps={eps:g}",
                )
            )
            others = [f for f in x.factors if 1 not in f.dims]
            walk.state.force([f.ids for f in others], "a batch norm's positions")
        else:
            walk.state.force_scale(x, "a batch norm's input")
    weight = walk.scale_of(arguments.get("weight"))
    bias = walk.scale_of(arguments.get("bias"))
    gain = weight or bias
    out = Scale.ones(shape)
    if gain is not None:
        factors = [Factor((1,), gain.factors[0].ids)]
        factors += [Factor((d,), constant((shape[d],))) for d in range(len(shape)) if d != 1]
        out = Scale(shape, tuple(factors))
        if weight is not None and bias is not None:
            walk.atoms.join(weight.factors[0].ids, bias.factors[0].ids)
    value = node.meta.get("val")
    if isinstance(value, list | tuple):
        return [out] + [Scale.ones(s) if s is not None else None for s in shapes[1:]]
    return out


# -- the table ---------------------------------------------------------------------------------


def _table() -> dict[str, Rule]:
    table: dict[str, Rule] = {}

    def put(names: str, rule: Rule) -> None:
        for name in names.split():
            table[name] = guarded(rule)

    put(
        "relu relu_ leaky_relu leaky_relu_ dropout dropout_ feature_dropout alpha_dropout "
        "clone alias detach detach_ contiguous lift_fresh_copy to _to_copy type_as "
        "neg negative abs positive _assert_tensor_metadata requires_grad_ view_as "
        "reshape_as expand_as _to_dim_order_copy",
        passthrough,
    )
    put("prelu _prelu_kernel", prelu)
    put("native_dropout", native_dropout)
    put(
        "sign sgn isnan isinf isfinite signbit logical_not zeros_like ones_like empty_like "
        "full_like rand_like randn_like new_zeros new_ones new_empty new_full",
        invariant,
    )
    put(
        "arange zeros ones full empty scalar_tensor tensor rand randn randint linspace "
        "empty_strided one_hot _local_scalar_dense sym_size sym_numel sym_stride",
        creation,
    )
    put(
        "gelu silu mish elu selu celu softplus softsign sigmoid tanh hardsigmoid hardswish "
        "hardtanh hardtanh_ relu6 exp exp2 expm1 log log2 log10 log1p sqrt rsqrt sin cos tan "
        "erf erfc atan asin acos sinh cosh softmax _softmax log_softmax _log_softmax "
        "logsumexp var std var_mean std_mean norm linalg_vector_norm frobenius_norm topk sort "
        "argsort argmax argmin floor ceil round trunc frac fmod remainder floor_divide "
        "histc bucketize searchsorted nonzero unique pow_ logit glu",
        forcing,
    )
    put("pow", power)
    put("reciprocal", reciprocal)
    put("clamp clamp_ clip clamp_min", clamp)
    put("gt ge lt le eq ne", threshold_at_zero)
    put("add add_ sub sub_ rsub", add)
    put("mul mul_", multiply)
    put("div div_ true_divide", divide)
    put("where", where)
    put("masked_fill masked_fill_", masked_fill)
    put("view reshape _unsafe_view flatten unflatten view_copy _reshape_alias", view)
    put("permute permute_copy", permute_rule)
    put("transpose transpose_ swapaxes t numpy_T", transpose_rule)
    put("unsqueeze unsqueeze_", unsqueeze_rule)
    put("squeeze squeeze_ squeeze_copy", squeeze_rule)
    put("expand expand_copy broadcast_to", expand_rule)
    put("repeat tile", repeat_rule)
    put("repeat_interleave", repeat_interleave_rule)
    put("slice slice_copy", slice_rule)
    put("narrow", narrow_rule)
    put("select select_copy", select_rule)
    put("flip", flip_rule)
    put("roll", roll_rule)
    put("split split_with_sizes chunk unbind tensor_split split_copy", split_rule)
    put("cat concat concatenate", cat_rule)
    put("stack", stack_rule)
    table["stack"] = guarded(experts.stack)
    for name in ("transformers::grouped_mm_fallback", "_grouped_mm", "grouped_mm"):
        table[name] = guarded(experts.grouped_mm)
    put("constant_pad_nd pad", pad_rule)
    put("sum mean amax amin max min prod nansum nanmean", reduction)
    put(
        "max_pool1d max_pool2d max_pool3d max_pool2d_with_indices max_pool3d_with_indices "
        "avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d "
        "adaptive_avg_pool3d _adaptive_avg_pool2d _adaptive_avg_pool3d adaptive_max_pool1d "
        "adaptive_max_pool2d adaptive_max_pool3d upsample_nearest1d upsample_nearest2d "
        "upsample_nearest3d _upsample_nearest_exact1d _upsample_nearest_exact2d "
        "upsample_linear1d upsample_bilinear2d upsample_trilinear3d upsample_bicubic2d",
        pooling,
    )
    put("cumsum cumprod", cumulative)
    put("linear", linear)
    put("matmul mm bmm", matmul)
    put("addmm baddbmm", addmm)
    put("einsum", einsum)
    put(
        "conv1d conv2d conv3d convolution _convolution conv_transpose1d conv_transpose2d "
        "conv_transpose3d",
        convolution,
    )
    put("embedding", embedding)
    put("index _unsafe_index", index)
    put(
        "index_put index_put_ _unsafe_index_put index_add index_add_ scatter scatter_add", index_put
    )
    put("select_scatter slice_scatter", select_scatter)
    put(
        "scaled_dot_product_attention _scaled_dot_product_flash_attention_for_cpu "
        "_scaled_dot_product_attention_math _scaled_dot_product_efficient_attention "
        "_scaled_dot_product_flash_attention",
        attention,
    )
    put("layer_norm native_layer_norm rms_norm _fused_rms_norm", layer_norm)
    put("group_norm native_group_norm", group_norm)
    put(
        "batch_norm _native_batch_norm_legit_no_training _native_batch_norm_legit "
        "native_batch_norm instance_norm",
        batch_norm,
    )
    return table


RULES: dict[str, Rule] = _table()

ALIASES: dict[str, Callable[..., Any]] = {}

__all__ = ["ONE", "RULES", "contract", "drop_dim", "joint"]


def rule_table() -> str:
    """The op table as Markdown: each rule's ops and the first line of what it does (the
    documentation's table is this text, and a test keeps them equal)."""
    from weissi_cli.structure.engine.walk import SUBGRAPH_CALLS

    by_rule: dict[str, list[str]] = {}
    docs: dict[str, str] = {}
    for name, rule in RULES.items():
        inner = getattr(rule, "__wrapped__", rule)
        key = inner.__qualname__
        by_rule.setdefault(key, []).append(name)
        docs[key] = " ".join((inner.__doc__ or "").strip().split("\n\n")[0].split())
    lines = ["| ops | rule |", "|---|---|"]
    for key, names in by_rule.items():
        ops = ", ".join(f"`{name}`" for name in sorted(names))
        lines.append(f"| {ops} | {docs[key]} |")
    calls = ", ".join(f"`{name}`" for name in sorted(SUBGRAPH_CALLS))
    lines.append(f"| {calls} | The submodule's graph is walked in place of the call. |")
    lines.append("| any other op | Stops every scale that reaches it; reported by name and node. |")
    return "\n".join(lines) + "\n"
