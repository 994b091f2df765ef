"""Stored tensors that multiply scaled values are constants: the scale passes them, end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.onnx_models import (
    EXPORTERS,
    assert_same_structure,
    export,
    name_map,
    randomize,
    rebalanced,
)

torch.set_num_threads(1)


class FoldedFactors(nn.Module):
    """linear → relu → × a per-channel multiplier → × a position-by-channel table → × a
    one-element multiplier → linear; the three factors are buffers (initializers)."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(8, 16), nn.Linear(16, 4)
        self.register_buffer("gain", torch.full((16,), 0.125))
        self.register_buffer("table", torch.linspace(0.5, 2.0, 3 * 16).reshape(3, 16))
        self.register_buffer("scale", torch.tensor([0.125]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.up(x)) * self.gain
        return self.down(h * self.table * self.scale)


def _module() -> nn.Module:
    module = randomize(FoldedFactors(), seed=2, spread=True)
    with torch.no_grad():  # randomize draws every float tensor: make the factors constants
        module.gain.fill_(0.125)
        module.table.copy_(torch.linspace(0.5, 2.0, 3 * 16).reshape(3, 16))
        module.scale.fill_(0.125)
    return module


@pytest.mark.parametrize("scales", ["real", "pow2"])
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_folded_factors_are_constants(exporter: str, scales: str, tmp_path: Path) -> None:
    module = _module()
    args = (torch.randn(2, 3, 8),)
    path = export(module, args, tmp_path / "folded.onnx", exporter, input_names=["x"])
    # the ONNX graph's symmetries are the module's (torch.export), and they are the hidden
    # units between the two layers
    found = assert_same_structure(path, module, args)
    names = name_map(path, module)
    members = {
        frozenset(names[m.tensor][0] for m in s.members if m.tensor in names)
        for s in found.symmetries
    }
    assert frozenset({"up.weight", "up.bias", "down.weight"}) in members
    held = {u.name for u in found.unassigned if u.reason.startswith("a constant")}
    assert {names[t][0] for t in held} == {"gain", "table"}
    assert not [stop for stop in found.stops if "product" in stop.reason]
    report, factors = rebalanced(path, tmp_path / "balanced.onnx", scales)
    # the layers around the factors moved, inversely; the factors did not
    weights = {names[t][0]: f for t, f in factors.items() if t in names}
    assert set(weights) >= {"up.weight", "down.weight"}
    assert not set(weights) & {"gain", "table"}
    up, down = weights["up.weight"], weights["down.weight"]
    rows = up[:, 0] if not names[_tensor(names, "up.weight")][1] else up[0, :]
    columns = down[0, :] if not names[_tensor(names, "down.weight")][1] else down[:, 0]
    np.testing.assert_allclose(rows * columns, 1.0, rtol=1e-6)


def _tensor(names: dict[str, tuple[str, bool]], source: str) -> str:
    return next(t for t, (s, _) in names.items() if s == source)


def test_a_factor_that_is_a_weight_still_scales(tmp_path: Path) -> None:
    """A stored factor whose product something else fixes (a layer scale before a residual
    sum) is a weight: it takes the inverse of the layer's scale."""

    class LayerScale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up, self.down = nn.Linear(6, 6), nn.Linear(6, 6)
            self.gamma = nn.Parameter(torch.full((6,), 0.1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.gamma * self.down(torch.relu(self.up(x)))

    module = randomize(LayerScale(), seed=4)
    args = (torch.randn(2, 6),)
    path = export(module, args, tmp_path / "layer_scale.onnx", "dynamo", input_names=["x"])
    found = assert_same_structure(path, module, args)
    names = name_map(path, module)
    members = {names[m.tensor][0] for s in found.symmetries for m in s.members}
    assert "gamma" in members
    assert not [u for u in found.unassigned if u.reason.startswith("a constant")]
