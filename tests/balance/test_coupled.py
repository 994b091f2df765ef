"""Symmetries that scale both axes of one tensor: the solver reaches the penalty's true
minimum (found here by a general-purpose minimiser over the log scales), held, streamed
and summed squares agree, and rounding never makes the penalty worse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.optimize
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import write_safetensors
from weissi_cli.balance import streamed
from weissi_cli.balance.channelwise import round_to_powers_of_two, solve
from weissi_cli.balance.coupled import coupling, majorised_costs, majorised_step
from weissi_cli.balance.streamed import StreamedSquares
from weissi_cli.errors import StructureError
from weissi_cli.io import open_checkpoint
from weissi_cli.ir import Member, Symmetry
from weissi_cli.stats import axis_squares

Vector = np.ndarray


def residual_symmetry(size: int, offset: int = 0, tie: int = 1) -> Symmetry:
    """`a` → hidden, `b` hidden → hidden (rows and columns from `offset`), `c` hidden → out."""
    return Symmetry(
        "hidden",
        size,
        (
            Member("a", 0, 1),
            Member("b", 0, 1, offset=offset),
            Member("b", 1, -1, offset=offset),
            Member("c", 1, -1),
        ),
        tie=tie,
    )


def squares_of(size: int, seed: int, extra: int = 0) -> dict[str, np.ndarray]:
    """Random squared entries, channels of very different scales; `b` has `extra` rows and
    columns outside the symmetry's span."""
    rng = np.random.default_rng(seed)
    spread = np.exp(rng.uniform(-2, 2, size))
    a = rng.random((size, 5)) * spread[:, None]
    b = rng.random((size + extra, size + extra))
    c = rng.random((3, size)) / spread[None, :]
    return {"a": a.astype(np.float32), "b": b.astype(np.float32), "c": c.astype(np.float32)}


def true_minimum(
    squares: dict[str, np.ndarray], size: int, offset: int, layer: bool, tie: int = 1
) -> float:
    """The penalty's minimum over the channels' log scales, by L-BFGS from the definition:
    entry (i, j) of each tensor scales by the factors its members give row i and column j."""
    q = {name: value.astype(np.float64) for name, value in squares.items()}
    b_rows = np.zeros(q["b"].shape[0])
    b_columns = np.zeros(q["b"].shape[1])

    def penalty(u: Vector) -> float:
        logs = np.full(size, u[0]) if layer else np.repeat(u, tie)
        b_rows[offset : offset + size] = logs
        b_columns[offset : offset + size] = logs
        total = np.sum(q["a"] * np.exp(2 * logs)[:, None])
        total += np.sum(q["b"] * np.exp(2 * (b_rows[:, None] - b_columns[None, :])))
        total += np.sum(q["c"] * np.exp(-2 * logs)[None, :])
        return float(total)

    count = 1 if layer else size // tie
    found = scipy.optimize.minimize(
        penalty,
        np.zeros(count),
        method="L-BFGS-B",
        options={"maxiter": 20_000, "ftol": 1e-15, "gtol": 1e-12},
    )
    return float(found.fun)


@pytest.mark.parametrize("granularity", ["layer", "channel"])
@pytest.mark.parametrize(
    ("size", "extra", "offset", "tie"), [(6, 0, 0, 1), (6, 3, 2, 1), (8, 0, 0, 2)]
)
def test_the_optimum_is_the_true_minimum(
    granularity: str, size: int, extra: int, offset: int, tie: int
) -> None:
    squares = squares_of(size, seed=size + extra, extra=extra)
    symmetry = residual_symmetry(size, offset, tie)
    found = solve([symmetry], squares, granularity=granularity)
    layer = granularity == "layer"
    expected = true_minimum(squares, size, offset, layer, tie)
    assert found.converged
    assert found.l2_after == pytest.approx(expected, rel=1e-7)
    # the reported penalty is the penalty at the reported scales
    scales = found.scales["hidden"]
    if layer:
        assert len(set(scales.tolist())) == 1
    assert true_penalty(squares, scales, offset) == pytest.approx(found.l2_after, rel=1e-9)


def true_penalty(squares: dict[str, np.ndarray], scales: Vector, offset: int) -> float:
    q = {name: value.astype(np.float64) for name, value in squares.items()}
    size = scales.size
    rows, columns = np.ones(q["b"].shape[0]), np.ones(q["b"].shape[1])
    rows[offset : offset + size] = scales
    columns[offset : offset + size] = scales
    total = np.sum(q["a"] * scales[:, None] ** 2)
    total += np.sum(q["b"] * (rows[:, None] / columns[None, :]) ** 2)
    total += np.sum(q["c"] / scales[None, :] ** 2)
    return float(total)


