"""The rows of the ONNX op table that move, pick or make values: constants, shapes,
reshapes, slices, gathers, concatenations, padding, resizing, attention.

Sizes, axes and indices must be known without running the model (constants, or computed
from shapes); a row whose sizes depend on the data raises `Unsupported`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from weissi_cli.io.onnx_model import Node, tensor_array
from weissi_cli.structure.onnx_graph import Builder, Unsupported
from weissi_cli.structure.onnx_rows import RowFunction, aten_ops, attribute, normalised_axis


def _ints_input(b: Builder, node: Node, inputs: list[Any], index: int, name: str) -> Any:
    """Axes or sizes from an input (newer opsets) or an attribute (older ones)."""
    if len(inputs) > index and inputs[index] is not None:
        return b.ints(inputs[index])
    return attribute(node, name)


# -- values known from the file or the shapes -------------------------------------------------


def constant(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    for name, value in node.attributes.items():
        if name == "value" and value is not None:
            return [b.known(tensor_array(b.model, value))]
        if name in ("value_float", "value_int"):
            return [
                b.known(np.array(value, dtype=np.float32 if name == "value_float" else np.int64))
            ]
        if name in ("value_floats", "value_ints"):
            dtype = np.float32 if name == "value_floats" else np.int64
            return [b.known(np.array(value, dtype=dtype))]
    raise Unsupported("a Constant of a kind that is not a numeric tensor")


def shape(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    sizes = list(b.shape(inputs[0]))
    start, end = attribute(node, "start", 0), attribute(node, "end")
    return [b.known(np.array(sizes[slice(start, end)], dtype=np.int64))]


def size(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    return [b.known(np.array(int(np.prod(b.shape(inputs[0]))), dtype=np.int64))]


def constant_of_shape(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    sizes = b.ints(inputs[0])
    value = attribute(node, "value")
    fill = (
        tensor_array(b.model, value).reshape(-1) if value is not None else np.zeros(1, np.float32)
    )
    return [b.known(np.full(sizes, fill[0], dtype=fill.dtype))]


def range_of(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    start, limit, delta = (b.scalar(v) for v in inputs[:3])
    if any(b.is_node(v) for v in (start, limit, delta)):
        raise Unsupported("a range whose bounds depend on the data")
    return [b.call(aten_ops().arange.start_step, start, limit, delta, dtype=b.dtype(inputs[0]))]


# -- views ---------------------------------------------------------------------------------------


def reshape(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    x = inputs[0]
    source = list(b.shape(x))
    target = b.ints(inputs[1]) if b.opset >= 5 else list(attribute(node, "shape", []))
    allow_zero = bool(attribute(node, "allowzero", 0))
    sizes = [
        source[i] if (s == 0 and not allow_zero and i < len(source)) else s
        for i, s in enumerate(target)
    ]
    return [b.call(aten_ops().reshape.default, x, sizes)]


def flatten(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    sizes = list(b.shape(inputs[0]))
    axis = int(attribute(node, "axis", 1))
    axis = axis % (len(sizes) + 1) if axis < 0 else axis
    outer = int(np.prod(sizes[:axis])) if axis else 1
    return [b.call(aten_ops().reshape.default, inputs[0], [outer, int(np.prod(sizes[axis:]))])]


def transpose(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    rank = len(b.shape(inputs[0]))
    perm = list(attribute(node, "perm", list(reversed(range(rank)))))
    return [b.call(aten_ops().permute.default, inputs[0], perm)]


def squeeze(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    sizes = list(b.shape(inputs[0]))
    axes = _ints_input(b, node, inputs, 1, "axes")
    if axes is None:
        axes = [i for i, s in enumerate(sizes) if s == 1]
    axes = sorted(normalised_axis(a, len(sizes)) for a in axes)
    if not axes:
        return [inputs[0]]
    return [b.call(aten_ops().squeeze.dims, inputs[0], axes)]


def unsqueeze(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    rank = len(b.shape(inputs[0]))
    axes = _ints_input(b, node, inputs, 1, "axes") or []
    out_rank = rank + len(axes)
    result = inputs[0]
    for axis in sorted(normalised_axis(a, out_rank) for a in axes):
        result = b.call(aten_ops().unsqueeze.default, result, axis)
    return [result]


def expand(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    sizes = list(b.shape(inputs[0]))
    target = b.ints(inputs[1])
    rank = max(len(sizes), len(target))
    sizes = [1] * (rank - len(sizes)) + sizes
    target = [1] * (rank - len(target)) + target
    out = []
    for have, want in zip(sizes, target, strict=True):
        if have != want and 1 not in (have, want):
            raise Unsupported(f"Expand of size {have} to {want}")
        out.append(max(have, want))
    return [b.call(aten_ops().expand.default, inputs[0], out)]


def tile(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    return [b.call(aten_ops().repeat.default, inputs[0], b.ints(inputs[1]))]


def concat(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    parts = [v for v in inputs if v is not None]
    rank = len(b.shape(parts[0]))
    axis = normalised_axis(int(attribute(node, "axis", 0)), rank)
    return [b.call(aten_ops().cat.default, parts, axis)]


def split(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    sizes = list(b.shape(inputs[0]))
    axis = normalised_axis(int(attribute(node, "axis", 0)), len(sizes))
    parts = _ints_input(b, node, inputs, 1, "split")
    count = len(node.outputs)
    if not parts:
        total = sizes[axis]
        step = -(-total // count)
        parts = [min(step, total - i * step) for i in range(count)]
    if sum(parts) != sizes[axis] or len(parts) != count:
        raise Unsupported("a split whose parts do not add up")
    return list(b.call(aten_ops().split_with_sizes.default, inputs[0], parts, axis))


def slice_of(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    x = inputs[0]
    sizes = list(b.shape(x))
    if b.opset >= 10:
        starts, ends = b.ints(inputs[1]), b.ints(inputs[2])
        axes = b.ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else None
        steps = b.ints(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else None
    else:
        starts, ends = list(attribute(node, "starts")), list(attribute(node, "ends"))
        axes, steps = attribute(node, "axes"), None
    axes = list(axes) if axes is not None else list(range(len(starts)))
    steps = list(steps) if steps is not None else [1] * len(starts)
    if not b.is_node(x):
        index = [slice(None)] * len(sizes)
        for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
            index[normalised_axis(axis, len(sizes))] = slice(*_clamp(start, end, step, sizes[axis]))
        array = x.numpy()[tuple(index)]
        return [b.known(np.array(array))]
    result = x
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        dim = normalised_axis(axis, len(sizes))
        positions = np.arange(sizes[dim])[slice(*_clamp(start, end, step, sizes[dim]))]
        if step < 0:  # backwards: reverse the axis, then take the positions forwards
            if not positions.size:
                raise Unsupported("an empty backward slice")
            result = b.call(aten_ops().flip.default, result, [dim])
            positions = sizes[dim] - 1 - positions
            step = -step
        low = int(positions[0]) if positions.size else 0
        high = int(positions[-1]) + 1 if positions.size else 0
        if (low, high, step) == (0, sizes[dim], 1):
            continue
        result = b.call(aten_ops().slice.Tensor, result, dim, low, high, step)
    return [result]


def _clamp(start: int, end: int, step: int, size: int) -> tuple[int, int | None, int]:
    """ONNX's clamping of slice bounds, as Python slice arguments."""
    if step == 0:
        raise Unsupported("a slice with step 0")
    if step > 0:
        low = max(0, min(size, start + size if start < 0 else start))
        high = max(0, min(size, end + size if end < 0 else end))
        return low, high, step
    low = max(-1, min(size - 1, start + size if start < 0 else start))
    high = max(-1, min(size - 1, end + size if end < 0 else end))
    return low, (high if high >= 0 else None), step


