"""Local functions inlined or stopped with a reason; control flow stopped with its outer values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from tests.onnx_models import assert_same_structure, export, onnx_structure, randomize, rebalanced

torch.set_num_threads(1)

LOCAL = "weissi.test"
OPSET = 18


def _weights(*shapes: tuple[int, int]) -> list[onnx.TensorProto]:
    """w0, w1, ... of alternating sizes (an imbalance for a rebalance to remove)."""
    generator = np.random.default_rng(3)
    return [
        numpy_helper.from_array(
            (generator.standard_normal(shape) * (4.0 if i % 2 else 0.25)).astype(np.float32),
            f"w{i}",
        )
        for i, shape in enumerate(shapes)
    ]


def _model(
    nodes: list[onnx.NodeProto],
    weights: list[onnx.TensorProto],
    functions: list[onnx.FunctionProto] = (),  # type: ignore[assignment]
    stated: dict[str, list[int]] | None = None,
) -> onnx.ModelProto:
    """The graph of `nodes` from x (3×4) to out (3×2); `stated`: value shapes the file
    states (what the engine knows of the output of a node it does not follow)."""
    graph = helper.make_graph(
        nodes,
        "built",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [3, 2])],
        weights,
        value_info=[
            helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
            for name, shape in (stated or {}).items()
        ],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(LOCAL, 1)],
        functions=list(functions),
    )
    onnx.checker.check_model(model)
    return model


def _reference(name: str, to: str) -> onnx.AttributeProto:
    """A float attribute `name` that takes the value of the caller's attribute `to`."""
    reference = helper.make_attribute_ref(name, onnx.AttributeProto.FLOAT)
    reference.ref_attr_name = to
    return reference


def _layer() -> onnx.FunctionProto:
    """layer(x, w) = leaky_relu(x @ w, alpha=@slope), slope 0.01 unless the call says."""
    slope = _reference("alpha", "slope")
    leaky = helper.make_node("LeakyRelu", ["h"], ["y"])
    leaky.attribute.append(slope)
    function = helper.make_function(
        LOCAL,
        "layer",
        ["x", "w"],
        ["y"],
        [helper.make_node("MatMul", ["x", "w"], ["h"]), leaky],
        [helper.make_opsetid("", OPSET)],
    )
    function.attribute_proto.append(helper.make_attribute("slope", 0.01))
    return function


def _two_layers() -> onnx.FunctionProto:
    """two(x, a, b) = layer(layer(x, a, slope=@slope), b): a call inside a function."""
    first = helper.make_node("layer", ["x", "a"], ["h"], domain=LOCAL)
    first.attribute.append(_reference("slope", "slope"))
    second = helper.make_node("layer", ["h", "b"], ["y"], domain=LOCAL)
    return helper.make_function(
        LOCAL,
        "two",
        ["x", "a", "b"],
        ["y"],
        [first, second],
        [helper.make_opsetid("", OPSET), helper.make_opsetid(LOCAL, 1)],
        ["slope"],
    )


def functions_model() -> onnx.ModelProto:
    """x → two(w0, w1, slope=0.2) → layer(w2) (default slope) → MatMul w3 → out."""
    nodes = [
        helper.make_node("two", ["x", "w0", "w1"], ["h"], domain=LOCAL, name="call_two", slope=0.2),
        helper.make_node("layer", ["h", "w2"], ["g"], domain=LOCAL, name="call_layer"),
        helper.make_node("MatMul", ["g", "w3"], ["out"]),
    ]
    weights = _weights((4, 6), (6, 5), (5, 7), (7, 2))
    return _model(nodes, weights, [_layer(), _two_layers()])


@pytest.mark.parametrize("scales", ["real", "pow2"])
def test_local_functions_are_inlined(scales: str, tmp_path: Path) -> None:
    path = tmp_path / "functions.onnx"
    onnx.save(functions_model(), str(path))
    found = onnx_structure(path)
    # the hidden units between each pair of layers, through the functions' leaky ReLUs
    members = {frozenset(m.tensor for m in s.members) for s in found.symmetries}
    assert members == {frozenset({"w0", "w1"}), frozenset({"w1", "w2"}), frozenset({"w2", "w3"})}
    assert not [stop for stop in found.stops if "rule" in stop.reason]
    assert not [note for note in found.notes if "not inlined" in note]
    _, moved = rebalanced(path, tmp_path / "balanced.onnx", scales)
    assert {"w0", "w1", "w2", "w3"} <= set(moved)
    # w1[i, j] moves by c1[j] / c0[i] and w2[j, k] by c2[k] / c1[j]: their product over the
    # hidden unit j between them is the same for every j
    product = moved["w1"][0, :] * moved["w2"][:, 0]
    np.testing.assert_allclose(product, product[0], rtol=1e-6)


