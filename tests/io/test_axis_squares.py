"""Axis squares (what the channel solver needs) from the statistics pass: equal to a float64
reference for every dtype, shape, chunking and choice of axes kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import write_safetensors
from weissi_cli import stats
from weissi_cli.io import open_checkpoint
from weissi_cli.stats import axis_squares, compute_stats, compute_stats_and_squares

SHAPES = [(7,), (33, 17), (300, 5), (3, 70000), (16, 8, 3, 3), (1, 9)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
KEEPS = [(True, True), (True, False), (False, True), (False, False)]


def reference(value: torch.Tensor, keep: tuple[bool, bool]) -> np.ndarray:
    array = value.double().numpy()
    matrix = array.reshape(array.shape[0], array.shape[1] if array.ndim > 1 else 1, -1)
    squares = (matrix**2).sum(axis=2)
    if not keep[0]:
        squares = squares.sum(axis=0, keepdims=True)
    if not keep[1]:
        squares = squares.sum(axis=1, keepdims=True)
    return squares


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    generator = torch.Generator().manual_seed(0)
    state = {
        f"t{i}.{str(dtype).removeprefix('torch.')}": (
            torch.randn(shape, generator=generator) * 3.0 ** (i - 2)
        ).to(dtype)
        for i, shape in enumerate(SHAPES)
        for dtype in DTYPES
    }
    return write_safetensors(tmp_path_factory.mktemp("squares") / "m.safetensors", state)


@pytest.mark.parametrize("keep", KEEPS)
@pytest.mark.parametrize("chunk", [1 << 10, 1 << 19])
@pytest.mark.parametrize("threads", [1, 2])
def test_squares_match_a_float64_reference(
    checkpoint_path: Path, keep: tuple[bool, bool], chunk: int, threads: int
) -> None:
    from safetensors.torch import load_file

    state = load_file(str(checkpoint_path))
    with open_checkpoint(checkpoint_path) as checkpoint:
        stats, squares = compute_stats_and_squares(
            checkpoint, threads=threads, chunk_elements=chunk, squared=dict.fromkeys(state, keep)
        )
        plain = compute_stats(checkpoint, threads=threads, chunk_elements=chunk)
    for name, value in state.items():
        expected = reference(value, keep)
        assert squares[name].shape == expected.shape, name
        np.testing.assert_allclose(squares[name], expected, rtol=2e-6, err_msg=name)
        assert stats[name].fro_norm == pytest.approx(plain[name].fro_norm, rel=1e-7)


def test_axis_squares_defaults_to_both_axes(checkpoint_path: Path) -> None:
    with open_checkpoint(checkpoint_path) as checkpoint:
        squares = axis_squares(checkpoint, ["t1.float32", "t4.bfloat16"])
    assert squares["t1.float32"].shape == (33, 17)
    assert squares["t4.bfloat16"].shape == (16, 8)  # a conv's kernel summed


def test_non_finite_values_do_not_poison_the_squares(tmp_path: Path) -> None:
    value = torch.ones(4, 300)
    value[1, 5] = float("inf")
    value[2, 7] = float("nan")
    path = write_safetensors(tmp_path / "bad.safetensors", {"w": value})
    with open_checkpoint(path) as checkpoint:
        stats, squares = compute_stats_and_squares(checkpoint, squared={"w": (True, False)})
    assert stats["w"].nonfinite == 2
    assert squares["w"][:, 0].tolist() == [300.0, 299.0, 299.0, 300.0]


def test_squares_summed_over_rows_do_not_depend_on_which_thread_finishes_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks' sums are added in row order: two threads over many small chunks give the
    same bits as one thread, every time (in completion order they differed in the last
    bits, and so did the scales solved from them)."""
    generator = torch.Generator().manual_seed(3)
    state = {
        "wide": torch.randn(4000, 97, generator=generator) * 0.02,
        "tall": torch.randn(3000, 61, generator=generator).to(torch.bfloat16),
    }
    path = tmp_path / "model.safetensors"
    write_safetensors(path, state)
    keep = {"wide": (False, True), "tall": (False, False)}
    monkeypatch.setattr(stats, "THREADS_ABOVE_BYTES", 0)  # two threads however small
    with open_checkpoint(path) as checkpoint:
        alone = compute_stats_and_squares(
            checkpoint, list(keep), threads=1, chunk_elements=1000, squared=keep
        )[1]
        for _ in range(20):
            both = compute_stats_and_squares(
                checkpoint, list(keep), threads=2, chunk_elements=1000, squared=keep
            )[1]
            for name in keep:
                assert both[name].tobytes() == alone[name].tobytes(), name
    for name, value in state.items():
        np.testing.assert_allclose(alone[name], reference(value, keep[name]), rtol=1e-6)


@pytest.mark.parametrize("keep", KEEPS)
@pytest.mark.parametrize("chunk", [1 << 10, 1 << 21])
@pytest.mark.parametrize("threads", [1, 2])
def test_checks_pass_gives_the_same_squares_bit_for_bit(
    checkpoint_path: Path, keep: tuple[bool, bool], chunk: int, threads: int
) -> None:
    """check's pass (statistics, dead units and squares together) and the statistics pass
    give the same squares to the last bit, so both routes solve to the same report."""
    from weissi_cli.stats_details import compute_stats_and_details

    with open_checkpoint(checkpoint_path) as checkpoint:
        names = [info.name for info in checkpoint.tensors if info.is_supported_float]
        wanted = dict.fromkeys(names, keep)
        _, expected = compute_stats_and_squares(
            checkpoint, threads=threads, chunk_elements=chunk, squared=wanted
        )
        found_stats, details, found = compute_stats_and_details(
            checkpoint, threads=threads, chunk_elements=chunk, squared=wanted
        )
        plain_stats, plain_details, nothing = compute_stats_and_details(
            checkpoint, threads=threads, chunk_elements=chunk
        )
    assert nothing == {}
    assert found.keys() == expected.keys() == set(names)
    for name in names:
        assert found[name].tobytes() == expected[name].tobytes(), name
        assert details[name] == plain_details[name], name
        assert found_stats[name].nonfinite == plain_stats[name].nonfinite
        assert found_stats[name].fro_norm == pytest.approx(plain_stats[name].fro_norm, rel=1e-6)
