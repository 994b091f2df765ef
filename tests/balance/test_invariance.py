"""The scale symmetry itself: random positive shifts leave the function and WEISSI unchanged."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import mlp_forward, mlp_state
from tests.strategies import layer_sizes, link_shifts
from weissi_cli.balance.layerwise import Shift, weissi_penalty
from weissi_cli.ir import Chain, Layer
from weissi_cli.scales import shift_scales


def chain_of(state: dict[str, torch.Tensor]) -> Chain:
    prefixes = [name.removesuffix(".weight") for name in state if name.endswith(".weight")]
    layers = tuple(
        Layer(
            p,
            f"{p}.weight",
            f"{p}.bias" if f"{p}.bias" in state else None,
            tuple(state[f"{p}.weight"].shape),
        )
        for p in prefixes
    )
    return Chain("c", "spec", "relu", layers, (1,) * (len(layers) - 1))


def shifted(state: dict[str, torch.Tensor], shift: Shift) -> dict[str, torch.Tensor]:
    shapes = {name: tuple(tensor.shape) for name, tensor in state.items()}
    scales = shift_scales(chain_of(state), shift, shapes)
    return {
        name: tensor * scales[name].scalar if name in scales else tensor
        for name, tensor in state.items()
    }


def weissi_of(state: dict[str, torch.Tensor]) -> float:
    weights = [t.double().numpy() for n, t in state.items() if n.endswith(".weight")]
    norms = [float(np.linalg.norm(w)) for w in weights]
    l1 = [float(np.abs(w).sum()) / n for w, n in zip(weights, norms, strict=True)]
    return weissi_penalty(math.fsum(math.log(n) for n in norms), math.fsum(l1), 0.7, 1.3)


@settings(max_examples=40)
@given(layer_sizes(), st.integers(0, 10_000), st.data())
def test_random_positive_shift_leaves_outputs_unchanged(
    sizes: tuple[int, ...], seed: int, data: st.DataObject
) -> None:
    state = mlp_state(sizes=sizes, seed=seed)
    shift = Shift(data.draw(link_shifts(len(sizes) - 1)))
    inputs = torch.randn(
        32, sizes[0], dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )
    expected = mlp_forward(state, inputs)
    actual = mlp_forward(shifted(state, shift), inputs)
    assert torch.allclose(
        actual, expected, rtol=1e-10, atol=1e-10 * float(expected.abs().max() + 1)
    )


@settings(max_examples=40)
@given(layer_sizes(), st.integers(0, 10_000), st.data())
def test_random_positive_shift_leaves_weissi_unchanged(
    sizes: tuple[int, ...], seed: int, data: st.DataObject
) -> None:
    state = mlp_state(sizes=sizes, seed=seed)
    shift = Shift(data.draw(link_shifts(len(sizes) - 1)))
    assert weissi_of(shifted(state, shift)) == pytest.approx(weissi_of(state), rel=1e-10, abs=1e-10)


def test_bias_by_gamma_instead_of_cumulative_product_breaks_the_function() -> None:
    """The short form b_l = γ_l b̃_l is wrong: this test would fail if weissi used it."""
    state = mlp_state(sizes=(4, 5, 5, 3), seed=1)
    shift = Shift((0.0, math.log(2.0), math.log(8.0), 0.0))
    wrong = {
        name: tensor * (gamma if name.endswith(("weight", "bias")) else 1.0)
        for (name, tensor), gamma in zip(
            state.items(), [g for g in shift.gammas for _ in ("weight", "bias")], strict=True
        )
    }
    inputs = torch.randn(64, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(mlp_forward(wrong, inputs), mlp_forward(state, inputs))
    assert torch.allclose(mlp_forward(shifted(state, shift), inputs), mlp_forward(state, inputs))
