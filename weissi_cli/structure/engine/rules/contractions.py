"""Contractions (linear, matmul, einsum, convolution, embedding, indexing) and attention."""

from __future__ import annotations

from typing import Any

import numpy as np

from weissi_cli.structure.engine.rules.common import (
    NON_HOMOGENEOUS,
    Arguments,
    Unfollowable,
    align,
    out_shape,
)
from weissi_cli.structure.engine.rules.reductions import reduce_axes
from weissi_cli.structure.engine.scale import (
    Factor,
    Scale,
    constant,
    equate,
    expand,
    permute,
    reshape,
    simplify,
    take,
    unsqueeze,
)
from weissi_cli.structure.engine.walk import Value, Walk, force_inputs


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
    shape = out_shape(walk, node)
    x_shape = walk.shape_of(arguments["input"])
    if x_shape is None:
        raise Unfollowable("a linear layer's input of unknown shape")
    x = x or Scale.ones(x_shape)
    w_shape = walk.shape_of(arguments["weight"])
    if w_shape is None:
        raise Unfollowable("a linear layer's weight of unknown shape")
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
    shape = out_shape(walk, node)
    if a_shape is None or b_shape is None:
        raise Unfollowable("a matrix product of unknown shapes")
    a = walk.scale_of(a_node) or Scale.ones(a_shape)
    b = walk.scale_of(b_node) or Scale.ones(b_shape)
    vector_a, vector_b = a.rank == 1, b.rank == 1
    if vector_a:
        a = unsqueeze(a, 0)
    if vector_b:
        b = unsqueeze(b, 1)
    batch = max(a.rank, b.rank) - 2
    a, b = align(a, batch + 2), align(b, batch + 2)
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
        raise Unfollowable("an einsum with an ellipsis or without an explicit output")
    inputs, output = equation.split("->")
    labels = inputs.split(",")
    shape = out_shape(walk, node)
    if len(operands) == 1:
        scale = walk.scale_of(operands[0])
        if scale is None:
            return Scale.ones(shape)
        summed = [d for d, x in enumerate(labels[0]) if x not in output]
        reduced = (
            reduce_axes(walk, scale, summed, False, "an einsum summing a scaled axis")
            if summed
            else scale
        )
        kept = [x for x in labels[0] if x in output]
        return permute(reduced, [kept.index(x) for x in output]) if kept else reduced
    if len(operands) != 2:
        raise Unfollowable("an einsum of more than two operands")
    scales = []
    for operand in operands:
        operand_shape = walk.shape_of(operand)
        if operand_shape is None:
            raise Unfollowable("an einsum operand of unknown shape")
        scales.append(walk.scale_of(operand) or Scale.ones(operand_shape))
    return contract(walk, scales[0], labels[0], scales[1], labels[1], output, shape)


def convolution(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """A convolution over channel axis 1: input channels meet the kernel's input axis, output
    channels are the kernel's output axis (axis 0; axis 1 for a transposed convolution).
    Kernel and positions do not scale. With groups, each group's input channels meet the
    same kernel columns, so their scales must follow the same pattern in every group."""
    x_node, w_node = arguments["input"], arguments["weight"]
    x_shape, w_shape = walk.shape_of(x_node), walk.shape_of(w_node)
    shape = out_shape(walk, node)
    if x_shape is None or w_shape is None:
        raise Unfollowable("a convolution of unknown shapes")
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
    shape = out_shape(walk, node)
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
    shape = out_shape(walk, node)
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
    shape = out_shape(walk, node)
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


def attention(walk: Walk, node: Any, arguments: Arguments) -> Value:
    """`softmax(q·kᵀ)·v`: query and key meet over the head dimension (their scales multiply
    to 1 there); the scores go through a softmax (1); the output scales like the value.
    Fewer key/value heads than query heads (GQA) repeat each key/value head over a group."""
    names = ("query", "key", "value")
    scales = []
    for name in names:
        shape = walk.shape_of(arguments[name])
        if shape is None:
            raise Unfollowable("attention over unknown shapes")
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
