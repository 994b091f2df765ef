"""Identities of the layer-wise shift: the optimum, its bias-aware variant, pow2 rounding."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.strategies import chains, link_shifts
from weissi_cli.balance.layerwise import (
    Shift,
    geometric_mean,
    l2_penalty,
    optimal_shift,
    shifted_penalty,
)


def objective(shift: Shift, weights: list[float], biases: list[float]) -> float:
    return shifted_penalty(shift, weights, biases)


def test_geometric_mean_of_known_values() -> None:
    assert geometric_mean([1.0, 4.0, 16.0]) == pytest.approx(4.0, rel=1e-15)


def test_l2_penalty_counts_biases_only_when_given() -> None:
    assert l2_penalty([3.0, 4.0]) == 25.0
    assert l2_penalty([3.0, 4.0], [1.0, 2.0]) == 30.0


@given(chains())
def test_optimal_shift_equalises_every_norm_to_the_geometric_mean(
    chain: tuple[list[float], list[float]],
) -> None:
    weights, _ = chain
    shift = optimal_shift(weights)
    mean = geometric_mean(weights)
    for gamma, norm in zip(shift.gammas, weights, strict=True):
        assert gamma * norm == pytest.approx(mean, rel=1e-12)
    assert math.prod(shift.gammas) == pytest.approx(1.0, rel=1e-12)
    assert shifted_penalty(shift, weights) == pytest.approx(len(weights) * mean**2, rel=1e-12)


@given(chains(), st.data())
def test_no_shift_beats_the_optimum(
    chain: tuple[list[float], list[float]], data: st.DataObject
) -> None:
    weights, biases = chain
    other = Shift(data.draw(link_shifts(len(weights))))
    assert shifted_penalty(optimal_shift(weights), weights) <= shifted_penalty(other, weights) * (
        1 + 1e-12
    )
    best = optimal_shift(weights, biases)
    assert objective(best, weights, biases) <= objective(other, weights, biases) * (1 + 1e-10)


@given(chains())
def test_bias_aware_optimum_has_zero_gradient(chain: tuple[list[float], list[float]]) -> None:
    weights, biases = chain
    best = optimal_shift(weights, biases)
    base = objective(best, weights, biases)
    for index in range(1, len(weights)):
        for step in (1e-4, -1e-4):
            links = list(best.log_links)
            links[index] += step
            assert objective(Shift(tuple(links)), weights, biases) >= base * (1 - 1e-12)


@given(chains())
def test_bias_aware_optimum_reduces_to_closed_form_without_biases(
    chain: tuple[list[float], list[float]],
) -> None:
    weights, _ = chain
    with_zero_biases = optimal_shift(weights, [0.0] * len(weights))
    closed = optimal_shift(weights)
    assert np.allclose(with_zero_biases.log_links, closed.log_links, rtol=0, atol=1e-12)


def test_bias_aware_optimum_matches_a_brute_force_grid() -> None:
    weights, biases = [4.0, 1.0], [3.0, 0.5]
    grid = np.linspace(-3, 3, 60001)
    values = [
        weights[0] ** 2 * math.exp(2 * s)
        + biases[0] ** 2 * math.exp(2 * s)
        + weights[1] ** 2 * math.exp(-2 * s)
        for s in grid
    ]
    best = optimal_shift(weights, biases)
    assert best.log_links[1] == pytest.approx(grid[int(np.argmin(values))], abs=1e-4)
    # Closed form for two layers: s = ¼ ln(n2² / (n1² + b1²))
    assert best.log_links[1] == pytest.approx(0.25 * math.log(1.0 / (16.0 + 9.0)), rel=1e-12)


@given(chains(), st.data())
def test_pow2_rounding_keeps_the_product_exactly_one(
    chain: tuple[list[float], list[float]], data: st.DataObject
) -> None:
    weights, biases = chain
    shift = optimal_shift(weights, biases if data.draw(st.booleans()) else None).rounded_to_pow2()
    gammas = shift.gammas
    assert all(math.frexp(g)[0] == 0.5 for g in gammas)
    assert math.prod(gammas) == 1.0
    cumulative = 1.0
    for gamma, bias_scale in zip(gammas, shift.bias_scales, strict=True):
        cumulative *= gamma
        assert bias_scale == cumulative
    assert shift.bias_scales[-1] == 1.0


@given(chains())
def test_pow2_rounding_stays_within_a_factor_root_two_per_link(
    chain: tuple[list[float], list[float]],
) -> None:
    weights, _ = chain
    real = optimal_shift(weights)
    rounded = real.rounded_to_pow2()
    for exact, pow2 in zip(real.bias_scales, rounded.bias_scales, strict=True):
        assert abs(math.log2(pow2) - math.log2(exact)) <= 0.5 + 1e-12


@given(chains())
def test_rebalancing_is_idempotent(chain: tuple[list[float], list[float]]) -> None:
    weights, biases = chain
    shift = optimal_shift(weights, biases)
    moved_weights = [g * n for g, n in zip(shift.gammas, weights, strict=True)]
    moved_biases = [p * b for p, b in zip(shift.bias_scales, biases, strict=True)]
    again = optimal_shift(moved_weights, moved_biases)
    assert np.allclose(again.log_links, 0.0, atol=1e-7)


def test_identity_shift_changes_nothing() -> None:
    shift = Shift.identity(3)
    assert shift.gammas == (1.0, 1.0, 1.0)
    assert shift.bias_scales == (1.0, 1.0, 1.0)
