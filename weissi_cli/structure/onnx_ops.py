"""How each ONNX op is rebuilt from ATen ops (one row per op in `OPS`), for the engine.

A row takes the node's attributes and inputs (fx nodes, or tensors known without running
the model) and returns its outputs. It raises `Unsupported` where it does not follow the
node exactly (an attribute it does not handle, sizes that depend on the data); the node
then stops every scale that reaches it. `op_table()` renders the table for the docs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from weissi_cli.io.onnx_model import Node
from weissi_cli.structure.onnx_graph import Builder, Unsupported, torch_dtype
from weissi_cli.structure.onnx_shapes import SHAPE_ROWS

RowFunction = Callable[[Builder, Node, list[Any]], list[Any]]


@dataclass(frozen=True)
class Row:
    function: RowFunction
    aten: str  # what it becomes
    note: str = ""


def _aten() -> Any:
    import torch

    return torch.ops.aten


def _attr(node: Node, name: str, default: Any = None) -> Any:
    return node.attributes.get(name, default)


def _rank(b: Builder, value: Any) -> int:
    return len(b.shape(value))


def _axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise Unsupported(f"axis {axis} of a rank-{rank} tensor")
    return axis % max(rank, 1)


# -- elementwise ---------------------------------------------------------------------------


def unary(name: str, overload: str = "default", **fixed: Any) -> RowFunction:
    def row(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
        return [b.call(getattr(getattr(_aten(), name), overload), inputs[0], **fixed)]

    return row


def leaky_relu(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    return [b.call(_aten().leaky_relu.default, inputs[0], float(_attr(node, "alpha", 0.01)))]


def elu(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    return [b.call(_aten().elu.default, inputs[0], float(_attr(node, "alpha", 1.0)))]


def gelu(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    approximate = _attr(node, "approximate", b"none")
    text = approximate.decode() if isinstance(approximate, bytes) else str(approximate)
    return [b.call(_aten().gelu.default, inputs[0], approximate=text)]


def prelu(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    return [b.call(_aten()._prelu_kernel.default, inputs[0], inputs[1])]


def clip(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    if b.opset < 11:
        low, high = _attr(node, "min"), _attr(node, "max")
    else:
        low = b.scalar(inputs[1]) if len(inputs) > 1 else None
        high = b.scalar(inputs[2]) if len(inputs) > 2 else None
    if b.is_node(low) or b.is_node(high):
        raise Unsupported("clip bounds computed from the data")
    return [b.call(_aten().clamp.default, inputs[0], low, high)]


def cast(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    dtype = torch_dtype(int(_attr(node, "to", 1)))
    return [b.call(_aten()._to_copy.default, inputs[0], dtype=dtype)]


def cast_like(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    return [b.call(_aten()._to_copy.default, inputs[0], dtype=b.dtype(inputs[1]))]


def identity(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    return [inputs[0]]


def dropout(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    """Inference: the output is the input; the mask (when asked for) is all ones."""
    import torch

    mask = torch.ones(b.shape(inputs[0]), dtype=torch.bool)
    return [inputs[0], mask][: len(node.outputs)]


BINARY = {
    "Add": "add",
    "Sub": "sub",
    "Mul": "mul",
    "Div": "div",
    "Equal": "eq",
    "Greater": "gt",
    "Less": "lt",
    "GreaterOrEqual": "ge",
    "LessOrEqual": "le",
    "And": "logical_and",
    "Or": "logical_or",
    "Xor": "logical_xor",
    "Mod": "fmod",
    "BitwiseAnd": "bitwise_and",
    "BitwiseOr": "bitwise_or",
}
COMMUTATIVE = {"add", "mul", "eq", "logical_and", "logical_or", "logical_xor"}
COMPARISONS = {"eq", "gt", "lt", "ge", "le"}


def binary(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    """Broadcasting elementwise ops; a known one-element operand is passed as a number (as
    torch.export records `x * 0.5`)."""
    _aten()
    name = BINARY[node.op_type]
    if node.op_type == "Mod" and not _attr(node, "fmod", 0):
        name = "remainder"
    first, second = inputs[0], inputs[1]
    if b.is_node(second) or b.is_node(first):
        if not b.is_node(second) and second.numel() == 1 and b.shape(second) == ():
            second = b.scalar(second)
        elif not b.is_node(second) and second.numel() == 1:
            second = _keep_rank(b, first, second)
        if not b.is_node(first) and name in COMMUTATIVE and not isinstance(second, int | float):
            first, second = second, first
        elif not b.is_node(first) and first.numel() == 1 and name in COMMUTATIVE:
            first, second = second, b.scalar(first)
    if isinstance(second, int | float | bool):
        scalar = name in COMPARISONS or name == "remainder"
        return [b.call(_overload(name, "Scalar" if scalar else "Tensor"), first, second)]
    return [b.call(_overload(name, "Tensor"), first, second)]


def _overload(name: str, preferred: str) -> Any:
    """`aten.<name>.<preferred>`, or its default overload where it has no such one."""
    packet = getattr(_aten(), name)
    return getattr(packet, preferred) if preferred in packet.overloads() else packet.default


def _keep_rank(b: Builder, first: Any, second: Any) -> Any:
    """A one-element operand of shape (1, 1, ...) broadcasts like a number unless it has
    more dimensions than the other side."""
    if len(b.shape(second)) <= len(b.shape(first)):
        return b.scalar(second)
    return second


def power(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    exponent = b.scalar(inputs[1])
    if isinstance(exponent, int | float):
        return [b.call(_aten().pow.Tensor_Scalar, inputs[0], exponent)]
    return [b.call(_aten().pow.Tensor_Tensor, inputs[0], inputs[1])]


def where(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    condition, first, second = inputs
    if not b.is_node(condition) and not b.is_node(first) and not b.is_node(second):
        return [b.call(_aten().where.self, condition, first, second)]
    if not b.is_node(first) and not b.is_node(second):
        return [b.call(_aten().where.self, condition, first, second)]
    first = _scalar_or_tensor(b, first)
    second = _scalar_or_tensor(b, second)
    if isinstance(first, int | float):
        return [b.call(_aten().where.ScalarSelf, condition, first, second)]
    if isinstance(second, int | float):
        return [b.call(_aten().where.ScalarOther, condition, first, second)]
    return [b.call(_aten().where.self, condition, first, second)]


def _scalar_or_tensor(b: Builder, value: Any) -> Any:
    if not b.is_node(value) and value.numel() == 1 and value.dim() == 0:
        return b.scalar(value)
    return value


def variadic(name: str) -> RowFunction:
    """Sum/Max/Min of any number of inputs: a chain of two-input ops; Max or Min of a value
    and a known number is a clamp (`max(x, 0)` is a ReLU)."""

    def row(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
        nodes = [v for v in inputs if b.is_node(v)]
        numbers = [b.scalar(v) for v in inputs if not b.is_node(v) and v.numel() == 1]
        if name in ("maximum", "minimum") and len(nodes) == 1 and len(numbers) == len(inputs) - 1:
            bound = (max if name == "maximum" else min)(numbers)
            low, high = (bound, None) if name == "maximum" else (None, bound)
            return [b.call(_aten().clamp.default, nodes[0], low, high)]
        result = inputs[0]
        for other in inputs[1:]:
            result = b.call(_overload(name, "Tensor"), result, other)
        return [result]

    return row


def mean_of(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    total = variadic("add")(b, node, inputs)[0]
    return [b.call(_aten().div.Tensor, total, float(len(inputs)))]


# -- contractions ----------------------------------------------------------------------------


def matmul(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    return [b.call(_aten().matmul.default, inputs[0], inputs[1])]


def gemm(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    """`alpha·A'·B' + beta·C`: a linear layer when B is transposed and C is a vector (or
    absent); otherwise transposes and `addmm`."""
    aten = _aten()
    a, weight = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    alpha, beta = float(_attr(node, "alpha", 1.0)), float(_attr(node, "beta", 1.0))
    if _attr(node, "transA", 0):
        a = b.call(aten.t.default, a)
    bias = _unless_zero(b, bias)
    vector_bias = bias is None or len(b.shape(bias)) == 1
    if _attr(node, "transB", 0) and vector_bias and beta == 1.0:
        out = b.call(aten.linear.default, a, weight, bias)
        return [out if alpha == 1.0 else b.call(aten.mul.Tensor, out, alpha)]
    if _attr(node, "transB", 0):
        weight = b.call(aten.t.default, weight)
    if bias is None:
        out = b.call(aten.mm.default, a, weight)
        return [out if alpha == 1.0 else b.call(aten.mul.Tensor, out, alpha)]
    return [b.call(aten.addmm.default, bias, a, weight, beta=beta, alpha=alpha)]


def _unless_zero(b: Builder, bias: Any) -> Any:
    """A known all-zero bias (exporters write one for layers without) is no bias."""
    if bias is not None and not b.is_node(bias) and not bias.any():
        return None
    return bias


def einsum(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    equation = _attr(node, "equation", b"")
    text = equation.decode() if isinstance(equation, bytes) else str(equation)
    return [b.call(_aten().einsum.default, text, list(inputs))]


def _conv_pads(b: Builder, node: Node, spatial: list[int], kernel: list[int]) -> list[int]:
    """ONNX pads (begins then ends) for the node's auto_pad."""
    count = len(kernel)
    auto = _attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    strides = list(_attr(node, "strides", [1] * count))
    dilations = list(_attr(node, "dilations", [1] * count))
    if auto in ("NOTSET", ""):
        pads = list(_attr(node, "pads", [0] * (2 * count)))
        if len(pads) != 2 * count:
            raise Unsupported("pads of the wrong length")
        return pads
    if auto == "VALID":
        return [0] * (2 * count)
    begins, ends = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        begins.append(small if auto == "SAME_UPPER" else large)
        ends.append(large if auto == "SAME_UPPER" else small)
    return begins + ends


