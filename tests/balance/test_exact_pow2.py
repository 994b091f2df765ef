"""Power-of-two exponents held within float16 headroom: every scaled value exact, and no
exponent moved further from 0 or past it."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from weissi_cli.balance.exact_pow2 import ExactLimits
from weissi_cli.headroom import MAX_SHIFT, Headroom, shift_tables
from weissi_cli.ir import Member, Symmetry
from weissi_cli.scales import from_symmetries


def headroom_of(name: str, values: np.ndarray) -> Headroom:
    down, up = shift_tables()
    bits = values.astype(np.float16).view(np.uint16)
    columns = values.shape[1] if values.ndim > 1 else 1
    bits = bits.reshape(values.shape[0], columns, -1 if bits.size else 1)
    return Headroom(
        name,
        values.shape,
        down[bits].min(axis=(1, 2), initial=MAX_SHIFT),
        up[bits].min(axis=(1, 2), initial=MAX_SHIFT),
        down[bits].min(axis=(0, 2), initial=MAX_SHIFT),
        up[bits].min(axis=(0, 2), initial=MAX_SHIFT),
    )


def float16_tensor(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Magnitudes from subnormal to near overflow, some zeros."""
    magnitudes = np.exp2(rng.uniform(-26, 15.9, size=shape)) * (rng.random(shape) > 0.1)
    signed = magnitudes * rng.choice([-1.0, 1.0], size=shape)
    return np.clip(signed, -65504, 65504).astype(np.float16).astype(np.float64)


def structure(sizes: tuple[int, int, int], tie: int) -> tuple[list[Symmetry], dict]:
    """q·k-like rows of `a` against rows of `b` (tied in pairs), and a chain link from `a`'s
    rows to `c`'s columns; `norm` (1-D) is divided by what `a`'s columns take."""
    n0, n1, n2 = sizes
    shapes = {"a": (n1 * tie, n0), "b": (n1 * tie, n0), "c": (n2, n1 * tie), "norm": (n0,)}
    symmetries = [
        Symmetry("ab", n1 * tie, (Member("a", 0, 1), Member("b", 0, -1)), tie=tie),
        Symmetry("ac", n1 * tie, (Member("a", 0, 1), Member("c", 1, -1)), tie=tie),
        Symmetry("in", n0, (Member("norm", 0, -1), Member("a", 1, 1), Member("b", 1, 1))),
    ]
    return symmetries, shapes


def scaled(values: dict, symmetries: list[Symmetry], scales: dict, shapes: dict) -> dict:
    factors = from_symmetries(symmetries, scales, shapes)
    return {
        name: value * np.broadcast_to(factors[name].whole(), value.size).reshape(value.shape)
        if name in factors
        else value
        for name, value in values.items()
    }


def exact(values: dict) -> bool:
    with np.errstate(over="ignore"):  # an overflow to inf is not exact
        return all(
            np.array_equal(value.astype(np.float16).astype(np.float64), value)
            for value in values.values()
        )


@settings(max_examples=60, deadline=None)
@given(
    st.tuples(st.integers(1, 5), st.integers(1, 4), st.integers(1, 5)),
    st.sampled_from([1, 2]),
    st.integers(0, 10_000),
    st.booleans(),
)
def test_held_exponents_scale_every_float16_value_exactly(
    sizes: tuple[int, int, int], tie: int, seed: int, whole: bool
) -> None:
    rng = np.random.default_rng(seed)
    symmetries, shapes = structure(sizes, tie)
    values = {name: float16_tensor(rng, shape) for name, shape in shapes.items()}
    limits = ExactLimits({n: headroom_of(n, v) for n, v in values.items()})
    wanted = {}
    for symmetry in symmetries:
        groups = 1 if whole else symmetry.size // max(symmetry.tie, 1)
        exponents = np.repeat(rng.integers(-12, 13, size=groups), symmetry.size // groups)
        wanted[symmetry.id] = np.ldexp(1.0, exponents)

    held, counts = limits.hold(symmetries, wanted, whole)

    assert exact(scaled(values, symmetries, held, shapes))
    for key, scale in held.items():
        before, after = np.log2(wanted[key]), np.log2(scale)
        assert np.all(np.abs(after) <= np.abs(before))
        assert np.all(after * before >= 0)  # towards 0, never past it
        assert counts.get(key, 0) == np.count_nonzero(after != before)
        for symmetry in symmetries:  # shared scales stay shared
            if symmetry.id == key:
                tie = symmetry.size if whole else max(symmetry.tie, 1)
                assert np.all(after.reshape(-1, tie) == after.reshape(-1, tie)[:, :1])
    if exact(scaled(values, symmetries, wanted, shapes)) and not counts:
        assert all(np.array_equal(held[k], wanted[k]) for k in wanted)


def test_feasible_exponents_are_left_alone() -> None:
    rng = np.random.default_rng(1)
    symmetries, shapes = structure((3, 2, 4), 1)
    values = {name: np.full(shape, 1.0) for name, shape in shapes.items()}  # room 24 down
    limits = ExactLimits({n: headroom_of(n, v) for n, v in values.items()})
    wanted = {s.id: np.ldexp(1.0, rng.integers(-4, 5, size=s.size)) for s in symmetries}
    held, counts = limits.hold(symmetries, wanted, whole=False)
    assert counts == {}
    assert all(np.array_equal(held[k], wanted[k]) for k in wanted)


def test_a_lowest_bit_at_the_bottom_of_float16_blocks_halving_its_row_only() -> None:
    symmetries = [Symmetry("ab", 3, (Member("a", 0, -1), Member("b", 1, 1)))]
    a = np.array([[1.0, 0.5], [2.0**-24, 1.0], [0.25, 1.0]])  # row 1 holds the smallest subnormal
    values = {"a": a, "b": np.ones((2, 3))}
    limits = ExactLimits({n: headroom_of(n, v) for n, v in values.items()})
    held, counts = limits.hold(symmetries, {"ab": np.array([2.0, 2.0, 4.0])}, whole=False)
    assert held["ab"].tolist() == [2.0, 1.0, 4.0]
    assert counts == {"ab": 1}
    held, counts = limits.hold(symmetries, {"ab": np.array([2.0, 2.0, 2.0])}, whole=True)
    assert held["ab"].tolist() == [1.0, 1.0, 1.0]  # one scale for all: the row holds it at 1


def test_a_tensor_without_values_holds_nothing() -> None:
    symmetries = [Symmetry("s", 3, (Member("a", 0, 1), Member("b", 1, -1)))]
    values = {"a": np.zeros((3, 0)), "b": np.full((2, 3), 2.0**-24)}
    limits = ExactLimits({n: headroom_of(n, v) for n, v in values.items()})
    held, counts = limits.hold(symmetries, {"s": np.array([0.5, 1.0, 0.5])}, whole=False)
    assert held["s"].tolist() == [0.5, 1.0, 0.5]  # b's columns grow: exact; a has no values
    assert counts == {}
