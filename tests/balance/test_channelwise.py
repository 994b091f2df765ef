"""The per-channel solver: optimality, its relation to the layer-wise optimum, dead units."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weissi_cli.balance.channelwise import round_to_powers_of_two, solve
from weissi_cli.ir import Chain, Layer, Member, Symmetry


def random_chain(sizes: tuple[int, ...], seed: int) -> tuple[Chain, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    layers, weights = [], {}
    for index, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:], strict=False)):
        name = f"l{index}.weight"
        weights[name] = rng.standard_normal((fan_out, fan_in)) * 3.0 ** rng.uniform(
            -2, 2, (fan_out, 1)
        )
        layers.append(Layer(f"l{index}", name, None, (fan_out, fan_in)))
    chain = Chain("c", "spec", "relu", tuple(layers), (1,) * (len(layers) - 1))
    return chain, weights


def squares_of(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name: (w**2).astype(np.float32) for name, w in weights.items()}


def applied(
    chain: Chain, weights: dict[str, np.ndarray], scales: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    result = {name: w.copy() for name, w in weights.items()}
    for symmetry in chain.symmetries():
        for member in symmetry.members:
            factor = scales[symmetry.id] ** member.exponent
            if member.axis == 0:
                result[member.tensor] *= factor[:, None]
            else:
                result[member.tensor] *= factor[None, :]
    return result


sizes_strategy = st.lists(st.integers(1, 8), min_size=3, max_size=6).map(tuple)


@settings(max_examples=30)
@given(sizes_strategy, st.integers(0, 10_000))
def test_layer_granularity_reaches_the_closed_form(sizes: tuple[int, ...], seed: int) -> None:
    chain, weights = random_chain(sizes, seed)
    norms = [float(np.linalg.norm(w)) for w in weights.values()]
    closed = len(norms) * math.exp(2 * sum(map(math.log, norms)) / len(norms))
    solution = solve(chain.symmetries(), squares_of(weights), granularity="layer")
    assert solution.converged
    assert solution.l2_after == pytest.approx(closed, rel=1e-5)


@settings(max_examples=30)
@given(sizes_strategy, st.integers(0, 10_000))
def test_channel_optimum_is_below_layer_optimum_and_balances_every_unit(
    sizes: tuple[int, ...], seed: int
) -> None:
    chain, weights = random_chain(sizes, seed)
    squares = squares_of(weights)
    layer = solve(chain.symmetries(), squares, granularity="layer")
    channel = solve(chain.symmetries(), squares, granularity="channel")
    assert channel.l2_after <= layer.l2_after * (1 + 1e-6)
    assert layer.l2_after <= layer.l2_before * (1 + 1e-9)
    balanced = applied(chain, weights, channel.scales)
    measured = sum(float((w**2).sum()) for w in balanced.values())
    assert measured == pytest.approx(channel.l2_after, rel=1e-5)
    # At the optimum every hidden unit's incoming and outgoing norms are equal.
    for producer, consumer in zip(chain.layers, chain.layers[1:], strict=False):
        incoming = np.linalg.norm(balanced[producer.weight], axis=1)
        outgoing = np.linalg.norm(balanced[consumer.weight], axis=0)
        assert incoming == pytest.approx(outgoing, rel=1e-3)


def test_dead_unit_is_left_at_one_and_reported() -> None:
    chain, weights = random_chain((4, 5, 3), 0)
    weights["l0.weight"][2, :] = 0.0  # unit 2 gets no input
    solution = solve(chain.symmetries(), squares_of(weights))
    item = solution.symmetries["c.0"]
    assert item.dead == [2]
    assert item.scales[2] == 1.0
    assert np.all(np.isfinite(item.scales))


def test_symmetry_with_penalised_mass_on_one_side_only_is_unbounded() -> None:
    """A conv feeding a batch norm: scaling moves all weight mass into running statistics."""
    symmetry = Symmetry(
        "s",
        3,
        (
            Member("conv.weight", 0, 1),
            Member("bn.running_mean", 0, 1),
            Member("bn.running_var", 0, 2),
        ),
        exact=False,
    )
    squares = {"conv.weight": np.ones((3, 2), np.float32)}
    solution = solve([symmetry], squares)
    assert solution.symmetries["s"].unbounded
    assert np.all(solution.symmetries["s"].scales == 1.0)
    assert solution.l2_after == solution.l2_before


def test_tie_groups_share_one_scale() -> None:
    chain, weights = random_chain((3, 6, 2), 1)
    (symmetry,) = chain.symmetries()
    tied = Symmetry(symmetry.id, symmetry.size, symmetry.members, tie=2)
    scales = solve([tied], squares_of(weights)).symmetries[symmetry.id].scales
    assert np.all(scales[0::2] == scales[1::2])


def test_power_of_two_channel_scales_are_exact_and_never_worse_than_none() -> None:
    chain, weights = random_chain((6, 7, 7, 5), 3)
    squares = squares_of(weights)
    rounded = round_to_powers_of_two(
        solve(chain.symmetries(), squares), chain.symmetries(), squares
    )
    for scales in rounded.scales.values():
        assert np.all(np.frexp(scales)[0] == 0.5)
    assert rounded.l2_after <= rounded.l2_before
    balanced = applied(chain, weights, rounded.scales)
    assert sum(float((w**2).sum()) for w in balanced.values()) == pytest.approx(
        rounded.l2_after, rel=1e-5
    )


def test_independent_symmetries_are_those_sharing_no_factors() -> None:
    from weissi_cli.balance.channelwise import _independent

    def symmetry(name: str, size: int, *members: Member) -> Symmetry:
        return Symmetry(name, size, members)

    heads = [
        symmetry(f"h{i}", 4, Member("q", 0, 1, offset=8 * i), Member("k", 0, -1, offset=8 * i))
        for i in range(3)
    ]

    def independent(symmetries: list[Symmetry]) -> set[str]:
        return _independent([(s, list(s.members)) for s in symmetries])

    assert independent(heads) == {"h0", "h1", "h2"}
    wide = symmetry("wide", 12, Member("q", 0, 1), Member("k", 0, -1, offset=100))
    assert independent([*heads, wide]) == {"h2"}  # q rows 0..11 overlap heads 0 and 1
    norm = symmetry("norm", 8, Member("g", 0, 1), Member("q", 1, -1))
    assert independent([*heads, norm]) == set()  # q scaled along both axes couples them all


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_a_symmetry_without_channels_is_left_alone(granularity: str) -> None:
    symmetry = Symmetry("s", 0, (Member("a", 0, 1), Member("b", 1, -1)))
    squares = {"a": np.zeros((0, 3), np.float32), "b": np.zeros((3, 0), np.float32)}
    solution = solve([symmetry], squares, granularity)
    assert solution.symmetries["s"].scales.size == 0
    assert solution.converged
    assert solution.l2_after == 0.0


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_a_descent_that_diverges_ends_without_an_exception(granularity: str) -> None:
    """Self-contradictory symmetries (a hand-written spec can say anything: here one
    scales columns 1-2 of t0 up and down at once) send a scale off to 0 or infinity. Both
    granularities then report NaN and no convergence; the layer path on Python floats
    raised ZeroDivisionError instead."""
    squares = np.array(
        [
            [2.556535243988037, 0.7800689935684204, 10.280685424804688],
            [1.441896915435791, 0.8338453769683838, 22.075380325317383],
            [6.031759262084961, 4.192300319671631, 13.300116539001465],
            [45.38932418823242, 2.9698548316955566, 2.4223992824554443],
            [2.442474365234375, 36.88996887207031, 0.3909580707550049],
            [3.218341112136841, 0.010042427107691765, 8.823481559753418],
            [1.7593482732772827, 0.6699702143669128, 16.6434383392334],
            [1.9173524379730225, 4.730475425720215, 0.29466357827186584],
        ],
        np.float32,
    )
    symmetries = [
        Symmetry(
            "s0",
            1,
            (Member("t0", 1, 1, 3, 0), Member("t0", 1, -1, 2, 1), Member("t0", 1, 1, 3, 0)),
        ),
        Symmetry("s2", 2, (Member("t0", 0, 1, 2, 0), Member("t0", 0, -1, 3, 2)), tie=2),
    ]
    solution = solve(symmetries, {"t0": squares}, granularity)
    assert not solution.converged
    assert math.isnan(solution.l2_after)
