"""Identities of the layer-wise shift: the optimum, its bias-aware variant, pow2 rounding."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.strategies import chains, link_shifts
from weissi_cli.balance.layerwise import (
    LN2,
    Shift,
    geometric_mean,
    l2_penalty,
    optimal_shift,
    pow2_shift,
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
    penalised = biases if data.draw(st.booleans()) else None
    shift = pow2_shift(optimal_shift(weights, penalised), weights, penalised)
    gammas = shift.gammas
    assert all(math.frexp(g)[0] == 0.5 for g in gammas)
    assert math.prod(gammas) == 1.0
    cumulative = 1.0
    for gamma, bias_scale in zip(gammas, shift.bias_scales, strict=True):
        cumulative *= gamma
        assert bias_scale == cumulative
    assert shift.bias_scales[-1] == 1.0


@given(chains())
def test_pow2_links_are_the_floor_or_ceiling_of_the_real_ones_or_one(
    chain: tuple[list[float], list[float]],
) -> None:
    weights, _ = chain
    real = optimal_shift(weights)
    rounded = pow2_shift(real, weights)
    for exact, pow2 in zip(real.bias_scales, rounded.bias_scales, strict=True):
        exponent = math.log2(pow2)
        assert exponent == 0 or abs(exponent - math.log2(exact)) < 1 + 1e-12


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


def naive_pow2(real: Shift) -> Shift:
    exponents = [round(value / LN2) for value in real.log_links]
    return Shift(tuple(k * LN2 for k in exponents), pow2=True)


@given(chains(), st.booleans())
def test_pow2_is_never_worse_than_doing_nothing_or_rounding_each_link(
    chain: tuple[list[float], list[float]], with_biases: bool
) -> None:
    weights, biases = chain
    penalised = biases if with_biases else None
    real = optimal_shift(weights, penalised)
    chosen = shifted_penalty(pow2_shift(real, weights, penalised), weights, penalised)
    assert chosen <= shifted_penalty(Shift.identity(len(weights)), weights, penalised) * (1 + 1e-12)
    assert chosen <= shifted_penalty(naive_pow2(real), weights, penalised) * (1 + 1e-12)


@given(chains(max_depth=5), st.booleans())
def test_pow2_is_the_best_of_its_candidates(
    chain: tuple[list[float], list[float]], with_biases: bool
) -> None:
    weights, biases = chain
    penalised = biases if with_biases else None
    real = optimal_shift(weights, penalised)
    options = [sorted({math.floor(v / LN2), math.ceil(v / LN2), 0}) for v in real.log_links[1:-1]]
    brute = min(
        shifted_penalty(Shift((0.0, *(k * LN2 for k in inner), 0.0), pow2=True), weights, penalised)
        for inner in itertools.product(*options)
    )
    assert shifted_penalty(
        pow2_shift(real, weights, penalised), weights, penalised
    ) == pytest.approx(brute, rel=1e-12)


def test_near_balanced_chain_is_not_made_worse_by_pow2() -> None:
    """Links near ±0.5 (in log2) rounded one by one alternate 2^-1, 2, ...: L2 went up 52%."""
    weights = [1.34793356, 0.89609515, 0.94461888, 0.83273969, 0.72028002]
    real = optimal_shift(weights)
    assert shifted_penalty(naive_pow2(real), weights) > l2_penalty(weights)
    assert shifted_penalty(pow2_shift(real, weights), weights) <= l2_penalty(weights)


@given(chains(max_depth=5), st.booleans(), st.data())
def test_bounded_pow2_keeps_every_factor_in_its_range_and_is_the_best_that_does(
    chain: tuple[list[float], list[float]], with_biases: bool, data: st.DataObject
) -> None:
    """Float16 exactness bounds each layer's weight and bias exponent: the DP stays inside,
    and is the best of the bounded candidates (every exponent between 0 and the real one)."""
    weights, biases = chain
    penalised = biases if with_biases else None
    ranges = st.tuples(st.integers(-3, 0), st.integers(0, 3))
    bounds = [(data.draw(ranges), data.draw(ranges)) for _ in weights]
    real = optimal_shift(weights, penalised)
    bounded = pow2_shift(real, weights, penalised, bounds)
    links = [round(value / LN2) for value in bounded.log_links]
    for layer, ((weight_low, weight_high), (bias_low, bias_high)) in enumerate(bounds, 1):
        assert weight_low <= links[layer] - links[layer - 1] <= weight_high
        assert bias_low <= links[layer] <= bias_high

    def feasible(inner: tuple[int, ...]) -> bool:
        full = (0, *inner, 0)
        return all(
            w_low <= full[i] - full[i - 1] <= w_high and b_low <= full[i] <= b_high
            for i, ((w_low, w_high), (b_low, b_high)) in enumerate(bounds, 1)
        )

    options = [
        range(min(math.floor(v / LN2), 0), max(math.ceil(v / LN2), 0) + 1)
        for v in real.log_links[1:-1]
    ]
    brute = min(
        shifted_penalty(Shift((0.0, *(k * LN2 for k in inner), 0.0), pow2=True), weights, penalised)
        for inner in itertools.product(*options)
        if feasible(inner)
    )
    assert shifted_penalty(bounded, weights, penalised) == pytest.approx(brute, rel=1e-12)
    wide = [((-99, 99), (-99, 99))] * len(weights)
    assert shifted_penalty(
        pow2_shift(real, weights, penalised, wide), weights, penalised
    ) <= shifted_penalty(pow2_shift(real, weights, penalised), weights, penalised) * (1 + 1e-12)
