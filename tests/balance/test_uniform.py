"""Layer-wise solving with the squares summed along axes that take one factor throughout: the
same optimum as from the whole matrices, and no pass over a large tensor while solving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import weissi_cli.api.symmetries
from tests.exported_models import _mlp, export
from weissi_cli import api
from weissi_cli.balance import streamed
from weissi_cli.balance.channelwise import round_to_powers_of_two, solve
from weissi_cli.balance.uniform import UniformSquares, uniform_axes
from weissi_cli.ir import Member, Symmetry


def _summed(matrix: np.ndarray, rows: bool, columns: bool) -> np.ndarray:
    summed = matrix.sum(axis=0, keepdims=True) if rows else matrix
    return summed.sum(axis=1, keepdims=True) if columns else summed


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 9),
    st.integers(1, 9),
    st.booleans(),
    st.booleans(),
    st.integers(0, 2**32 - 1),
)
def test_products_under_one_factor_per_uniform_axis_keep_their_sums(
    rows: int, columns: int, rows_uniform: bool, columns_uniform: bool, seed: int
) -> None:
    generator = np.random.default_rng(seed)
    matrix = generator.random((rows, columns))
    squares = UniformSquares(_summed(matrix, rows_uniform, columns_uniform), (rows, columns))
    row_factors = np.full(rows, 2.5) if rows_uniform else generator.random(rows)
    column_factors = np.full(columns, 0.75) if columns_uniform else generator.random(columns)
    products = squares.matvec(column_factors)
    expected = matrix @ column_factors
    assert products.shape == (rows,)
    # what the solver takes from a product: its sum under the other axis's factors
    assert row_factors @ products == pytest.approx(row_factors @ expected, rel=1e-12)
    if not rows_uniform:
        np.testing.assert_allclose(products, expected, rtol=1e-12)
    products = squares.rmatvec(row_factors)
    expected = row_factors @ matrix
    assert products.shape == (columns,)
    assert products @ column_factors == pytest.approx(expected @ column_factors, rel=1e-12)
    if not columns_uniform:
        np.testing.assert_allclose(products, expected, rtol=1e-12)
    both = squares.matvec_rmatvec(column_factors, lambda first, found: row_factors)
    np.testing.assert_array_equal(both[0], squares.matvec(column_factors))
    np.testing.assert_array_equal(both[1], squares.rmatvec(row_factors))


def test_factors_that_differ_along_a_uniform_axis_are_refused() -> None:
    squares = UniformSquares(np.ones((3, 1)), (3, 4))
    with pytest.raises(ValueError, match="factors differ"):
        squares.matvec(np.array([1.0, 2.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="for axis 1"):
        squares.matvec(np.ones(3))


def _chain_symmetries(widths: tuple[int, ...]) -> list[Symmetry]:
    """Linear layers w0 ... wn in torch layout [out, in], a symmetry per hidden width."""
    return [
        Symmetry(
            f"h{index}",
            width,
            (Member(f"w{index}", 0, 1), Member(f"w{index + 1}", 1, -1)),
            origin="graph",
        )
        for index, width in enumerate(widths[1:-1])
    ]


def test_uniform_axes_are_those_every_moving_member_covers_whole() -> None:
    shapes = {"a": (6, 4), "b": (3, 6), "c": (2, 3), "d": (5, 4)}
    symmetries = [
        Symmetry("whole", 6, (Member("a", 0, 1), Member("b", 1, -1))),
        # a concatenation: c's rows are the first half of a 4-wide... axis of d: not whole
        Symmetry("part", 2, (Member("c", 0, 1), Member("d", 1, -1, offset=2))),
        # unbounded (no penalised mass divided): never moves, so covers nothing
        Symmetry("loose", 3, (Member("b", 0, 1),)),
    ]
    plan = {"a": (True, False), "b": (False, True), "c": (True, False), "d": (False, True)}
    found = uniform_axes(symmetries, plan, shapes)
    assert found == {
        "a": (True, False),
        "b": (False, True),
        "c": (True, False),
        "d": (False, False),
    }
    # a second member on the same axis that covers part of it makes the axis non-uniform
    symmetries.append(Symmetry("half", 3, (Member("a", 0, -1, offset=3), Member("c", 1, 1))))
    assert uniform_axes(symmetries, plan, shapes)["a"] == (False, False)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.integers(1, 12), min_size=3, max_size=6).map(tuple),
    st.integers(0, 2**32 - 1),
)
def test_the_layer_wise_optimum_is_the_one_from_whole_matrices(
    widths: tuple[int, ...], seed: int
) -> None:
    generator = np.random.default_rng(seed)
    symmetries = _chain_symmetries(widths)
    matrices = {
        f"w{index}": (generator.standard_normal((fan_out, fan_in)) * 4.0 ** generator.random()) ** 2
        for index, (fan_in, fan_out) in enumerate(zip(widths, widths[1:], strict=False))
    }
    plan = dict.fromkeys(matrices, (True, True))
    shapes = {name: matrix.shape for name, matrix in matrices.items()}
    uniform = uniform_axes(symmetries, plan, shapes)
    assert uniform["w0"] == (True, False)  # its inputs never move
    held = {name: matrix.astype(np.float32) for name, matrix in matrices.items()}

    def summed() -> dict[str, UniformSquares]:
        return {
            name: UniformSquares(_summed(matrix.astype(np.float64), *uniform[name]), matrix.shape)
            for name, matrix in held.items()
        }

    expected = solve(symmetries, held, "layer")
    found = solve(symmetries, summed(), "layer")
    assert found.l2_before == pytest.approx(expected.l2_before, rel=1e-6)
    assert found.l2_after == pytest.approx(expected.l2_after, rel=1e-6)
    for key, scales in expected.scales.items():
        np.testing.assert_allclose(found.scales[key], scales, rtol=1e-5)
    pow2 = round_to_powers_of_two(expected, symmetries, held)
    found_pow2 = round_to_powers_of_two(found, symmetries, summed())
    for key, scales in pow2.scales.items():
        np.testing.assert_array_equal(found_pow2.scales[key], scales)


class _DeepMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        model, _ = _mlp((24, 96, 96, 96, 10), nn.ReLU, seed=7)
        with torch.no_grad():  # the same function, with the weight scale moved into layer 0
            model[0].weight.mul_(8.0)
            model[0].bias.mul_(8.0)
            model[2].weight.div_(8.0)
        self.net = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_a_deep_program_is_solved_layer_wise_without_streaming(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, streamed_passes: list[str]
) -> None:
    """Every matrix of an exported ReLU MLP would be streamed (no room to hold one); layer-
    wise, the solver reads none of them, finds the optimum the whole matrices give, and
    the rebalanced program computes what the original does."""
    torch.set_num_threads(1)
    model = _DeepMLP().eval()
    inputs = torch.randn(8, 24, generator=torch.Generator().manual_seed(3))
    path = export(model, (inputs,), tmp_path / "mlp.pt2")
    passes = streamed_passes
    report = api.inspect_checkpoint(path).to_dict()
    assert passes == []
    group = report["symmetries"]
    assert len(group["symmetries"]) == 3  # the three hidden layers
    monkeypatch.setattr(weissi_cli.api.symmetries, "_uniform", lambda *args: {})
    whole = api.inspect_checkpoint(path).to_dict()["symmetries"]
    assert passes  # the whole matrices were streamed
    assert group["min_l2_penalty"] == pytest.approx(whole["min_l2_penalty"], rel=1e-6)
    for mine, theirs in zip(group["symmetries"], whole["symmetries"], strict=True):
        assert mine["scale_min"] == pytest.approx(theirs["scale_min"], rel=1e-5)
    monkeypatch.undo()
    monkeypatch.setattr(streamed, "HELD_BYTES", 0)
    output = tmp_path / "balanced.pt2"
    result = api.rebalance_checkpoint(path, output)
    assert result.written
    assert result.verification.level == "real_network"
    assert result.group is not None
    assert result.group.l2_after is not None
    assert result.group.l2_after < 0.5 * result.group.l2_penalty
    rewritten = torch.export.load(output).module()
    loaded = torch.export.load(path).module()
    probe = torch.randn(8, 24, generator=torch.Generator().manual_seed(5)) * 3
    with torch.no_grad():
        torch.testing.assert_close(rewritten(probe), loaded(probe), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(loaded(probe), model(probe), rtol=1e-6, atol=1e-6)
