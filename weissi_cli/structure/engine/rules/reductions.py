"""Reductions and pooling windows: the scale along what they reduce must be uniform."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from weissi_cli.structure.engine.rules.common import (
    Arguments,
    Unfollowable,
    first_argument,
)
from weissi_cli.structure.engine.scale import (
    Factor,
    Scale,
    constant,
    drop_dim,
    reshape,
    simplify,
    take,
)
from weissi_cli.structure.engine.walk import Value, Walk


def reduce_axes(walk: Walk, scale: Scale, dims: Sequence[int], keepdim: bool, reason: str) -> Scale:
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
            # the slices along `dim` are one scale now: the first stands for all of them
            take(scale, dim, np.zeros(1, dtype=np.intp))
            if keepdim
            else drop_dim(scale, dim, 0, walk.atoms)
        )
    return scale


def reduction(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """Sum, mean, max over axes: the scale along them must be uniform, so it is pinned; the
    kept axes keep theirs."""
    scale = walk.scale_of(first_argument(arguments))
    shapes = walk.output_shapes(node)
    if scale is None:
        return walk.ones_like_output(node)
    dims = arguments.get("dim")
    if isinstance(dims, int):
        dims = [dims]
    keepdim = bool(arguments.get("keepdim", False))
    result = reduce_axes(
        walk, scale, list(dims or []), keepdim, f"{walk.state.op} over a scaled axis"
    )
    if shapes[0] is not None and result.shape != shapes[0]:
        result = reshape(result, shapes[0], walk.atoms)
    value = node.meta.get("val")
    if isinstance(value, list | tuple):  # max.dim: (values, indices)
        return [result, Scale.ones(shapes[1]) if shapes[1] is not None else None]
    return result


def pooling(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """Windows over positions of one channel (max, average, nearest/linear upsampling): the
    batch and channel dimensions keep their scale, positions are 1."""
    scale = walk.scale_of(first_argument(arguments))
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
        raise Unfollowable("a pooling output of unknown shape")
    factors = list(kept) + [Factor((d,), constant((out_shape[d],))) for d in spatial]
    result = Scale(out_shape, tuple(factors))
    value = node.meta.get("val")
    if isinstance(value, list | tuple):  # with indices
        return [result] + [Scale.ones(s) if s is not None else None for s in shapes[1:]]
    return result


def cumulative(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """A cumulative sum along an axis pins that axis's scale."""
    scale = walk.scale_of(first_argument(arguments))
    if scale is None:
        return walk.ones_like_output(node)
    dim = arguments["dim"] % scale.rank
    walk.state.force(scale.factor_of(dim).ids, "a cumulative sum over a scaled axis")
    return scale
