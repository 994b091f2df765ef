"""Views, slices and concatenations: they move atoms between axes and positions."""

from __future__ import annotations

from typing import Any

import numpy as np

from weissi_cli.structure.engine.rules.common import (
    Arguments,
    Unfollowable,
    align,
    first_argument,
    is_wildcard,
    out_shape,
)
from weissi_cli.structure.engine.scale import (
    Factor,
    Scale,
    concatenate,
    drop_dim,
    expand,
    permute,
    reshape,
    take,
    unsqueeze,
)
from weissi_cli.structure.engine.walk import Value, Walk


def view(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """`view`/`reshape`/`flatten`: runs of axes map onto each other (a channel split into
    heads, a channel flattened with positions of scale 1); a reshape that mixes channels
    pins them."""
    scale = walk.scale_of(first_argument(arguments))
    shape = out_shape(walk, node)
    if scale is None:
        return Scale.ones(shape)
    return reshape(scale, shape, walk.atoms)


def permute_rule(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """Axes follow their permutation."""
    scale = walk.scale_of(first_argument(arguments))
    if scale is None:
        return walk.ones_like_output(node)
    rank = scale.rank
    dims = arguments.get("dims")
    if dims is None:
        raise Unfollowable("a permutation without dims")
    return permute(scale, [d % rank for d in dims])


def transpose_rule(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """Two axes swap."""
    scale = walk.scale_of(first_argument(arguments))
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
    scale = walk.scale_of(first_argument(arguments))
    if scale is None:
        return walk.ones_like_output(node)
    return unsqueeze(scale, arguments["dim"])


def squeeze_rule(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """An axis of size 1 goes (its one atom is pinned)."""
    scale = walk.scale_of(first_argument(arguments))
    if scale is None:
        return walk.ones_like_output(node)
    return reshape(scale, out_shape(walk, node), walk.atoms)


def expand_rule(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """Broadcast copies carry the scale of the entry they copy."""
    scale = walk.scale_of(first_argument(arguments))
    shape = out_shape(walk, node)
    if scale is None:
        return Scale.ones(shape)
    return expand(scale, shape)


def repeat_rule(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """`repeat` tiles: index i of the output is index i mod n of the input."""
    scale = walk.scale_of(first_argument(arguments))
    shape = out_shape(walk, node)
    if scale is None:
        return Scale.ones(shape)
    scale = align(scale, len(shape))
    for dim, size in enumerate(shape):
        if size != scale.shape[dim]:
            scale = take(scale, dim, np.arange(size) % scale.shape[dim])
    return scale


def repeat_interleave_rule(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """Each index repeated in place: copies carry its scale."""
    scale = walk.scale_of(first_argument(arguments))
    repeats = arguments.get("repeats")
    dim = arguments.get("dim")
    if scale is None:
        return walk.ones_like_output(node)
    if not isinstance(repeats, int) or dim is None:
        raise Unfollowable("repeat_interleave with tensor repeats or no dim")
    dim %= scale.rank
    return take(scale, dim, np.repeat(np.arange(scale.shape[dim]), repeats))


def slice_rule(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """A range of one axis keeps the scales of its entries (fused projections, RoPE halves)."""
    scale = walk.scale_of(first_argument(arguments))
    if scale is None:
        return walk.ones_like_output(node)
    dim = arguments.get("dim", 0) % scale.rank
    size = scale.shape[dim]
    start, end, step = arguments.get("start"), arguments.get("end"), arguments.get("step", 1)
    positions = np.arange(size)[slice(start, end, step)]
    return take(scale, dim, positions)


def narrow_rule(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """A range of one axis keeps the scales of its entries."""
    scale = walk.scale_of(first_argument(arguments))
    if scale is None:
        return walk.ones_like_output(node)
    dim = arguments["dim"] % scale.rank
    start, length = arguments["start"], arguments["length"]
    if not isinstance(start, int):
        raise Unfollowable("narrow at a tensor position")
    return take(scale, dim, np.arange(start, start + length))


def select_rule(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """One index of an axis: where the axis has a factor of its own, that atom is pinned."""
    scale = walk.scale_of(first_argument(arguments))
    if scale is None:
        return walk.ones_like_output(node)
    dim = arguments["dim"] % scale.rank
    index = arguments["index"]
    if not isinstance(index, int):
        raise Unfollowable("select at a tensor position")
    return drop_dim(scale, dim, index % scale.shape[dim], walk.atoms)


def flip_rule(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """Reversed axes carry their entries' scales."""
    scale = walk.scale_of(first_argument(arguments))
    if scale is None:
        return walk.ones_like_output(node)
    for dim in arguments.get("dims", []):
        dim %= scale.rank
        scale = take(scale, dim, np.arange(scale.shape[dim])[::-1])
    return scale


def roll_rule(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """Rolled axes carry their entries' scales."""
    scale = walk.scale_of(first_argument(arguments))
    if scale is None:
        return walk.ones_like_output(node)
    shifts, dims = arguments.get("shifts"), arguments.get("dims")
    if not dims or shifts is None:
        raise Unfollowable("roll over the flattened tensor")
    for shift, dim in zip(shifts, dims, strict=True):
        dim %= scale.rank
        scale = take(scale, dim, np.roll(np.arange(scale.shape[dim]), shift))
    return scale


def split_rule(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """`split`/`chunk`/`split_with_sizes`/`unbind`: consecutive ranges of one dimension."""
    scale = walk.scale_of(first_argument(arguments))
    shapes = walk.output_shapes(node)
    if scale is None:
        return [Scale.ones(s) if s is not None else None for s in shapes]
    dim = arguments.get("dim", 0) % scale.rank
    parts: list[Scale | None] = []
    start = 0
    unbind = walk.state.op == "unbind"
    for shape in shapes:
        if shape is None:
            raise Unfollowable("a split into parts of unknown shape")
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
        raise Unfollowable("a concatenation of nothing")
    shapes = [walk.shape_of(t) for t in tensors]
    scales = []
    for tensor, shape in zip(tensors, shapes, strict=True):
        if shape is None:
            raise Unfollowable("a concatenation of unknown shapes")
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
            raise Unfollowable("a stack of unknown shapes")
        scales.append(unsqueeze(walk.scale_of(tensor) or Scale.ones(shape), dim))
    return concatenate(scales, dim % scales[0].rank, walk.atoms)


def pad_rule(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """Zero padding: the new entries are 0, which any scale leaves as it is (new atoms)."""
    scale = walk.scale_of(first_argument(arguments))
    shape = out_shape(walk, node)
    if scale is None:
        return Scale.ones(shape)
    value = arguments.get("value", 0)
    mode = arguments.get("mode", "constant")
    pads = arguments.get("pad") or []
    if mode != "constant" or not is_wildcard(value if value is not None else 0):
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
