"""`verify`: probes catch wrong rewrites, pass right ones, and stay finite in deep chains."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.helpers import mlp_state, write_safetensors
from weissi_cli import kernel
from weissi_cli.balance.analysis import analyse_chain
from weissi_cli.io import open_checkpoint
from weissi_cli.scales import TensorScale, shift_scales
from weissi_cli.stats import compute_stats
from weissi_cli.structure import discover
from weissi_cli.verify import verify_chain


def rewritten_copy(  # type: ignore[no-untyped-def]
    tmp_path: Path, state: dict[str, torch.Tensor], corrupt: str | None = None, by: float = 1.01
):
    """Write `state`, rebalance it by hand (optionally corrupting one tensor), open both."""
    source = write_safetensors(tmp_path / "a.safetensors", state)
    with open_checkpoint(source) as checkpoint:
        chain = discover(checkpoint).chains[0]
        shift = analyse_chain(chain, compute_stats(checkpoint)).optimal
    assert shift is not None
    scales = shift_scales(chain, shift, {n: tuple(t.shape) for n, t in state.items()})
    new = OrderedDict((n, t * scales[n].scalar if n in scales else t) for n, t in state.items())
    if corrupt is not None:
        new[corrupt] = new[corrupt] * by
    target = write_safetensors(tmp_path / "b.safetensors", new)
    return open_checkpoint(source), open_checkpoint(target), chain, scales


def test_a_correct_rewrite_passes_and_is_measured(tmp_path: Path) -> None:
    state = mlp_state(sizes=(8, 16, 16, 4), dtype=torch.float32)
    original, rewritten, chain, scales = rewritten_copy(tmp_path, state)
    result = verify_chain(original, rewritten, chain, scales)
    assert result.passed
    assert result.method == "probe"
    assert set(result.after) == set(chain.tensor_names())
    expected = float((state["net.0.weight"].double() * scales["net.0.weight"].scalar).norm())
    assert abs(result.after["net.0.weight"].fro_norm / expected - 1) < 1e-6


def test_a_wrong_bias_scale_fails(tmp_path: Path) -> None:
    state = mlp_state(sizes=(8, 16, 16, 4), dtype=torch.float32)
    original, rewritten, chain, scales = rewritten_copy(tmp_path, state, corrupt="net.2.bias")
    result = verify_chain(original, rewritten, chain, scales)
    assert not result.passed
    assert result.max_abs_diff > 0


def test_conv_chain_gets_a_structural_check_that_catches_a_wrong_tensor(tmp_path: Path) -> None:
    state = OrderedDict()
    state["c1.weight"] = torch.randn(4, 2, 3, 3) * 5
    state["c1.bias"] = torch.randn(4)
    state["c2.weight"] = torch.randn(6, 4, 3, 3)
    state["fc.weight"] = torch.randn(3, 6 * 9)
    original, rewritten, chain, scales = rewritten_copy(tmp_path, state)
    good = verify_chain(original, rewritten, chain, scales)
    assert good.method == "structural"
    assert good.passed
    (tmp_path / "bad").mkdir()
    original, rewritten, chain, scales = rewritten_copy(
        tmp_path / "bad", state, corrupt="c2.weight"
    )
    bad = verify_chain(original, rewritten, chain, scales)
    assert not bad.passed
    assert "c2.weight" in bad.detail


def test_deep_wide_chain_bound_stays_finite(tmp_path: Path) -> None:
    """|W| products grow like sqrt(width) per layer: in float32 the bound overflowed."""
    sizes = (256,) * 41
    state = mlp_state(sizes=sizes, dtype=torch.float32, bias=False, step=1)
    for index, name in enumerate(state):
        state[name] = state[name] * (2.0 ** (index % 3)) / 16  # keep activations finite
    original, rewritten, chain, scales = rewritten_copy(tmp_path, state)
    result = verify_chain(original, rewritten, chain, scales)
    assert result.passed, result.detail
    assert "not finite" not in result.detail


def test_float64_checks_are_made_in_float64(tmp_path: Path) -> None:
    """A 1e-12 relative error is invisible in float32 arithmetic but not in float64."""
    state = mlp_state(sizes=(5, 7, 3), dtype=torch.float64)
    original, rewritten, chain, scales = rewritten_copy(
        tmp_path, state, corrupt="net.2.weight", by=1 + 1e-12
    )
    result = verify_chain(original, rewritten, chain, scales)
    assert not result.passed
    assert "net.2.weight" in result.detail


@pytest.mark.parametrize(
    ("tensor", "factor"),
    [("net.2.weight", 1.05), ("net.2.weight", -1.0), ("net.4.bias", 2.0), ("net.6.weight", 1.0001)],
)
def test_wide_deep_chains_catch_small_and_large_corruptions(
    tmp_path: Path, tensor: str, factor: float
) -> None:
    """On wide layers a worst-case forward bound is far too loose to catch these."""
    state = mlp_state(sizes=(512,) * 7, dtype=torch.float32)
    original, rewritten, chain, scales = rewritten_copy(tmp_path, state, corrupt=tensor, by=factor)
    result = verify_chain(original, rewritten, chain, scales)
    assert not result.passed
    assert tensor in result.detail


def test_wide_deep_chain_rewritten_correctly_passes(tmp_path: Path) -> None:
    state = mlp_state(sizes=(512,) * 7, dtype=torch.float32)
    for index, name in enumerate(n for n in state if n.endswith("weight")):
        state[name] = state[name] * 1.5**index
    original, rewritten, chain, scales = rewritten_copy(tmp_path, state)
    result = verify_chain(original, rewritten, chain, scales)
    assert result.passed, result.detail


def test_rows_wider_than_a_block_are_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from weissi_cli import chunking

    monkeypatch.setattr(chunking, "NUMPY_ELEMENTS", 1024)
    state = mlp_state(sizes=(3000, 4, 2), dtype=torch.float32)
    state["net.0.weight"] = state["net.0.weight"] * 8
    original, rewritten, chain, scales = rewritten_copy(tmp_path, state)
    result = verify_chain(original, rewritten, chain, scales)
    assert result.passed, result.detail


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("power_of_two", [True, False])
def test_the_kernel_element_check_counts_what_numpy_counts(
    dtype: str, power_of_two: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """_ElementCheck.check_block: the C kernel and the numpy route fail the same values."""
    from weissi_cli.io.dtypes import decode, encode
    from weissi_cli.scales import TensorScale
    from weissi_cli.verify_pairs import Block
    from weissi_cli.verify_values import ElementCheck

    if kernel.compiled is None:
        pytest.skip("the C kernel was not built")
    rng = np.random.default_rng(3)
    rows, width = 40, 96
    old = decode(encode(rng.standard_normal(rows * width), dtype), dtype).astype(np.float32)
    row_vector = 2.0 ** rng.integers(-2, 3, rows) * (1.0 if power_of_two else 1.37)
    column_vector = 2.0 ** rng.integers(-2, 3, width)
    scale = TensorScale((rows, width), 0.5, {0: row_vector, 1: column_vector})
    product = old.astype(np.float64) * scale.whole()
    new = decode(encode(product, dtype), dtype).astype(np.float32)
    new[[5, 700, 3000]] *= np.float32(1.01)
    new[1234] = np.nan
    block = Block("w", 0, rows, width)
    results = []
    for compiled in (kernel.compiled, None):
        monkeypatch.setattr(kernel, "compiled", compiled)
        check = ElementCheck(np.float32)
        check.check_block("w", dtype, scale, block, old, new)
        results.append((check.checked, check.failures))
    assert results[0] == results[1] == (rows * width, {"w": 4})


def test_levels_say_what_was_run() -> None:
    from weissi_cli.verification import ChainVerification, Verification, combined_level

    def result(level: Any, passed: bool = True) -> ChainVerification:
        return ChainVerification("x", "m", passed, None, None, None, "", level=level)

    probe, values = result("declared_structure"), result("values_only")
    real, approximate = result("real_network"), result("approximate")
    assert combined_level([probe]) == "declared_structure"
    assert combined_level([probe, values]) == "values_only"  # the weakest part
    assert combined_level([values, real]) == "real_network"  # the run covers everything
    assert combined_level([real, approximate]) == "approximate"
    assert combined_level([]) == "values_only"
    verdict = Verification.combine([probe, real], caveats=("check this",))
    assert (verdict.level, verdict.caveats, verdict.passed) == (
        "real_network",
        ("check this",),
        True,
    )
    assert not Verification.combine([result("real_network", passed=False)]).passed


def test_a_float16_chain_is_probed_in_float16_arithmetic(tmp_path: Path) -> None:
    """Hidden activations below 2^-14: the probes reach them and report the change a
    power-of-two shift makes there, with the caveat, instead of "bit-identical"."""
    state = mlp_state(sizes=(16, 24, 24, 4), dtype=torch.float64)
    state["net.0.weight"] *= 2.0**-6
    state["net.0.bias"] *= 2.0**-6
    state = OrderedDict((n, t.half()) for n, t in state.items())
    source = write_safetensors(tmp_path / "a.safetensors", state)
    with open_checkpoint(source) as checkpoint:
        chain = discover(checkpoint).chains[0]
    factors = {"net.0.weight": 2.0**-6, "net.0.bias": 2.0**-6, "net.2.weight": 2.0**6}
    new = OrderedDict((n, t * factors.get(n, 1.0)) for n, t in state.items())
    target = write_safetensors(tmp_path / "b.safetensors", new)
    scales = {n: TensorScale(tuple(state[n].shape), scalar=f) for n, f in factors.items()}
    with open_checkpoint(source) as original, open_checkpoint(target) as rewritten:
        result = verify_chain(original, rewritten, chain, scales)
    assert result.passed
    assert result.level == "declared_structure"
    assert "float16 arithmetic" in result.detail
    assert "subnormal" in result.detail
    assert result.probes == 48
    assert result.bit_identical is False
    assert result.max_abs_diff
    assert "--scales real" in result.caveat
    assert "--hold-activations" in result.caveat


def test_a_torch_pickle_with_large_tensors_is_measured_from_its_values(tmp_path: Path) -> None:
    """A reader may hand back its own memory instead of filling the buffer it is given
    (a torch pickle does): the measurement takes the values it returned."""
    from tests.helpers import write_torch

    state = mlp_state(sizes=(300, 300, 4), dtype=torch.float32)
    path = write_torch(tmp_path / "a.pt", dict(state))
    with open_checkpoint(path) as checkpoint:
        chain = discover(checkpoint).chains[0]
        shapes = {n: tuple(t.shape) for n, t in state.items()}
        result = verify_chain(
            checkpoint, checkpoint, chain, {n: TensorScale(s) for n, s in shapes.items()}
        )
    expected = float(state["net.0.weight"].double().norm())
    assert result.after["net.0.weight"].fro_norm == pytest.approx(expected, rel=1e-9)
