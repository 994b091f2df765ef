"""The ONNX front-end of the symmetry engine: an ONNX graph rebuilt as a `torch.fx` graph of
ATen ops, which the engine walks unchanged.

Each ONNX node becomes one or a few ATen nodes (`onnx_ops.OPS`, a table with one row per
ONNX op). Initializers become placeholders named by the initializer (floating-point
tensors of more than one element: the tensors a rescaling can touch); graph inputs become
placeholders of scale 1. Values known without running the model (constants, shapes, small
integer initializers, and everything computed from them alone) are computed here, in
torch, so that a `Reshape` or a `Slice` gets the sizes its ATen op needs. Every ATen node's
output is computed on the meta device, which gives the engine its shapes (symbolic
dimensions of the inputs get small sizes) and checks the graph as it goes. An ONNX op
without a row, or one whose row cannot follow it, becomes a node named `onnx::<op>`, which
the engine has no rule for: it stops the scales that reach it and reports it by name and
node.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from weissi_cli.io.dtypes import is_supported_float
from weissi_cli.io.onnx_model import ONNX_DTYPES, Node, OnnxModel, ValueType, tensor_array

# Sizes given to symbolic input dimensions, in the order their names first appear: small,
# and distinct so that no reshape can mistake one axis for another.
SYMBOLIC_SIZES = (2, 3, 5, 7, 11, 13)
KNOWN_ELEMENTS = 1 << 22  # a constant larger than this is not computed here


class Unsupported(Exception):
    """A row cannot follow this node (an attribute or input it does not handle)."""


@dataclass(frozen=True)
class OpaqueOp:
    """The target of a node the engine has no rule for, named after its ONNX op."""

    __name__: str

    def __call__(self, *args: Any) -> Any:
        raise RuntimeError(f"{self.__name__} is not run")


TORCH_DTYPES = {
    "float32": "float32",
    "float64": "float64",
    "float16": "float16",
    "bfloat16": "bfloat16",
    "int64": "int64",
    "int32": "int32",
    "int16": "int16",
    "int8": "int8",
    "uint8": "uint8",
    "bool": "bool",
}


def torch_dtype(code: int) -> Any:
    import torch

    name = TORCH_DTYPES.get(ONNX_DTYPES.get(code, ("", 0))[0])
    if name is None:
        raise Unsupported(f"ONNX element type {code}")
    return getattr(torch, name)


class Builder:
    """Builds the fx graph of an ONNX model, node by node."""

    def __init__(self, model: OnnxModel) -> None:
        import torch
        import torch.fx

        self.torch = torch
        self.model = model
        self.graph = torch.fx.Graph()
        self.values: dict[str, Any] = {}  # ONNX value -> fx Node | torch.Tensor (known) | None
        self.placeholders: dict[str, str] = {}  # fx node -> initializer
        self.sizes: dict[str, int] = {}  # symbolic dimension -> its size here
        self.initializers = {i.name: i for i in model.initializers}
        self.opset = model.opsets.get("", model.opsets.get("ai.onnx", 0))
        self.node: Node | None = None
        self.label = ""
        self.buffers: set[str] = set()  # running statistics (named by initializer)
        self.failures: list[tuple[Node, BaseException]] = []  # rows that gave up, and why

    # values -------------------------------------------------------------------------
    def size_of(self, dim: int | str | None) -> int:
        if isinstance(dim, int) and dim > 0:
            return dim
        key = dim if isinstance(dim, str) and dim else f"?{len(self.sizes)}"
        if key not in self.sizes:
            self.sizes[key] = SYMBOLIC_SIZES[len(self.sizes) % len(SYMBOLIC_SIZES)]
        return self.sizes[key]

    def input_shape(self, kind: ValueType | None) -> tuple[int, ...] | None:
        if kind is None or kind.dims is None:
            return None
        return tuple(self.size_of(d) for d in kind.dims)

    def value(self, name: str) -> Any:
        """The fx node or known tensor of an ONNX value (None: an absent optional input)."""
        if not name:
            return None
        if name in self.values:
            return self.values[name]
        initializer = self.initializers.get(name)
        if initializer is None:
            raise Unsupported(f"value {name!r} is used before it is computed")
        if is_supported_float(initializer.dtype) and initializer.numel > 1:
            found: Any = self._placeholder(name, initializer.dims, torch_dtype(initializer.code))
            self.placeholders[found.name] = name
        elif initializer.numel <= KNOWN_ELEMENTS and initializer.dtype in TORCH_DTYPES:
            found = self.known(tensor_array(self.model, initializer.message, KNOWN_ELEMENTS))
        else:
            found = self._placeholder(name, initializer.dims, torch_dtype(initializer.code))
        self.values[name] = found
        return found

    def known(self, array: Any) -> Any:
        """A numpy array or torch tensor as a known (CPU) tensor."""
        torch = self.torch
        if isinstance(array, torch.Tensor):
            return array
        array = np.asarray(array)
        if array.dtype == np.uint16:  # bfloat16 bits
            return torch.from_numpy(array.astype(np.int32) << 16).view(torch.float32).bfloat16()
        return torch.from_numpy(array.copy(order="C"))

    def _placeholder(self, name: str, shape: Sequence[int], dtype: Any) -> Any:
        node = self.graph.placeholder(_identifier(name))
        node.meta["val"] = self.torch.empty(tuple(shape), dtype=dtype, device="meta")
        return node

    def constant_node(self, tensor: Any) -> Any:
        """A known tensor used beside graph values: a placeholder of scale 1."""
        node = self.graph.placeholder(_identifier(f"constant_{self.label}"))
        node.meta["val"] = tensor.to("meta")
        return node

    def is_node(self, value: Any) -> bool:
        return hasattr(value, "op") and hasattr(value, "meta")

    def shape(self, value: Any) -> tuple[int, ...]:
        if value is None or isinstance(value, _Unknown):
            raise Unsupported("an input of unknown shape")
        if self.is_node(value):
            meta = value.meta.get("val")
            if meta is None:
                raise Unsupported("an input of unknown shape")
            return tuple(int(s) for s in meta.shape)
        return tuple(int(s) for s in value.shape)

    def dtype(self, value: Any) -> Any:
        if value is None or isinstance(value, _Unknown):
            raise Unsupported("an input of unknown type")
        if self.is_node(value):
            meta = value.meta.get("val")
            if meta is None:
                raise Unsupported("an input of unknown type")
            return meta.dtype
        return value.dtype

    def scalar(self, value: Any) -> Any:
        """A known one-element tensor as a Python number (what ATen takes as a Scalar)."""
        if value is not None and not self.is_node(value) and value.numel() == 1:
            item = value.reshape(()).item()
            return item
        return value

    def ints(self, value: Any) -> list[int]:
        """A known integer tensor as a list (shapes, axes, pads)."""
        value = self.known_of(value)
        return [int(x) for x in value.reshape(-1).tolist()]

    def known_of(self, value: Any) -> Any:
        """The values of a known tensor, or of an initializer read as a placeholder (a
        resize's scales are floats like weights)."""
        if value is not None and not self.is_node(value) and not isinstance(value, _Unknown):
            return value
        name = self.placeholders.get(getattr(value, "name", ""))
        initializer = self.initializers.get(name) if name is not None else None
        if initializer is None or initializer.numel > KNOWN_ELEMENTS:
            raise Unsupported("sizes or axes computed from the data")
        return self.known(tensor_array(self.model, initializer.message, KNOWN_ELEMENTS))

    # calls ------------------------------------------------------------------------------
    def call(self, op: Any, *args: Any, **kwargs: Any) -> Any:
        """`op(*args, **kwargs)`: computed now when every input is known; otherwise an fx
        node whose output is computed on the meta device."""
        leaves = _leaves((args, kwargs))
        if any(isinstance(a, _Unknown) for a in leaves):
            raise Unsupported("an input of unknown shape")
        if not any(self.is_node(a) for a in leaves):
            with self.torch.no_grad():
                try:
                    return op(*args, **kwargs)
                except Exception as error:
                    raise Unsupported(_first_line(error)) from None
        args = _map(args, self._as_graph_value)
        kwargs = _map(kwargs, self._as_graph_value)
        meta_args = _map(args, lambda a: a.meta["val"] if self.is_node(a) else a)
        meta_kwargs = _map(kwargs, lambda a: a.meta["val"] if self.is_node(a) else a)
        from weissi_cli.structure.engine.rules import RULES
        from weissi_cli.structure.engine.walk import _op_name
        from weissi_cli.structure.onnx_meta import meta_output

        try:
            result = meta_output(self.torch, _op_name(op), meta_args, meta_kwargs)
            if result is None:
                result = op(*meta_args, **meta_kwargs)
        except Exception as error:  # the op refuses these shapes or arguments
            raise Unsupported(_first_line(error)) from None
        target = op
        if _op_name(op) not in RULES:
            target = OpaqueOp(f"onnx::{self.node.op_type if self.node else _op_name(op)}")
        node = self.graph.create_node(
            "call_function", target, tuple(args), dict(kwargs), name=self.label or None
        )
        node.meta["val"] = result
        if isinstance(result, list | tuple):
            return [self._item(node, i, r) for i, r in enumerate(result)]
        return node

    def _item(self, node: Any, index: int, value: Any) -> Any:
        item = self.graph.call_function(operator.getitem, (node, index))
        item.meta["val"] = value
        return item

    def _as_graph_value(self, value: Any) -> Any:
        torch = self.torch
        if isinstance(value, torch.Tensor):
            return self.constant_node(value)
        return value

    def opaque(self, node: Node, outer: Sequence[str] = ()) -> None:
        """An ONNX node the engine has no rule for: outputs of the shapes the file states
        (when it states them), which stop every scale that reaches it, and every scale of
        the `outer` values its subgraphs read."""
        inputs = []
        for name in [*node.inputs, *outer]:
            value = self.values.get(name) if name in self.values else None
            if value is None and name in self.initializers:
                try:
                    value = self.value(name)
                except Unsupported:
                    value = None
            if isinstance(value, _Unknown):
                value = value.node
            inputs.append(self._as_graph_value(value) if value is not None else None)
        metas = []
        for name in node.outputs:
            kind = self.model.value_types.get(name)
            shape = self._stated_shape(kind)
            metas.append(
                self.torch.empty(shape, dtype=_dtype_or_float(kind), device="meta")
                if shape is not None
                else None
            )
        target = OpaqueOp(
            f"onnx::{node.op_type}" if not node.domain else f"{node.domain}::{node.op_type}"
        )
        fx_node = self.graph.create_node(
            "call_function", target, tuple(inputs), {}, name=self.label or None
        )
        if len(node.outputs) == 1:
            fx_node.meta["val"] = metas[0]
            self.values[node.outputs[0]] = fx_node if metas[0] is not None else _Unknown(fx_node)
            return
        fx_node.meta["val"] = metas if all(m is not None for m in metas) else None
        for index, (name, meta) in enumerate(zip(node.outputs, metas, strict=True)):
            if meta is None:
                self.values[name] = _Unknown(fx_node)
            else:
                self.values[name] = self._item(fx_node, index, meta)

    def _stated_shape(self, kind: ValueType | None) -> tuple[int, ...] | None:
        """A value's shape from the file's type annotations, when every dimension is known
        (a number, or a symbolic name the inputs gave a size)."""
        if kind is None or kind.dims is None:
            return None
        shape = []
        for dim in kind.dims:
            if isinstance(dim, int) and dim > 0:
                shape.append(dim)
            elif isinstance(dim, str) and dim in self.sizes:
                shape.append(self.sizes[dim])
            else:
                return None
        return tuple(shape)


@dataclass(frozen=True)
class _Unknown:
    """The output of an opaque node whose shape the file does not state."""

    node: Any


def _dtype_or_float(kind: ValueType | None) -> Any:
    import torch

    try:
        return torch_dtype(kind.elem_type) if kind is not None else torch.float32
    except Unsupported:
        return torch.float32


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, list | tuple):
        return [leaf for item in value for leaf in _leaves(item)]
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    return [value]


def _map(value: Any, function: Any) -> Any:
    if isinstance(value, list):
        return [_map(item, function) for item in value]
    if isinstance(value, tuple):
        return tuple(_map(item, function) for item in value)
    if isinstance(value, dict):
        return {key: _map(item, function) for key, item in value.items()}
    return function(value)


def _identifier(name: str) -> str:
    text = re.sub(r"\W", "_", name).strip("_") or "value"
    return f"v_{text}" if text[0].isdigit() else text


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:160]