def test_an_attribute_reference_takes_the_calls_value(tmp_path: Path) -> None:
    """The body clips at a lower bound read from an attribute: the call's 0 makes it a
    ReLU (the hidden units scale), the function's default -1 pins them."""
    low = helper.make_node("Constant", [], ["low"])
    low.attribute.append(_reference("value_float", "low"))
    body = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        low,
        helper.make_node("Clip", ["h", "low"], ["y"]),
    ]
    function = helper.make_function(
        LOCAL, "layer", ["x", "w"], ["y"], body, [helper.make_opsetid("", OPSET)]
    )
    function.attribute_proto.append(helper.make_attribute("low", -1.0))
    for given, scales in ((0.0, True), (None, False)):
        attributes = {} if given is None else {"low": given}
        nodes = [
            helper.make_node("layer", ["x", "w0"], ["h"], domain=LOCAL, **attributes),
            helper.make_node("MatMul", ["h", "w1"], ["out"]),
        ]
        path = tmp_path / f"clip_{given}.onnx"
        onnx.save(_model(nodes, _weights((4, 6), (6, 2)), [function]), str(path))
        found = onnx_structure(path)
        assert bool(found.symmetries) is scales, found
        if scales:
            rebalanced(path, tmp_path / "balanced.onnx", "pow2")


def test_a_function_with_control_flow_stops_with_its_reason(tmp_path: Path) -> None:
    """A function whose body holds an If is not inlined: the call stops the scales that
    reach it and a note names the call and why; the layers after it still rebalance."""
    branch = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"])],
        "branch",
        [],
        [helper.make_tensor_value_info("r", TensorProto.FLOAT, [3, 4])],
    )
    body = [helper.make_node("If", ["flag"], ["y"], then_branch=branch, else_branch=branch)]
    function = helper.make_function(
        LOCAL, "gate", ["x", "flag"], ["y"], body, [helper.make_opsetid("", OPSET)]
    )
    flag = numpy_helper.from_array(np.array(True), "flag")
    nodes = [
        helper.make_node("gate", ["x", "flag"], ["g"], domain=LOCAL, name="call_gate"),
        helper.make_node("MatMul", ["g", "w0"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w1"], ["out"]),
    ]
    path = tmp_path / "gate.onnx"
    model = _model(nodes, [*_weights((4, 6), (6, 2)), flag], [function], {"g": [3, 4]})
    onnx.save(model, str(path))
    found = onnx_structure(path)
    assert {frozenset(m.tensor for m in s.members) for s in found.symmetries} == {
        frozenset({"w0", "w1"})
    }
    assert any("gate at node call_gate is not inlined" in n and "If" in n for n in found.notes)
    rebalanced(path, tmp_path / "balanced.onnx", "pow2")


def _branch(name: str, nodes: list[onnx.NodeProto], output: str) -> onnx.GraphProto:
    return helper.make_graph(
        nodes, name, [], [helper.make_tensor_value_info(output, TensorProto.FLOAT, [3, 6])]
    )


def control_flow(kind: str) -> onnx.ModelProto:
    """x → MatMul w0 → relu → h; `kind` reads h and w1 from outside its subgraph (c), while
    the graph around it uses w1 too, between h and w3 (relu(relu(h) @ w1) @ w3 + c): a
    symmetry of w1 and w3 would change what the subgraph computes. Then MatMul w2 → relu →
    MatMul w4 → out."""
    inner = [helper.make_node("MatMul", ["h", "w1"], ["m"]), helper.make_node("Relu", ["m"], ["v"])]
    if kind == "If":
        flow = helper.make_node(
            "If",
            ["flag"],
            ["c"],
            then_branch=_branch("then", inner, "v"),
            else_branch=_branch("else", [helper.make_node("Relu", ["h"], ["e"])], "e"),
        )
    elif kind == "Loop":
        body = helper.make_graph(
            [
                helper.make_node("Identity", ["cond"], ["cond_out"]),
                helper.make_node("MatMul", ["h", "w1"], ["m"]),
                helper.make_node("Add", ["carried", "m"], ["next"]),
            ],
            "loop",
            [
                helper.make_tensor_value_info("i", TensorProto.INT64, []),
                helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                helper.make_tensor_value_info("carried", TensorProto.FLOAT, [3, 6]),
            ],
            [
                helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
                helper.make_tensor_value_info("next", TensorProto.FLOAT, [3, 6]),
            ],
        )
        flow = helper.make_node("Loop", ["trips", "flag", "zero"], ["c"], body=body)
    else:
        body = helper.make_graph(
            [
                helper.make_node("MatMul", ["row", "w1"], ["m"]),
                helper.make_node("Add", ["state", "m"], ["next"]),
                helper.make_node("Identity", ["next"], ["each"]),
            ],
            "scan",
            [
                helper.make_tensor_value_info("state", TensorProto.FLOAT, [6]),
                helper.make_tensor_value_info("row", TensorProto.FLOAT, [6]),
            ],
            [
                helper.make_tensor_value_info("next", TensorProto.FLOAT, [6]),
                helper.make_tensor_value_info("each", TensorProto.FLOAT, [6]),
            ],
        )
        flow = helper.make_node(
            "Scan", ["zero_row", "h"], ["last", "c"], body=body, num_scan_inputs=1
        )
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["p"]),
        helper.make_node("Relu", ["p"], ["h"]),
        flow,
        helper.make_node("Relu", ["h"], ["q"]),
        helper.make_node("MatMul", ["q", "w1"], ["k"]),
        helper.make_node("Relu", ["k"], ["kr"]),
        helper.make_node("MatMul", ["kr", "w3"], ["t"]),
        helper.make_node("Add", ["t", "c"], ["s"]),
        helper.make_node("MatMul", ["s", "w2"], ["u"]),
        helper.make_node("Relu", ["u"], ["ur"]),
        helper.make_node("MatMul", ["ur", "w4"], ["out"]),
    ]
    extra = [
        numpy_helper.from_array(np.array(True), "flag"),
        numpy_helper.from_array(np.array(2, np.int64), "trips"),
        numpy_helper.from_array(np.zeros((3, 6), np.float32), "zero"),
        numpy_helper.from_array(np.zeros(6, np.float32), "zero_row"),
    ]
    weights = _weights((4, 6), (6, 6), (6, 5), (6, 6), (5, 2))
    weights[4] = numpy_helper.from_array(numpy_helper.to_array(weights[4]) * 16, "w4")
    return _model(nodes, [*weights, *extra], [], {"c": [3, 6]})


