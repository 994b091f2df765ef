"""Transposed convolutions and group norms as exporters and onnx.helper write them, end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from tests.onnx_models import (
    EXPORTERS,
    export,
    onnx_structure,
    randomize,
    rebalanced,
)

torch.set_num_threads(1)


class UpNet(nn.Module):
    """conv → relu → transposed conv (stride 2, output_padding) → relu → group norm →
    relu → conv."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.up = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1)
        self.gn = nn.GroupNorm(3, 6)
        self.c2 = nn.Conv2d(6, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.up(torch.relu(self.c1(x))))
        return self.c2(torch.relu(self.gn(y)))


class SizedUp(UpNet):
    """The transposed convolution asked for an output size (torch turns it into
    output_padding)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(torch.relu(self.c1(x)), output_size=[8, 8])
        return self.c2(torch.relu(self.gn(torch.relu(y))))


def _flat_names(path: Path, module: nn.Module) -> dict[str, tuple[str, bool]]:
    """ONNX initializer -> the module's tensor with the same values, in any shape (the
    TorchScript exporter writes a group norm's gain as a (channels, 1, 1) tensor)."""
    state = {n: v.detach().numpy().ravel() for n, v in module.state_dict().items()}
    found = {}
    for initializer in onnx.load(str(path)).graph.initializer:
        value = numpy_helper.to_array(initializer).ravel()
        for name, tensor in state.items():
            if value.size > 1 and tensor.shape == value.shape and np.array_equal(tensor, value):
                found.setdefault(initializer.name, (name, False))
    return found


def _members(found: Any, names: dict[str, tuple[str, bool]]) -> set[frozenset[str]]:
    return {
        frozenset(names.get(m.tensor, (m.tensor, False))[0] for m in s.members)
        for s in found.symmetries
    }


@pytest.mark.parametrize("scales", ["real", "pow2"])
@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("kind", [UpNet, SizedUp])
def test_exported_transposed_conv_and_group_norm(
    kind: type[UpNet], exporter: str, scales: str, tmp_path: Path
) -> None:
    module = randomize(kind(), seed=6, spread=True)
    args = (torch.randn(2, 2, 4, 4),)
    path = export(module, args, tmp_path / "up.onnx", exporter, input_names=["x"])
    found = onnx_structure(path)
    names = _flat_names(path, module)
    members = _members(found, names)
    # the transposed kernel's input axis meets the first conv's rows; its output channels
    # meet the norm, which pins them; the norm's gain and shift meet the last conv
    assert frozenset({"c1.weight", "c1.bias", "up.weight"}) in members
    assert frozenset({"gn.weight", "gn.bias", "c2.weight"}) in members
    _, factors = rebalanced(path, tmp_path / "balanced.onnx", scales)
    by_name = {names[t][0]: f for t, f in factors.items() if t in names}
    np.testing.assert_allclose(
        by_name["c1.weight"][:, 0, 0, 0] * by_name["up.weight"][:, 0, 0, 0], 1
    )


# -- graphs no exporter writes -------------------------------------------------------------


def _array(generator: np.random.Generator, *shape: int, size: float = 1.0) -> np.ndarray:
    return (generator.standard_normal(shape) * size).astype(np.float32)


def _model(nodes: list[Any], arrays: dict[str, np.ndarray], opset: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "built",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2, 4, 5])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(value, name) for name, value in arrays.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def transposed(attributes: dict[str, Any]) -> onnx.ModelProto:
    """x → conv (w1, b1) → relu → transposed conv (w2, b2, `attributes`) → relu → 1×1
    conv (w3) → out."""
    generator = np.random.default_rng(1)
    arrays = {
        "w1": _array(generator, 4, 2, 3, 3, size=4.0),
        "b1": _array(generator, 4),
        "w2": _array(generator, 4, 3, 3, 3, size=0.25),
        "b2": _array(generator, 3),
        "w3": _array(generator, 2, 3, 1, 1, size=4.0),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("ConvTranspose", ["r", "w2", "b2"], ["t"], **attributes),
        helper.make_node("Relu", ["t"], ["s"]),
        helper.make_node("Conv", ["s", "w3"], ["out"]),
    ]
    return _model(nodes, arrays, 17)


