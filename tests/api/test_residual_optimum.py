"""A layer inside a residual block maps the hidden space to itself, so the hidden space's
symmetry scales that layer's rows and columns: the optimum that `inspect` reports and
`rebalance` writes is the penalty's true minimum, found here from the model's own weights by
a general-purpose minimiser, and the rewritten program computes what the original did."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.optimize
import torch

from tests.exported_models import export, residual_conv, residual_mlp
from weissi_cli.api import inspect_checkpoint, rebalance_checkpoint

BUILDERS = {"mlp": residual_mlp, "conv": residual_conv}


def _minimum(model: torch.nn.Module, include_bias: bool, layer: bool) -> float:
    """min over the hidden channels' log scales u of the L2 penalty, from the definition:
    `inp`'s rows (and bias) scale by e^u, `inner`'s entry (k, l) by e^(u_k − u_l) and its
    bias by e^u, `out`'s columns by e^−u. (`out`'s bias no symmetry moves: it is not part of
    the symmetries' penalty.)"""
    state = {k: v.double() for k, v in model.state_dict().items()}

    def per_channel(weight: torch.Tensor) -> np.ndarray:  # squares summed over kernels
        squared = weight**2
        return (squared.flatten(2).sum(2) if squared.dim() > 2 else squared).numpy()

    inp, inner, out = (per_channel(state[f"{n}.weight"]) for n in ("inp", "inner", "out"))
    rows = inp.sum(1) + (state["inp.bias"].numpy() ** 2 if include_bias else 0)
    inner_bias = state["inner.bias"].numpy() ** 2 if include_bias else 0

    def penalty(u: np.ndarray) -> float:
        logs = np.full(inp.shape[0], u[0]) if layer else u
        up = np.exp(2 * logs)
        coupled = inner * np.exp(2 * (logs[:, None] - logs[None, :]))
        total = rows @ up + coupled.sum() + np.sum(inner_bias * up) + out.sum(0) @ (1 / up)
        return float(total)

    found = scipy.optimize.minimize(
        penalty,
        np.zeros(1 if layer else inp.shape[0]),
        method="L-BFGS-B",
        options={"maxiter": 20_000, "ftol": 1e-15, "gtol": 1e-12},
    )
    return float(found.fun)


@pytest.mark.parametrize("include_bias", [False, True])
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_reported_and_written_optimum_is_the_true_minimum(
    name: str, include_bias: bool, tmp_path: Path
) -> None:
    model, args = BUILDERS[name]()
    path = export(model, args, tmp_path / f"{name}.pt2")
    report = inspect_checkpoint(path, granularity="channel", include_bias=include_bias)
    group = report.group
    assert group is not None
    assert [s.id for s in group.symmetries] == ["inner+inp"]
    members = {(m.tensor, m.axis) for m in group.symmetries[0].members}
    assert {("inner.weight", 0), ("inner.weight", 1)} <= members  # both axes of one tensor
    layer_minimum = _minimum(model, include_bias, layer=True)
    channel_minimum = _minimum(model, include_bias, layer=False)
    assert group.layer.l2_after == pytest.approx(layer_minimum, rel=1e-7)
    assert group.channel is not None
    assert group.channel.l2_after == pytest.approx(channel_minimum, rel=1e-7)
    assert channel_minimum < layer_minimum < group.l2_penalty

    for granularity, minimum in (("layer", layer_minimum), ("channel", channel_minimum)):
        output = tmp_path / f"{name}_{granularity}.pt2"
        written = rebalance_checkpoint(
            path, output, granularity=granularity, scales="real", include_bias=include_bias
        )
        assert written.verification.passed
        program = torch.export.load(output)
        penalised = [
            tensor
            for key, tensor in program.state_dict.items()
            if key != "out.bias" and (tensor.dim() >= 2 or include_bias)
        ]
        measured = sum(float((t.detach().double() ** 2).sum()) for t in penalised)
        assert measured == pytest.approx(minimum, rel=1e-6)
        with torch.no_grad():
            generator = torch.Generator().manual_seed(3)
            for _ in range(3):
                inputs = [torch.randn(a.shape, generator=generator) for a in args]
                before, after = model(*inputs), program.module()(*inputs)
                assert float((after - before).abs().max() / before.abs().max()) <= 1e-5
