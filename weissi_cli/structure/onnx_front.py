"""An ONNX model's graph for the symmetry engine (see `onnx_graph` for how it is built)."""

from __future__ import annotations

from typing import Any

from weissi_cli.io.onnx_file import OnnxCheckpoint
from weissi_cli.structure.onnx_functions import has_subgraphs, inline_functions, outer_names
from weissi_cli.structure.onnx_graph import Builder, Unsupported, _identifier, _Unknown
from weissi_cli.structure.onnx_ops import OPS
from weissi_cli.structure.trace import TracedGraph

# What a row may raise on a graph it cannot follow (odd attributes, hostile files): the
# node then becomes one the engine stops at.
FAILURES = (
    Unsupported,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    RuntimeError,
    ZeroDivisionError,
    OverflowError,
    AttributeError,
)


def from_onnx(checkpoint: OnnxCheckpoint) -> TracedGraph:
    """The model's graph as ATen ops, its placeholders named by the initializers."""
    model = checkpoint.model
    builder = Builder(model)
    builder.buffers = set()
    for name, kind in model.inputs:
        shape = builder.input_shape(kind)
        if shape is None:
            builder.values[name] = _Unknown(None)
            continue
        try:
            dtype = _input_dtype(kind)
        except Unsupported:
            builder.values[name] = _Unknown(None)
            continue
        builder.values[name] = builder._placeholder(f"input_{name}", shape, dtype)
    unsupported: dict[str, int] = {}
    inlined = inline_functions(model)
    notes = list(inlined.notes)
    for node in inlined.nodes:
        builder.node = node
        builder.label = _identifier(
            node.name or (node.outputs[0] if node.outputs else node.op_type)
        )
        if has_subgraphs(node):  # control flow: its subgraphs are not followed
            outer = outer_names(node)
            notes.append(
                f"{node.op_type} at node {builder.label} is control flow, which is not "
                f"followed: the scales of its inputs and of the {len(outer)} outer value(s) "
                "its subgraphs read stop there"
            )
            builder.opaque(node, outer)
            continue
        row = OPS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if row is not None:
            before = len(builder.graph.nodes)
            try:
                inputs = [builder.value(name) for name in node.inputs]
                outputs = row.function(builder, node, inputs)
                if len(outputs) < len([o for o in node.outputs if o]):
                    raise Unsupported("fewer outputs than the node has")
                for name, value in zip(node.outputs, outputs, strict=False):
                    if name:
                        builder.values[name] = value
                continue
            except FAILURES as error:
                _erase_after(builder.graph, before)
                builder.failures.append((node, error))
        if row is None:
            unsupported[node.op_type] = unsupported.get(node.op_type, 0) + 1
        builder.opaque(node)
    outputs = []
    for name in model.outputs:
        value = builder.values.get(name)
        if isinstance(value, _Unknown):
            value = value.node
        if builder.is_node(value):
            outputs.append(value)
    builder.graph.output(tuple(outputs))
    if builder.sizes:
        sizes = ", ".join(f"{k}={v}" for k, v in builder.sizes.items() if not k.startswith("?"))
        if sizes:
            notes.append(f"symbolic input sizes followed as {sizes}")
    return TracedGraph(
        graph=builder.graph,
        placeholders=dict(builder.placeholders),
        origin="graph",
        buffers=frozenset(builder.buffers),
        notes=tuple(notes),
    )


def _input_dtype(kind: Any) -> Any:
    from weissi_cli.structure.onnx_graph import torch_dtype

    return torch_dtype(kind.elem_type)


def _erase_after(graph: Any, count: int) -> None:
    """Remove the nodes a row added before it gave up (they would relate scales of a
    computation that is not there)."""
    added = list(graph.nodes)[count:]
    for node in reversed(added):  # users come after the nodes they read
        if not node.users:
            graph.erase_node(node)