def _pad_first(b: Builder, x: Any, pads: list[int], value: float) -> tuple[Any, list[int]]:
    """Symmetric pads go to the op; others become an explicit pad first."""
    count = len(pads) // 2
    if pads[:count] == pads[count:]:
        return x, pads[:count]
    torch_pads: list[int] = []
    for dim in reversed(range(count)):
        torch_pads += [pads[dim], pads[dim + count]]
    return b.call(_aten().constant_pad_nd.default, x, torch_pads, value), [0] * count


def conv(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    x, weight = inputs[0], inputs[1]
    bias = _unless_zero(b, inputs[2] if len(inputs) > 2 else None)
    shape, kernel_shape = b.shape(x), b.shape(weight)
    count = len(kernel_shape) - 2
    kernel = list(_attr(node, "kernel_shape", kernel_shape[2:]))
    pads = _conv_pads(b, node, list(shape[2:]), kernel)
    x, padding = _pad_first(b, x, pads, 0.0)
    strides = list(_attr(node, "strides", [1] * count))
    dilations = list(_attr(node, "dilations", [1] * count))
    groups = int(_attr(node, "group", 1))
    return [
        b.call(
            _aten().convolution.default,
            x,
            weight,
            bias,
            strides,
            padding,
            dilations,
            False,
            [0] * count,
            groups,
        )
    ]


def conv_transpose(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    x, weight = inputs[0], inputs[1]
    bias = _unless_zero(b, inputs[2] if len(inputs) > 2 else None)
    count = len(b.shape(weight)) - 2
    if _attr(node, "output_shape") is not None or _attr(node, "auto_pad", b"NOTSET") not in (
        b"NOTSET",
        "NOTSET",
        b"",
    ):
        raise Unsupported("ConvTranspose with output_shape or auto_pad")
    pads = list(_attr(node, "pads", [0] * (2 * count)))
    if pads[:count] != pads[count:]:
        raise Unsupported("ConvTranspose with asymmetric pads")
    return [
        b.call(
            _aten().convolution.default,
            x,
            weight,
            bias,
            list(_attr(node, "strides", [1] * count)),
            pads[:count],
            list(_attr(node, "dilations", [1] * count)),
            True,
            list(_attr(node, "output_padding", [0] * count)),
            int(_attr(node, "group", 1)),
        )
    ]


# -- normalisation -----------------------------------------------------------------------------


def batch_norm(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    if _attr(node, "training_mode", 0):
        raise Unsupported("BatchNormalization in training mode")
    x, weight, bias, mean, var = inputs[:5]
    for name in node.inputs[3:5]:
        b.buffers.add(name)
    out = b.call(
        _aten()._native_batch_norm_legit_no_training.default,
        x,
        weight,
        bias,
        mean,
        var,
        float(_attr(node, "momentum", 0.9)),
        float(_attr(node, "epsilon", 1e-5)),
    )
    return [out[0]]


def instance_norm(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    x, weight, bias = inputs[:3]
    eps = float(_attr(node, "epsilon", 1e-5))
    return [
        b.call(_aten().instance_norm.default, x, weight, bias, None, None, True, 0.1, eps, False)
    ]


def layer_norm(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    x = inputs[0]
    weight = inputs[1] if len(inputs) > 1 else None
    bias = inputs[2] if len(inputs) > 2 else None
    shape = b.shape(x)
    axis = _axis(int(_attr(node, "axis", -1)), len(shape))
    normalized = list(shape[axis:])
    eps = float(_attr(node, "epsilon", 1e-5))
    aten = _aten()
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
    axis = _axis(int(_attr(node, "axis", -1)), len(shape))
    if list(b.shape(weight)) != list(shape[axis:]):
        raise Unsupported("RMSNormalization with a broadcast gain")
    eps = float(_attr(node, "epsilon", 1e-5))
    return [b.call(_aten().rms_norm.default, x, list(shape[axis:]), weight, eps)]


def group_norm(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    x, weight, bias = inputs[:3]
    shape = b.shape(x)
    groups = int(_attr(node, "num_groups", 1))
    if b.shape(weight) != (shape[1],) or b.shape(bias) != (shape[1],):
        raise Unsupported("GroupNormalization with a gain per group (opset 18)")
    spatial = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    eps = float(_attr(node, "epsilon", 1e-5))
    out = b.call(
        _aten().native_group_norm.default, x, weight, bias, shape[0], shape[1], spatial, groups, eps
    )
    return [out[0]]


def softmax(name: str) -> RowFunction:
    def row(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
        rank = _rank(b, inputs[0])
        axis = _axis(int(_attr(node, "axis", -1 if b.opset >= 13 else 1)), rank)
        if b.opset < 13 and axis != rank - 1:
            raise Unsupported("a softmax over flattened trailing axes (opset < 13)")
        return [b.call(getattr(_aten(), name).default, inputs[0], axis, False)]

    return row


# -- pooling and reductions ------------------------------------------------------------------


def max_pool(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    x = inputs[0]
    shape = b.shape(x)
    kernel = list(_attr(node, "kernel_shape", []))
    count = len(kernel)
    if count not in (1, 2, 3):
        raise Unsupported("a pooling window of this rank")
    pads = _conv_pads(b, node, list(shape[2:]), kernel)
    x, padding = _pad_first(b, x, pads, -math.inf)
    strides = list(_attr(node, "strides", [1] * count))
    dilations = list(_attr(node, "dilations", [1] * count))
    ceil_mode = bool(_attr(node, "ceil_mode", 0))
    aten = _aten()
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
    kernel = list(_attr(node, "kernel_shape", []))
    count = len(kernel)
    if count not in (1, 2, 3) or any(d != 1 for d in _attr(node, "dilations", [1] * count)):
        raise Unsupported("an average pool of this rank or with dilations")
    pads = _conv_pads(b, node, list(shape[2:]), kernel)
    include = bool(_attr(node, "count_include_pad", 0))
    if pads[:count] != pads[count:]:
        if not include:
            raise Unsupported("an average pool with asymmetric pads that are not counted")
        x, padding = _pad_first(b, x, pads, 0.0)
    else:
        padding = pads[:count]
    strides = list(_attr(node, "strides", [1] * count))
    ceil_mode = bool(_attr(node, "ceil_mode", 0))
    aten = _aten()
    if count == 1:
        return [b.call(aten.avg_pool1d.default, x, kernel, strides, padding, ceil_mode, include)]
    op = aten.avg_pool2d if count == 2 else aten.avg_pool3d
    return [b.call(op.default, x, kernel, strides, padding, ceil_mode, include)]


def global_pool(name: str) -> RowFunction:
    def row(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
        rank = _rank(b, inputs[0])
        if name == "mean" and rank in (3, 4, 5):
            return [_average_positions(b, inputs[0], rank)]
        return [b.call(_aten().amax.default, inputs[0], list(range(2, rank)), True)]

    return row


def _average_positions(b: Builder, x: Any, rank: int) -> Any:
    """The mean over every position of each channel, as the adaptive average pool to one
    position that it is (the pooling rule keeps the channel scale)."""
    aten = _aten()
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
    rank = _rank(b, x)
    axes = _attr(node, "axes")
    if len(inputs) > 1 and inputs[1] is not None:
        axes = b.ints(inputs[1])
    keep = bool(_attr(node, "keepdims", 1))
    if not axes:
        if _attr(node, "noop_with_empty_axes", 0):
            return [x]
        axes = list(range(rank))
    axes = sorted({_axis(a, rank) for a in axes})
    aten = _aten()
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
        if _attr(node, "select_last_index", 0):
            raise Unsupported("select_last_index")
        rank = _rank(b, inputs[0])
        axis = _axis(int(_attr(node, "axis", 0)), rank)
        keep = bool(_attr(node, "keepdims", 1))
        return [b.call(getattr(_aten(), name).default, inputs[0], axis, keep)]

    return row


def cumsum(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    if _attr(node, "exclusive", 0) or _attr(node, "reverse", 0):
        raise Unsupported("an exclusive or reversed cumulative sum")
    axis = _axis(b.ints(inputs[1])[0], _rank(b, inputs[0]))
    return [b.call(_aten().cumsum.default, inputs[0], axis)]


def topk(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    k = b.ints(inputs[1])[0]
    axis = _axis(int(_attr(node, "axis", -1)), _rank(b, inputs[0]))
    largest = bool(_attr(node, "largest", 1))
    return list(b.call(_aten().topk.default, inputs[0], k, axis, largest, True))


# -- the table -------------------------------------------------------------------------------


def _table() -> dict[str, Row]:
    rows: dict[str, Row] = {}
    for name, aten in (
        ("Relu", "relu"),
        ("Sigmoid", "sigmoid"),
        ("Tanh", "tanh"),
        ("Exp", "exp"),
        ("Log", "log"),
        ("Sqrt", "sqrt"),
        ("Reciprocal", "reciprocal"),
        ("Neg", "neg"),
        ("Abs", "abs"),
        ("Erf", "erf"),
        ("Floor", "floor"),
        ("Ceil", "ceil"),
        ("Round", "round"),
        ("Sin", "sin"),
        ("Cos", "cos"),
        ("Tan", "tan"),
        ("Atan", "atan"),
        ("Softplus", "softplus"),
        ("Softsign", "softsign"),
        ("Selu", "selu"),
        ("Celu", "celu"),
        ("Mish", "mish"),
        ("HardSigmoid", "hardsigmoid"),
        ("HardSwish", "hardswish"),
        ("Not", "logical_not"),
        ("IsNaN", "isnan"),
        ("IsInf", "isinf"),
        ("Sign", "sign"),
    ):
        rows[name] = Row(unary(aten), aten)
    rows["HardSigmoid"] = Row(
        unary("hardsigmoid"), "hardsigmoid", "any alpha and beta: not homogeneous either way"
    )
    rows["LeakyRelu"] = Row(leaky_relu, "leaky_relu")
    rows["Elu"] = Row(elu, "elu")
    rows["Gelu"] = Row(gelu, "gelu")
    rows["PRelu"] = Row(prelu, "_prelu_kernel")
    rows["Clip"] = Row(clip, "clamp", "min 0 and no max is a ReLU; other bounds pin the scale")
    rows["Cast"] = Row(cast, "_to_copy")
    rows["CastLike"] = Row(cast_like, "_to_copy")
    rows["Identity"] = Row(identity, "(the input itself)")
    rows["Dropout"] = Row(dropout, "(the input itself)", "inference: the mask is all ones")
    for name, aten in BINARY.items():
        rows[name] = Row(binary, aten, "a known one-element operand is a number")
    rows["Pow"] = Row(power, "pow", "a known exponent of 1 passes the scale, -1 inverts it")
    rows["Where"] = Row(where, "where")
    rows["Sum"] = Row(variadic("add"), "add (chained)")
    rows["Max"] = Row(variadic("maximum"), "maximum (chained)")
    rows["Min"] = Row(variadic("minimum"), "minimum (chained)")
    rows["Mean"] = Row(mean_of, "add, div")
    rows["MatMul"] = Row(matmul, "matmul")
    rows["Gemm"] = Row(gemm, "linear | t, mm, addmm", "transB with a vector bias is a linear layer")
    rows["Einsum"] = Row(einsum, "einsum")
    rows["Conv"] = Row(conv, "convolution", "asymmetric pads: constant_pad_nd first")
    rows["ConvTranspose"] = Row(conv_transpose, "convolution (transposed)")
    rows["BatchNormalization"] = Row(
        batch_norm, "_native_batch_norm_legit_no_training", "inference mode only"
    )
    rows["InstanceNormalization"] = Row(instance_norm, "instance_norm")
    rows["LayerNormalization"] = Row(layer_norm, "native_layer_norm")
    rows["RMSNormalization"] = Row(rms_norm, "rms_norm")
    rows["GroupNormalization"] = Row(group_norm, "native_group_norm", "a gain per channel")
    rows["Softmax"] = Row(softmax("_softmax"), "_softmax")
    rows["LogSoftmax"] = Row(softmax("_log_softmax"), "_log_softmax")
    rows["MaxPool"] = Row(max_pool, "max_pool1d/2d/3d", "asymmetric pads: -inf padding first")
    rows["AveragePool"] = Row(average_pool, "avg_pool1d/2d/3d")
    rows["GlobalAveragePool"] = Row(global_pool("mean"), "mean over positions")
    rows["GlobalMaxPool"] = Row(global_pool("amax"), "amax over positions")
    for name in REDUCTIONS:
        rows[name] = Row(reduce, REDUCTIONS[name].replace("_", " "))
    rows["ArgMax"] = Row(arg_reduce("argmax"), "argmax")
    rows["ArgMin"] = Row(arg_reduce("argmin"), "argmin")
    rows["CumSum"] = Row(cumsum, "cumsum")
    rows["TopK"] = Row(topk, "topk")
    rows.update({name: Row(*row) for name, row in SHAPE_ROWS.items()})
    return rows


OPS: dict[str, Row] = _table()


def op_table() -> str:
    """The ONNX op table as Markdown (the documentation's table is this text)."""
    lines = ["| ONNX op | ATen ops | note |", "|---|---|---|"]
    for name in sorted(OPS):
        row = OPS[name]
        aten = row.aten if row.aten.startswith("(") else f"`{row.aten}`"
        lines.append(f"| `{name}` | {aten} | {row.note} |")
    return "\n".join(lines) + "\n"


__all__ = ["OPS", "Row", "op_table"]