def group_normalization(opset: int, groups: int) -> onnx.ModelProto:
    """x → conv (w1, b1) → GroupNormalization (gain, shift) → relu → 1×1 conv (w3) → out;
    the gain and shift have one entry per group before opset 21, per channel from it."""
    generator = np.random.default_rng(2)
    count = groups if opset < 21 else 6
    arrays = {
        "w1": _array(generator, 6, 2, 3, 3),
        "b1": _array(generator, 6),
        "gain": _array(generator, count, size=4.0),
        "shift": _array(generator, count, size=4.0),
        "w3": _array(generator, 2, 6, 1, 1, size=0.25),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node(
            "GroupNormalization", ["h", "gain", "shift"], ["g"], num_groups=groups, epsilon=1e-5
        ),
        helper.make_node("Relu", ["g"], ["r"]),
        helper.make_node("Conv", ["r", "w3"], ["out"]),
    ]
    return _model(nodes, arrays, opset)


BUILT = {
    "output_shape": lambda: transposed({"strides": [2, 2], "output_shape": [8, 9]}),
    "output_shape_padded": lambda: transposed(
        {"strides": [2, 3], "output_shape": [8, 12], "output_padding": [1, 1]}
    ),
    "unequal_pads": lambda: transposed({"strides": [2, 2], "pads": [0, 1, 2, 1]}),
    "unequal_pads_padded": lambda: transposed(
        {"strides": [2, 2], "pads": [1, 0, 0, 2], "output_padding": [1, 1]}
    ),
    "group_norm_18": lambda: group_normalization(18, 3),
    "group_norm_21": lambda: group_normalization(21, 3),
}
# the symmetries each built graph has
BUILT_MEMBERS = {
    **dict.fromkeys(
        ("output_shape", "output_shape_padded", "unequal_pads", "unequal_pads_padded"),
        {frozenset({"w1", "b1", "w2"}), frozenset({"w2", "b2", "w3"})},
    ),
    "group_norm_18": {frozenset({"gain", "shift", "w3"})},
    "group_norm_21": {frozenset({"gain", "shift", "w3"})},
}


@pytest.mark.parametrize("scales", ["real", "pow2"])
@pytest.mark.parametrize("name", sorted(BUILT))
def test_built_rows(name: str, scales: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.onnx"
    onnx.save(BUILT[name](), str(path))
    found = onnx_structure(path)
    assert {frozenset(m.tensor for m in s.members) for s in found.symmetries} == BUILT_MEMBERS[name]
    assert not [stop for stop in found.stops if "has no rule" in stop.reason]
    # a norm's gain and shift are 1-D: they count towards L2 only with include_bias
    norm = name.startswith("group_norm")
    _, moved = rebalanced(path, tmp_path / "balanced.onnx", scales, include_bias=norm)
    arrays = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    factors = {name: moved.get(name, np.ones(value.shape)) for name, value in arrays.items()}
    if norm:
        gain, columns = factors["gain"], factors["w3"][0, :, 0, 0]
        if name.endswith("18"):  # one factor per group, shared by its two channels
            np.testing.assert_allclose(columns[0::2], columns[1::2])
            columns = columns[0::2]
        np.testing.assert_allclose(gain * columns, 1, rtol=1e-6)
        np.testing.assert_allclose(factors["shift"], gain, rtol=1e-6)
    else:
        # w2[i, j] moves by 1/c1[i] (its input channels) times c2[j] (its output channels)
        np.testing.assert_allclose(factors["w1"][:, 0, 0, 0], factors["b1"], rtol=1e-6)
        np.testing.assert_allclose(factors["w2"][:, 0, 0, 0] * factors["b1"], factors["b2"][0])
        np.testing.assert_allclose(factors["b2"] * factors["w3"][0, :, 0, 0], 1, rtol=1e-6)
