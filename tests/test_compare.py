"""diff's comparison in the C kernel equals its float64 numpy route: block by block, read
from files in pieces, and in whole reports on rebalanced pairs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.hf_models import build, save
from weissi_cli import compare, kernel
from weissi_cli.api.diff import diff_checkpoints
from weissi_cli.api.rebalance import rebalance_checkpoint
from weissi_cli.scales import TensorScale

needs_kernel = pytest.mark.skipif(not kernel.AVAILABLE, reason="the C kernel was not built")
CODES = {"float32": 0, "bfloat16": 1}
special = st.sampled_from([0.0, -0.0, np.inf, -np.inf, np.nan, 3e38, -2e-38, 1e-42, 1e30])


def raw_of(values: np.ndarray, dtype: str) -> np.ndarray:
    as32 = values.astype(np.float32)
    if dtype == "float32":
        return as32
    return (as32.view(np.uint32) >> 16).astype(np.uint16)


@st.composite
def scales(draw: st.DrawFn, shape: tuple[int, int]) -> TensorScale:
    """A scale as the solvers make them: a scalar, and vectors along rows and/or columns
    in either order."""
    factor = st.floats(2.0**-20, 2.0**20)
    scalar = draw(st.sampled_from([1.0, 0.5, draw(factor)]))
    axes = draw(st.sampled_from([(), (0,), (1,), (0, 1), (1, 0)]))
    vectors = {}
    for axis in axes:
        seed = draw(st.integers(0, 2**16))
        vectors[axis] = np.exp(np.random.default_rng(seed).uniform(-8, 8, shape[axis]))
    return TensorScale(shape, scalar, vectors)


def reference(
    raw_a: np.ndarray,
    raw_b: np.ndarray,
    dtypes: tuple[str, str],
    scale_a: TensorScale,
    scale_b: TensorScale,
    block_rows: int,
) -> tuple[float, float, float, float, bool]:
    """The numpy route over blocks of `block_rows` rows."""
    rows, width = scale_a.shape
    same_scale = compare.same_factors(scale_a, scale_b)
    totals = compare.Totals()
    for row in range(0, rows, block_rows):
        count = min(block_rows, rows - row)
        span = slice(row * width, (row + count) * width)
        found = compare.compare_block(
            raw_a[span],
            raw_b[span],
            *dtypes,
            scale_a.rows(row, count),
            scale_b.rows(row, count),
            same_scale,
        )
        if found is not None:
            totals.add(found)
    return (
        totals.difference,
        totals.largest,
        totals.canonical,
        totals.canonical_largest,
        totals.bitwise,
    )


def in_kernel(
    raw_a: np.ndarray,
    raw_b: np.ndarray,
    dtypes: tuple[str, str],
    scale_a: TensorScale,
    scale_b: TensorScale,
    block_rows: int,
) -> Any:
    assert kernel.compiled is not None
    factors_a, factors_b = compare.kernel_factors(scale_a), compare.kernel_factors(scale_b)
    assert factors_a is not None
    assert factors_b is not None
    return kernel.compiled.compare_chunk(
        raw_a,
        CODES[dtypes[0]],
        *factors_a,
        raw_b,
        CODES[dtypes[1]],
        *factors_b,
        raw_a.size,
        scale_a.shape[1],
        block_rows,
        compare.same_factors(scale_a, scale_b),
    )


def same(first: tuple[Any, ...], second: tuple[Any, ...]) -> bool:
    """Equal, NaN for NaN."""
    return len(first) == len(second) and all(
        x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y))
        for x, y in zip(first, second, strict=True)
    )


@st.composite
def pairs(
    draw: st.DrawFn,
) -> tuple[np.ndarray, np.ndarray, tuple[str, str], TensorScale, TensorScale, int]:
    rows, width = draw(st.integers(1, 40)), draw(st.sampled_from([1, 3, 8, 37, 64]))
    dtypes = (draw(st.sampled_from(list(CODES))), draw(st.sampled_from(list(CODES))))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    values = rng.standard_normal(rows * width) * draw(st.sampled_from([1.0, 1e-30, 1e30]))
    scale_a = draw(scales((rows, width)))
    kind = draw(st.sampled_from(["same values", "rescaled", "changed"]))
    scale_b = scale_a if draw(st.booleans()) else draw(scales((rows, width)))
    other = values.copy()
    if kind == "rescaled":
        other *= np.asarray(scale_a.whole()) / np.asarray(scale_b.whole())
    elif kind == "changed":
        other[draw(st.integers(0, other.size - 1))] += draw(st.floats(-1, 1))
    raw_a, raw_b = raw_of(values, dtypes[0]), raw_of(other, dtypes[1])
    for side in (raw_a, raw_b):
        for index, value in draw(st.lists(st.tuples(st.integers(0, 10**6), special), max_size=3)):
            side[index % side.size] = raw_of(np.array([value]), dtypes[side is raw_b])[0]
    return raw_a, raw_b, dtypes, scale_a, scale_b, draw(st.integers(1, 12))


@needs_kernel
@settings(max_examples=300, deadline=None)
@given(case=pairs())
def test_the_kernel_comparison_equals_numpys(case: Any) -> None:
    assert same(in_kernel(*case), reference(*case))


@needs_kernel
@pytest.mark.parametrize("differs_at", [None, 0, 150, 399])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_reading_both_files_in_pieces_equals_the_comparison_in_memory(
    tmp_path: Path, differs_at: int | None, dtype: str
) -> None:
    """Blocks of 200 rows of 1000 values are several 256 KiB pieces: under the same
    factors, a block whose first pieces have the same bytes is compared from its start."""
    rng = np.random.default_rng(5)
    rows, width = 400, 1000
    raw_a = raw_of(rng.standard_normal(rows * width), dtype)
    raw_b = raw_a.copy()
    if differs_at is not None:
        raw_b[differs_at * width + 3] = raw_of(np.array([7.0]), dtype)[0]
    paths = [tmp_path / "a", tmp_path / "b"]
    for path, raw in zip(paths, (raw_a, raw_b), strict=True):
        path.write_bytes(b"x" * 24 + raw.tobytes())
    scale = TensorScale((rows, width), 0.5, {0: rng.uniform(0.5, 2, rows)})
    for scale_b in (scale, TensorScale((rows, width), 2.0)):
        expected = reference(raw_a, raw_b, (dtype, dtype), scale, scale_b, 200)
        assert same(in_kernel(raw_a, raw_b, (dtype, dtype), scale, scale_b, 200), expected)
        assert kernel.compiled is not None
        scratch = [bytearray(1 << 20), bytearray(1 << 20)]
        with open(paths[0], "rb") as first, open(paths[1], "rb") as second:
            found = kernel.compiled.compare_range(
                first.fileno(),
                24,
                scratch[0],
                CODES[dtype],
                *compare.kernel_factors(scale) or (),
                second.fileno(),
                24,
                scratch[1],
                CODES[dtype],
                *compare.kernel_factors(scale_b) or (),
                rows * width,
                width,
                200,
                compare.same_factors(scale, scale_b),
            )
        assert same(found, expected)


@needs_kernel
def test_a_file_ending_early_is_an_eof_error(tmp_path: Path) -> None:
    path = tmp_path / "short"
    path.write_bytes(b"\0" * 4000)
    assert kernel.compiled is not None
    with open(path, "rb") as handle, pytest.raises(EOFError):
        kernel.compiled.compare_range(
            *(handle.fileno(), 0, bytearray(1 << 20), 0, 1.0, b"", b""),
            *(handle.fileno(), 0, bytearray(1 << 20), 0, 1.0, b"", b""),
            *(2000, 1000, 2, False),
        )


@given(shape=st.sampled_from([(3, 4), (5,), (2, 3, 4)]), data=st.data())
def test_kernel_factors_are_the_products_numpy_rounds(shape: tuple[int, ...], data: Any) -> None:
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    axes = data.draw(st.permutations(range(len(shape))))[: data.draw(st.integers(0, len(shape)))]
    vectors = {axis: np.exp(rng.uniform(-5, 5, shape[axis])) for axis in axes}
    scale = TensorScale(shape, float(np.exp(rng.uniform(-5, 5))), vectors)
    found = compare.kernel_factors(scale)
    others = [axis for axis in axes if axis != 0]
    if 0 in axes and len(others) > 1 and axes[-1] != 0:
        assert found is None  # no single product reproduces it: numpy's route
        return
    assert found is not None
    scalar, rows, pattern = found
    width = scale.row_width
    row_factors = rows if rows.size else np.full(shape[0], scalar)
    factors = row_factors[:, None] * (pattern if pattern.size else np.ones(width))
    assert np.array_equal(factors.reshape(-1), np.broadcast_to(scale.whole(), factors.size))


@pytest.mark.parametrize("granularity", ["layer", "channel"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_diff_of_a_rebalanced_pair_is_the_same_in_the_kernel_and_in_numpy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, granularity: str, dtype: str
) -> None:
    source = save(build("llama", dtype), tmp_path / "in")
    rebalance_checkpoint(source, tmp_path / "out", granularity=granularity)
    reports = []
    for route in ("kernel", "numpy"):
        if route == "numpy":  # every backend choice now falls to numpy
            monkeypatch.setattr(kernel, "compiled", None)
        pair = diff_checkpoints(source, tmp_path / "out", granularity=granularity).to_dict()
        itself = diff_checkpoints(source, source, granularity=granularity).to_dict()
        reports.append((pair, itself))
    assert reports[0] == reports[1]
    assert reports[0][0]["verdict"] == "equal up to scale shift"