@pytest.mark.parametrize("scales", ["real", "pow2"])
@pytest.mark.parametrize("kind", ["If", "Loop", "Scan"])
def test_control_flow_stops_at_its_node(kind: str, scales: str, tmp_path: Path) -> None:
    path = tmp_path / f"{kind}.onnx"
    onnx.save(control_flow(kind), str(path))
    found = onnx_structure(path)
    # w1 is read inside the subgraph: it takes no scale, so neither do the units around it;
    # the layers after the sum still do
    members = {frozenset(m.tensor for m in s.members) for s in found.symmetries}
    assert members == {frozenset({"w2", "w4"})}
    assert any(f"onnx::{kind} has no rule" in note for note in found.notes)
    assert any(f"{kind} at node" in n and "outer value" in n for n in found.notes)
    assert any(stop.reason == f"onnx::{kind} has no rule" for stop in found.stops)
    _, moved = rebalanced(path, tmp_path / "balanced.onnx", scales)
    assert set(moved) == {"w2", "w4"}


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.nn.functional.leaky_relu(self.a(x), 0.2))


class Blocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.one, self.two = Block(), Block()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.two(torch.relu(self.one(x)))


@pytest.mark.parametrize("scales", ["real", "pow2"])
def test_modules_exported_as_functions(scales: str, tmp_path: Path) -> None:
    """The TorchScript exporter writes each block as a call of a local function: inlined,
    the graph has the module's own symmetries (those torch.export gives the engine)."""
    module = randomize(Blocks(), seed=1, spread=True)
    args = (torch.randn(2, 4),)
    path = tmp_path / "blocks.onnx"
    export(module, args, path, export_modules_as_functions={Block}, opset_version=15)
    model = onnx.load(str(path))
    assert [f.name for f in model.functions] == ["Block"]
    assert [n.op_type for n in model.graph.node] == ["Block", "Relu", "Block"]
    found = assert_same_structure(path, module, args)
    assert len(found.symmetries) == 3
    _, moved = rebalanced(path, tmp_path / "balanced.onnx", scales)
    assert moved


def _unchecked(nodes: list[onnx.NodeProto], functions: list[onnx.FunctionProto]) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "built",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [3, 2])],
        _weights((4, 6), (6, 2)),
    )
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid(LOCAL, 1)]
    return helper.make_model(graph, opset_imports=opsets, functions=functions)


@pytest.mark.parametrize("case", ["recursive", "opset", "overloaded"])
def test_calls_that_cannot_be_inlined_are_named_with_their_reason(
    case: str, tmp_path: Path
) -> None:
    body = [helper.make_node("Relu", ["x"], ["y"])]
    if case == "recursive":  # a function that calls itself: never inlined past the limit
        body = [helper.make_node("self_call", ["x"], ["y"], domain=LOCAL)]
    version = OPSET - 1 if case == "opset" else OPSET
    function = helper.make_function(
        LOCAL,
        "self_call",
        ["x"],
        ["y"],
        body,
        [helper.make_opsetid("", version), helper.make_opsetid(LOCAL, 1)],
    )
    functions = [function, function] if case == "overloaded" else [function]
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h"]),
        helper.make_node("self_call", ["h"], ["r"], domain=LOCAL, name="call"),
        helper.make_node("MatMul", ["r", "w1"], ["out"]),
    ]
    path = tmp_path / f"{case}.onnx"
    onnx.save(_unchecked(nodes, functions), str(path))
    found = onnx_structure(path)
    assert not found.symmetries
    reason = {
        "recursive": "nested more than 16 deep",
        "opset": f"imports opset {OPSET - 1}, the model {OPSET}",
        "overloaded": "several functions have its name",
    }[case]
    assert any("local function" in note and reason in note for note in found.notes), found.notes
    assert (
        f"{LOCAL}::self_call has no rule: the scales reaching it (1×) were stopped" in found.notes
    )