def test_the_diagonal_does_not_move_the_optimum() -> None:
    """Layer-wise the tensor scaled on both axes keeps its whole penalty: the optimum is
    the one of the other two tensors, whatever that tensor holds."""
    squares = squares_of(5, seed=3)
    small = solve([residual_symmetry(5)], squares, granularity="layer")
    squares["b"] = squares["b"] * 1000
    large = solve([residual_symmetry(5)], squares, granularity="layer")
    np.testing.assert_allclose(small.scales["hidden"], large.scales["hidden"], rtol=1e-6)
    a, c = (
        float(squares["a"].astype(np.float64).sum()),
        float(squares["c"].astype(np.float64).sum()),
    )
    assert small.scales["hidden"][0] == pytest.approx((c / a) ** 0.25, rel=1e-6)


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_streamed_and_held_squares_give_the_same_optimum(
    tmp_path: Path, granularity: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The streamed squares gather the diagonal blocks and the spans' totals in passes of
    their own: the same numbers as the held matrices give."""
    monkeypatch.setattr(streamed, "HELD_BYTES", 0)
    generator = torch.Generator().manual_seed(5)
    state = {
        "a": torch.randn(7, 4, generator=generator) * torch.linspace(0.2, 4, 7)[:, None],
        "b": torch.randn(10, 10, 3, generator=generator),  # a conv: squares sum the kernel
        "c": torch.randn(2, 7, generator=generator) * 0.1,
    }
    path = write_safetensors(tmp_path / "m.safetensors", state)
    symmetry = residual_symmetry(7, offset=2)
    with open_checkpoint(path) as checkpoint:
        held = axis_squares(checkpoint, list(state))
        streaming = {name: StreamedSquares(checkpoint, name, 2) for name in state}
        expected = solve([symmetry], held, granularity=granularity)
        found = solve([symmetry], streaming, granularity=granularity)
    assert found.sweeps == expected.sweeps
    assert found.l2_after == pytest.approx(expected.l2_after, rel=1e-7)
    np.testing.assert_allclose(found.scales["hidden"], expected.scales["hidden"], rtol=1e-5)
    assert expected.l2_after == pytest.approx(
        true_minimum(held, 7, 2, granularity == "layer"), rel=1e-7
    )


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_rounding_never_raises_the_penalty(granularity: str) -> None:
    for seed in range(8):
        squares = squares_of(6, seed)
        symmetry = residual_symmetry(6)
        solution = solve([symmetry], squares, granularity=granularity)
        rounded = round_to_powers_of_two(solution, [symmetry], squares)
        scales = rounded.scales["hidden"]
        assert np.all(np.frexp(scales)[0] == 0.5)  # powers of two
        measured = true_penalty(squares, scales, 0)
        assert rounded.l2_after == pytest.approx(measured, rel=1e-9)
        assert measured <= solution.l2_before * (1 + 1e-12)
        nearest = np.exp2(np.round(np.log2(solution.scales["hidden"])))
        assert measured <= true_penalty(squares, nearest, 0) * (1 + 1e-12)


def test_the_same_exponent_on_both_axes_is_refused() -> None:
    symmetry = Symmetry("s", 3, (Member("b", 0, 1), Member("b", 1, 1), Member("c", 1, -1)))
    with pytest.raises(StructureError, match="same exponent on rows and columns"):
        coupling(symmetry, list(symmetry.members))


positive = st.floats(0.0, 1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(positive, positive, positive, positive), min_size=1, max_size=8))
def test_the_step_minimises_the_bound(terms: list[tuple[float, float, float, float]]) -> None:
    alpha, beta, rho, kappa = (np.array(column) for column in zip(*terms, strict=True))
    x, live = majorised_step(alpha, beta, rho, kappa)
    assert np.array_equal(live, (alpha + rho > 0) & (beta + kappa > 0))
    assert np.all(x[~live] == 1.0)
    near = np.stack([x, x * (1 + 1e-6), x / (1 + 1e-6), np.ones_like(x)])
    costs = majorised_costs(near, alpha, beta, rho, kappa)
    assert np.all(costs[0][live] <= costs[1:, live].min(axis=0) * (1 + 1e-12))
