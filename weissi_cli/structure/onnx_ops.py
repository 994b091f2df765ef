"""How each ONNX op is rebuilt from ATen ops (one row per op in `OPS`), for the engine.

A row takes the node's attributes and inputs (fx nodes, or tensors known without running
the model) and returns its outputs. It raises `Unsupported` where it does not follow the
node exactly (an attribute it does not handle, sizes that depend on the data); the node
then stops every scale that reaches it. `op_table()` renders the table for the docs.
"""

from __future__ import annotations

from typing import Any

from weissi_cli.io.onnx_model import Node
from weissi_cli.structure.onnx_graph import Builder, Unsupported, torch_dtype
from weissi_cli.structure.onnx_reductions import (
    REDUCTIONS,
    arg_reduce,
    average_pool,
    batch_norm,
    cumsum,
    global_pool,
    group_norm,
    instance_norm,
    layer_norm,
    max_pool,
    reduce,
    rms_norm,
    softmax,
    topk,
)
from weissi_cli.structure.onnx_rows import (
    Row,
    RowFunction,
    aten_ops,
    attribute,
    conv_pads,
    pad_first,
)
from weissi_cli.structure.onnx_shapes import SHAPE_ROWS

# -- elementwise ---------------------------------------------------------------------------


def unary(name: str, overload: str = "default", **fixed: Any) -> RowFunction:
    def row(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
        return [b.call(getattr(getattr(aten_ops(), name), overload), inputs[0], **fixed)]

    return row


def leaky_relu(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    return [b.call(aten_ops().leaky_relu.default, inputs[0], float(attribute(node, "alpha", 0.01)))]


def elu(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    return [b.call(aten_ops().elu.default, inputs[0], float(attribute(node, "alpha", 1.0)))]


def gelu(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    approximate = attribute(node, "approximate", b"none")
    text = approximate.decode() if isinstance(approximate, bytes) else str(approximate)
    return [b.call(aten_ops().gelu.default, inputs[0], approximate=text)]


def prelu(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    return [b.call(aten_ops()._prelu_kernel.default, inputs[0], inputs[1])]


def clip(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    if b.opset < 11:
        low, high = attribute(node, "min"), attribute(node, "max")
    else:
        low = b.scalar(inputs[1]) if len(inputs) > 1 else None
        high = b.scalar(inputs[2]) if len(inputs) > 2 else None
    if b.is_node(low) or b.is_node(high):
        raise Unsupported("clip bounds computed from the data")
    return [b.call(aten_ops().clamp.default, inputs[0], low, high)]


def cast(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    dtype = torch_dtype(int(attribute(node, "to", 1)))
    return [b.call(aten_ops()._to_copy.default, inputs[0], dtype=dtype)]


def cast_like(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    return [b.call(aten_ops()._to_copy.default, inputs[0], dtype=b.dtype(inputs[1]))]


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
    aten_ops()
    name = BINARY[node.op_type]
    if node.op_type == "Mod" and not attribute(node, "fmod", 0):
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
    packet = getattr(aten_ops(), name)
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
        return [b.call(aten_ops().pow.Tensor_Scalar, inputs[0], exponent)]
    return [b.call(aten_ops().pow.Tensor_Tensor, inputs[0], inputs[1])]


def where(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    condition, first, second = inputs
    if not b.is_node(condition) and not b.is_node(first) and not b.is_node(second):
        return [b.call(aten_ops().where.self, condition, first, second)]
    if not b.is_node(first) and not b.is_node(second):
        return [b.call(aten_ops().where.self, condition, first, second)]
    first = _scalar_or_tensor(b, first)
    second = _scalar_or_tensor(b, second)
    if isinstance(first, int | float):
        return [b.call(aten_ops().where.ScalarSelf, condition, first, second)]
    if isinstance(second, int | float):
        return [b.call(aten_ops().where.ScalarOther, condition, first, second)]
    return [b.call(aten_ops().where.self, condition, first, second)]


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
            return [b.call(aten_ops().clamp.default, nodes[0], low, high)]
        result = inputs[0]
        for other in inputs[1:]:
            result = b.call(_overload(name, "Tensor"), result, other)
        return [result]

    return row


def mean_of(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    total = variadic("add")(b, node, inputs)[0]
    return [b.call(aten_ops().div.Tensor, total, float(len(inputs)))]


# -- contractions ----------------------------------------------------------------------------


def matmul(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    return [b.call(aten_ops().matmul.default, inputs[0], inputs[1])]


def gemm(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    """`alpha·A'·B' + beta·C`: a linear layer when B is transposed and C is a vector (or
    absent); otherwise transposes and `addmm`."""
    aten = aten_ops()
    a, weight = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    alpha, beta = float(attribute(node, "alpha", 1.0)), float(attribute(node, "beta", 1.0))
    if attribute(node, "transA", 0):
        a = b.call(aten.t.default, a)
    bias = _unless_zero(b, bias)
    vector_bias = bias is None or len(b.shape(bias)) == 1
    if attribute(node, "transB", 0) and vector_bias and beta == 1.0:
        out = b.call(aten.linear.default, a, weight, bias)
        return [out if alpha == 1.0 else b.call(aten.mul.Tensor, out, alpha)]
    if attribute(node, "transB", 0):
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
    equation = attribute(node, "equation", b"")
    text = equation.decode() if isinstance(equation, bytes) else str(equation)
    return [b.call(aten_ops().einsum.default, text, list(inputs))]


def conv(b: Builder, node: Node, inputs: list[Any]) -> list[Any]:
    x, weight = inputs[0], inputs[1]
    bias = _unless_zero(b, inputs[2] if len(inputs) > 2 else None)
    shape, kernel_shape = b.shape(x), b.shape(weight)
    count = len(kernel_shape) - 2
    kernel = list(attribute(node, "kernel_shape", kernel_shape[2:]))
    pads = conv_pads(b, node, list(shape[2:]), kernel)
    x, padding = pad_first(b, x, pads, 0.0)
    strides = list(attribute(node, "strides", [1] * count))
    dilations = list(attribute(node, "dilations", [1] * count))
    groups = int(attribute(node, "group", 1))
    return [
        b.call(
            aten_ops().convolution.default,
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
    """A transposed convolution: the full output, cropped by `pads` (begins, ends); with
    `output_shape` the pads are what give that shape. Unequal crops are the op's common
    part, then a slice of the rest."""
    x, weight = inputs[0], inputs[1]
    bias = _unless_zero(b, inputs[2] if len(inputs) > 2 else None)
    kernel_shape = b.shape(weight)
    count = len(kernel_shape) - 2
    strides = list(attribute(node, "strides", [1] * count))
    dilations = list(attribute(node, "dilations", [1] * count))
    extra = list(attribute(node, "output_padding", [0] * count))
    kernel = list(attribute(node, "kernel_shape", kernel_shape[2:]))
    auto = attribute(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto not in ("NOTSET", "", "VALID") or len(kernel) != count:
        raise Unsupported(f"ConvTranspose with auto_pad {auto}")
    spatial = b.shape(x)[2:]
    full = [
        s * (n - 1) + e + (k - 1) * d + 1
        for n, s, e, k, d in zip(spatial, strides, extra, kernel, dilations, strict=True)
    ]
    shape = attribute(node, "output_shape")
    if shape is not None:
        wanted = list(shape)
        if len(wanted) != count:
            raise Unsupported("ConvTranspose's output_shape has one size per spatial axis")
        totals = [f - w for f, w in zip(full, wanted, strict=True)]
        pads = [t - t // 2 for t in totals] + [t // 2 for t in totals]
    elif auto == "VALID":
        pads = [0] * (2 * count)
    else:
        pads = list(attribute(node, "pads", [0] * (2 * count)))
    if len(pads) != 2 * count or min(pads) < 0:
        raise Unsupported("ConvTranspose pads that are negative or of the wrong length")
    common = [min(pads[i], pads[i + count]) for i in range(count)]
    out = b.call(
        aten_ops().convolution.default,
        x,
        weight,
        bias,
        strides,
        common,
        dilations,
        True,
        extra,
        int(attribute(node, "group", 1)),
    )
    for i in range(count):
        start, end = pads[i] - common[i], pads[i + count] - common[i]
        if start or end:
            size = b.shape(out)[2 + i]
            out = b.call(aten_ops().slice.Tensor, out, 2 + i, start, size - end)
    return [out]


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
    rows["ConvTranspose"] = Row(
        conv_transpose,
        "convolution (transposed)",
        "output_shape gives the pads; unequal pads: a slice after",
    )
    rows["BatchNormalization"] = Row(
        batch_norm, "_native_batch_norm_legit_no_training", "inference mode only"
    )
    rows["InstanceNormalization"] = Row(
        instance_norm, "instance_norm", "a gain of ones and a shift of zeros are none"
    )
    rows["LayerNormalization"] = Row(layer_norm, "native_layer_norm")
    rows["RMSNormalization"] = Row(rms_norm, "rms_norm")
    rows["GroupNormalization"] = Row(
        group_norm,
        "native_group_norm | native_group_norm, reshape, mul, add",
        "a gain per channel (opset 21), or per group before",
    )
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
