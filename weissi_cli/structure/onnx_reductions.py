"""ONNX rows for the ops that combine values along axes: normalisations, pooling and
reductions."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from weissi_cli.io.onnx_model import Node
from weissi_cli.structure.onnx_graph import Builder, Unsupported
from weissi_cli.structure.onnx_rows import (
    RowFunction,
    aten_ops,
    attribute,
    conv_pads,
    holds_only,
    normalised_axis,
    pad_first,
    rank_of,
)

# -- normalisation -----------------------------------------------------------------------------


def batch_norm(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    if attribute(node, "training_mode", 0):
        raise Unsupported("BatchNormalization in training mode")
    x, weight, bias, mean, var = inputs[:5]
    for name in node.inputs[3:5]:
        b.buffers.add(name)
    out = b.call(
        aten_ops()._native_batch_norm_legit_no_training.default,
        x,
        weight,
        bias,
        mean,
        var,
        float(attribute(node, "momentum", 0.9)),
        float(attribute(node, "epsilon", 1e-5)),
    )
    return [out[0]]


def instance_norm(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    """A stored gain of ones and shift of zeros (a group norm as exporters decompose it) are
    no gain and no shift: they are left out, so they take no scale of their own."""
    x, weight, bias = inputs[:3]
    weight = None if holds_only(b, weight, 1.0) else weight
    bias = None if holds_only(b, bias, 0.0) else bias
    eps = float(attribute(node, "epsilon", 1e-5))
    return [
        b.call(aten_ops().instance_norm.default, x, weight, bias, None, None, True, 0.1, eps, False)
    ]


def layer_norm(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    x = inputs[0]
    weight = inputs[1] if len(inputs) > 1 else None
    bias = inputs[2] if len(inputs) > 2 else None
    shape = b.shape(x)
    axis = normalised_axis(int(attribute(node, "axis", -1)), len(shape))
    normalized = list(shape[axis:])
    eps = float(attribute(node, "epsilon", 1e-5))
    aten = aten_ops()
    fits = all(v is None or list(b.shape(v)) == normalized for v in (weight, bias))
    if fits:
        outputs = b.call(aten.native_layer_norm.default, x, normalized, weight, bias, eps)
        return list(outputs)[: len(node.outputs)]
    if len(node.outputs) > 1:
        raise Unsupported("LayerNormalization's statistics with a broadcast gain")
    out = b.call(aten.native_layer_norm.default, x, normalized, None, None, eps)[0]
    if weight is not None:
        out = b.call(aten.mul.Tensor, out, weight)
    if bias is not None:
        out = b.call(aten.add.Tensor, out, bias)
    return [out]


def rms_norm(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    x, weight = inputs[0], inputs[1]
    shape = b.shape(x)
    axis = normalised_axis(int(attribute(node, "axis", -1)), len(shape))
    if list(b.shape(weight)) != list(shape[axis:]):
        raise Unsupported("RMSNormalization with a broadcast gain")
    eps = float(attribute(node, "epsilon", 1e-5))
    return [b.call(aten_ops().rms_norm.default, x, list(shape[axis:]), weight, eps)]


def group_norm(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    """Opset 21 on: a gain and shift per channel. Before it, one per group: the normalised
    channels are viewed as (groups, channels per group) and each group's gain multiplies
    its channels."""
    x, weight, bias = inputs[:3]
    shape = b.shape(x)
    groups = int(attribute(node, "num_groups", 1))
    if len(shape) < 2 or groups <= 0 or shape[1] % groups:
        raise Unsupported(f"GroupNormalization of {groups} groups over {shape}")
    per_group = b.opset < 21 and groups != shape[1]
    wanted = (groups,) if per_group else (shape[1],)
    if b.shape(weight) != wanted or b.shape(bias) != wanted:
        raise Unsupported(f"GroupNormalization's scale and bias are not of shape {wanted}")
    spatial = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    eps = float(attribute(node, "epsilon", 1e-5))
    aten = aten_ops()
    gain, shift = (None, None) if per_group else (weight, bias)
    out = b.call(
        aten.native_group_norm.default, x, gain, shift, shape[0], shape[1], spatial, groups, eps
    )[0]
    if not per_group:
        return [out]
    grouped = [shape[0], groups, shape[1] // groups, *shape[2:]]
    ones = [1] * (len(shape) - 1)
    out = b.call(aten.reshape.default, out, grouped)
    out = b.call(aten.mul.Tensor, out, b.call(aten.reshape.default, weight, [groups, *ones]))
    out = b.call(aten.add.Tensor, out, b.call(aten.reshape.default, bias, [groups, *ones]))
    return [b.call(aten.reshape.default, out, list(shape))]


def softmax(name: str) -> RowFunction:
    def row(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
        rank = rank_of(b, inputs[0])
        axis = normalised_axis(int(attribute(node, "axis", -1 if b.opset >= 13 else 1)), rank)
        if b.opset < 13 and axis != rank - 1:
            raise Unsupported("a softmax over flattened trailing axes (opset < 13)")
        return [b.call(getattr(aten_ops(), name).default, inputs[0], axis, False)]

    return row


# -- pooling and reductions ------------------------------------------------------------------


def max_pool(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    x = inputs[0]
    shape = b.shape(x)
    kernel = list(attribute(node, "kernel_shape", []))
    count = len(kernel)
    if count not in (1, 2, 3):
        raise Unsupported("a pooling window of this rank")
    pads = conv_pads(b, node, list(shape[2:]), kernel)
    x, padding = pad_first(b, x, pads, -math.inf)
    strides = list(attribute(node, "strides", [1] * count))
    dilations = list(attribute(node, "dilations", [1] * count))
    ceil_mode = bool(attribute(node, "ceil_mode", 0))
    aten = aten_ops()
    if len(node.outputs) > 1 and node.outputs[1]:
        if count == 1:
            raise Unsupported("MaxPool indices in one dimension")
        op = aten.max_pool2d_with_indices if count == 2 else aten.max_pool3d_with_indices
        return list(b.call(op.default, x, kernel, strides, padding, dilations, ceil_mode))
    op = {1: aten.max_pool1d, 2: aten.max_pool2d, 3: aten.max_pool3d}[count]
    return [b.call(op.default, x, kernel, strides, padding, dilations, ceil_mode)]


def average_pool(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    x = inputs[0]
    shape = b.shape(x)
    kernel = list(attribute(node, "kernel_shape", []))
    count = len(kernel)
    if count not in (1, 2, 3) or any(d != 1 for d in attribute(node, "dilations", [1] * count)):
        raise Unsupported("an average pool of this rank or with dilations")
    pads = conv_pads(b, node, list(shape[2:]), kernel)
    include = bool(attribute(node, "count_include_pad", 0))
    if pads[:count] != pads[count:]:
        if not include:
            raise Unsupported("an average pool with asymmetric pads that are not counted")
        x, padding = pad_first(b, x, pads, 0.0)
    else:
        padding = pads[:count]
    strides = list(attribute(node, "strides", [1] * count))
    ceil_mode = bool(attribute(node, "ceil_mode", 0))
    aten = aten_ops()
    if count == 1:
        return [b.call(aten.avg_pool1d.default, x, kernel, strides, padding, ceil_mode, include)]
    op = aten.avg_pool2d if count == 2 else aten.avg_pool3d
    return [b.call(op.default, x, kernel, strides, padding, ceil_mode, include)]


def global_pool(name: str) -> RowFunction:
    def row(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
        rank = rank_of(b, inputs[0])
        if name == "mean" and rank in (3, 4, 5):
            return [_average_positions(b, inputs[0], rank)]
        return [b.call(aten_ops().amax.default, inputs[0], list(range(2, rank)), True)]

    return row


def _average_positions(b: Builder, x: Any, rank: int) -> Any:
    """The mean over every position of each channel, as the adaptive average pool to one
    position that it is (the pooling rule keeps the channel scale)."""
    aten = aten_ops()
    op = {3: aten.adaptive_avg_pool1d, 4: aten._adaptive_avg_pool2d, 5: aten._adaptive_avg_pool3d}
    return b.call(op[rank].default, x, [1] * (rank - 2))


REDUCTIONS = {
    "ReduceMean": "mean",
    "ReduceSum": "sum",
    "ReduceMax": "amax",
    "ReduceMin": "amin",
    "ReduceProd": "prod",
    "ReduceL2": "norm",
    "ReduceL1": "norm",
    "ReduceSumSquare": "sum_square",
    "ReduceLogSumExp": "logsumexp",
}


def reduce(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    x = inputs[0]
    rank = rank_of(b, x)
    axes = attribute(node, "axes")
    if len(inputs) > 1 and inputs[1] is not None:
        axes = b.ints(inputs[1])
    keep = bool(attribute(node, "keepdims", 1))
    if not axes:
        if attribute(node, "noop_with_empty_axes", 0):
            return [x]
        axes = list(range(rank))
    axes = sorted({normalised_axis(a, rank) for a in axes})
    aten = aten_ops()
    kind = REDUCTIONS[node.op_type]
    if kind == "mean":
        if keep and rank in (3, 4, 5) and axes == list(range(2, rank)):
            return [_average_positions(b, x, rank)]
        return [b.call(aten.mean.dim, x, axes, keep)]
    if kind == "sum":
        return [b.call(aten.sum.dim_IntList, x, axes, keep)]
    if kind in ("amax", "amin"):
        return [b.call(getattr(aten, kind).default, x, axes, keep)]
    if kind == "prod":
        if len(axes) != 1:
            raise Unsupported("a product over several axes")
        return [b.call(aten.prod.dim_int, x, axes[0], keep)]
    if kind == "norm":
        order = 2 if node.op_type == "ReduceL2" else 1
        return [b.call(aten.linalg_vector_norm.default, x, order, axes, keep)]
    if kind == "sum_square":
        squared = b.call(aten.pow.Tensor_Scalar, x, 2)
        return [b.call(aten.sum.dim_IntList, squared, axes, keep)]
    return [b.call(aten.logsumexp.default, x, axes, keep)]


def arg_reduce(name: str) -> RowFunction:
    def row(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
        if attribute(node, "select_last_index", 0):
            raise Unsupported("select_last_index")
        rank = rank_of(b, inputs[0])
        axis = normalised_axis(int(attribute(node, "axis", 0)), rank)
        keep = bool(attribute(node, "keepdims", 1))
        return [b.call(getattr(aten_ops(), name).default, inputs[0], axis, keep)]

    return row


def cumsum(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    if attribute(node, "exclusive", 0) or attribute(node, "reverse", 0):
        raise Unsupported("an exclusive or reversed cumulative sum")
    axis = normalised_axis(b.ints(inputs[1])[0], rank_of(b, inputs[0]))
    return [b.call(aten_ops().cumsum.default, inputs[0], axis)]


def topk(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    k = b.ints(inputs[1])[0]
    axis = normalised_axis(int(attribute(node, "axis", -1)), rank_of(b, inputs[0]))
    largest = bool(attribute(node, "largest", 1))
    return list(b.call(aten_ops().topk.default, inputs[0], k, axis, largest, True))