def gather(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    """An embedding (rows of an initializer picked by token ids); one known index (a
    select); other known or data indices (an indexing, whose axis the data decides)."""
    data, indices = inputs[0], inputs[1]
    sizes = list(b.shape(data))
    axis = normalised_axis(int(attribute(node, "axis", 0)), len(sizes))
    aten = aten_ops()
    if not b.is_node(data) and not b.is_node(indices):
        index = indices.numpy().astype(np.int64)
        index = np.where(index < 0, index + sizes[axis], index)
        return [b.known(np.take(data.numpy(), index, axis=axis))]
    if not b.is_node(indices):
        index = indices.numpy().astype(np.int64)
        index = np.where(index < 0, index + sizes[axis], index)
        if index.ndim == 0:
            return [b.call(aten.select.int, data, axis, int(index))]
        indices = b.known(index)
    elif data.name in b.placeholders and axis == 0 and len(sizes) == 2:
        return [b.call(aten.embedding.default, data, indices)]
    return [b.call(aten.index.Tensor, data, [None] * axis + [indices])]


def gather_elements(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    axis = normalised_axis(int(attribute(node, "axis", 0)), len(b.shape(inputs[0])))
    return [b.call(aten_ops().gather.default, inputs[0], axis, inputs[1])]


def gather_nd(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    if attribute(node, "batch_dims", 0):
        raise Unsupported("GatherND with batch_dims")
    data, indices = inputs[0], inputs[1]
    depth = b.shape(indices)[-1]
    aten = aten_ops()
    picks = [b.call(aten.select.int, indices, -1, k) for k in range(depth)]
    return [b.call(aten.index.Tensor, data, picks)]


def pad(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    mode = attribute(node, "mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    sizes = list(b.shape(inputs[0]))
    rank = len(sizes)
    pads = _ints_input(b, node, inputs, 1, "pads") or [0] * (2 * rank)
    value = attribute(node, "value", 0.0)
    if b.opset >= 11 and len(inputs) > 2 and inputs[2] is not None:
        value = b.scalar(inputs[2])
    axes = b.ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else list(range(rank))
    if b.is_node(value) or mode != "constant":
        raise Unsupported(f"{mode} padding")
    count = len(axes)
    full = [0] * (2 * rank)
    for index, axis in enumerate(axes):
        dim = normalised_axis(axis, rank)
        full[dim], full[dim + rank] = pads[index], pads[index + count]
    padded = [d for d in range(rank) if full[d] or full[d + rank]]
    torch_pads: list[int] = []
    for dim in range(rank - 1, min(padded, default=rank) - 1, -1):
        torch_pads += [full[dim], full[dim + rank]]
    if not torch_pads:
        return [inputs[0]]
    return [b.call(aten_ops().constant_pad_nd.default, inputs[0], torch_pads, float(value))]


def resize(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    """Nearest or linear resizing over the trailing axes to a known size."""
    x = inputs[0]
    sizes = list(b.shape(x))
    mode = attribute(node, "mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    target = None
    if node.op_type == "Resize" and len(inputs) > 3 and inputs[3] is not None:
        target = b.ints(inputs[3])
    else:
        scales_input = (
            inputs[2]
            if node.op_type == "Resize" and len(inputs) > 2
            else (inputs[1] if len(inputs) > 1 else None)
        )
        if scales_input is None:
            raise Unsupported("a resize without sizes or scales")
        scales_input = b.known_of(scales_input)
        factors = [float(f) for f in scales_input.reshape(-1).tolist()]
        if not factors:
            raise Unsupported("a resize without sizes or scales")
        target = [int(np.floor(s * f)) for s, f in zip(sizes, factors, strict=True)]
    if target[:2] != sizes[:2] or len(sizes) not in (3, 4, 5):
        raise Unsupported("a resize of the batch or channel axis")
    out = target[2:]
    aten = aten_ops()
    count = len(out)
    if mode == "nearest":
        op = {1: aten.upsample_nearest1d, 2: aten.upsample_nearest2d, 3: aten.upsample_nearest3d}
        return [b.call(op[count].vec, x, out, None)]
    if mode == "linear":
        corners = attribute(node, "coordinate_transformation_mode", b"half_pixel")
        align = (
            corners.decode() if isinstance(corners, bytes) else str(corners)
        ) == "align_corners"
        op = {1: aten.upsample_linear1d, 2: aten.upsample_bilinear2d, 3: aten.upsample_trilinear3d}
        return [b.call(op[count].vec, x, out, align, None)]
    raise Unsupported(f"{mode} resizing")


def trilu(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    k = b.ints(inputs[1])[0] if len(inputs) > 1 and inputs[1] is not None else 0
    op = aten_ops().triu if attribute(node, "upper", 1) else aten_ops().tril
    return [b.call(op.default, inputs[0], k)]


def attention(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    """The opset-23 Attention op on 4-D query, key and value: scaled dot-product attention."""
    q, k, v = inputs[:3]
    mask = inputs[3] if len(inputs) > 3 else None
    if len(b.shape(q)) != 4 or len(inputs) > 4 and any(x is not None for x in inputs[4:]):
        raise Unsupported("Attention on 3-D inputs or with a cache")
    if attribute(node, "softcap", 0.0) or attribute(node, "qk_matmul_output_mode", 0):
        raise Unsupported("Attention with softcap or extra outputs")
    causal = bool(attribute(node, "is_causal", 0))
    scale = attribute(node, "scale")
    out = b.call(
        aten_ops().scaled_dot_product_attention.default,
        q,
        k,
        v,
        mask,
        0.0,
        causal,
        scale=scale,
        enable_gqa=b.shape(k)[1] != b.shape(q)[1],
    )
    return [out]


SHAPE_ROWS: dict[str, tuple[RowFunction, str, str]] = {
    "Constant": (constant, "(a known value)", ""),
    "Shape": (shape, "(a known value)", "the input's shape"),
    "Size": (size, "(a known value)", ""),
    "ConstantOfShape": (constant_of_shape, "(a known value)", "of a known shape"),
    "Range": (range_of, "arange", "known bounds"),
    "Reshape": (reshape, "reshape", "to a known shape"),
    "Flatten": (flatten, "reshape", ""),
    "Transpose": (transpose, "permute", ""),
    "Squeeze": (squeeze, "squeeze", "known axes"),
    "Unsqueeze": (unsqueeze, "unsqueeze", "known axes"),
    "Expand": (expand, "expand", "to a known shape"),
    "Tile": (tile, "repeat", "known repeats"),
    "Concat": (concat, "cat", ""),
    "Split": (split, "split_with_sizes", "known sizes"),
    "Slice": (slice_of, "slice | flip, slice", "known bounds; a negative step reverses first"),
    "Gather": (
        gather,
        "embedding | select | index",
        "rows of an initializer by token ids are an embedding",
    ),
    "GatherElements": (gather_elements, "gather", ""),
    "GatherND": (gather_nd, "select, index", "batch_dims 0"),
    "Pad": (pad, "constant_pad_nd", "constant mode"),
    "Resize": (resize, "upsample_*", "nearest or linear, batch and channels kept"),
    "Upsample": (resize, "upsample_*", "nearest or linear"),
    "Trilu": (trilu, "triu | tril", ""),
    "Attention": (attention, "scaled_dot_product_attention", "4-D inputs, no cache"),
}
