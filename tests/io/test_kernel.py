"""The compiled statistics kernel agrees with the numpy kernel on any chunk."""

from __future__ import annotations

import math
import mmap
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import write_safetensors
from weissi_cli import kernel
from weissi_cli.io import open_checkpoint
from weissi_cli.numpy_reduce import reduce_float64
from weissi_cli.stats_details import compute_stats_and_details

pytestmark = pytest.mark.skipif(not kernel.AVAILABLE, reason="the C kernel was not built")
DUMMY = bytearray(8)


def test_the_kernel_was_built() -> None:
    # The skip above would hide a broken build; CI installs a compiler, so insist here.
    assert kernel.compiled is not None


def raw_of(values: np.ndarray, dtype: str) -> np.ndarray:
    as32 = values.astype(np.float32)
    if dtype == "float32":
        return as32
    return (as32.view(np.uint32) >> 16).astype(np.uint16)  # truncation: any bits will do


def exact_of(raw: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "float32":
        return raw.astype(np.float64)
    return (raw.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


special = st.sampled_from([0.0, np.inf, -np.inf, np.nan, 3e38, -2e-38, 1e-42, 1e30, 7e-20])


@given(
    count=st.integers(1, 3000),
    dtype=st.sampled_from(["float32", "bfloat16"]),
    scale=st.sampled_from([1.0, 1e-30, 1e30, 1e-3]),
    seed=st.integers(0, 2**16),
    extras=st.lists(st.tuples(st.integers(0, 2999), special), max_size=4),
)
def test_statistics_equal_the_float64_reference(
    count: int, dtype: str, scale: float, seed: int, extras: list[tuple[int, float]]
) -> None:
    values = np.random.default_rng(seed).standard_normal(count) * scale
    for index, value in extras:
        values[index % count] = value
    raw = raw_of(values, dtype)
    assert kernel.compiled is not None
    squares, l1, largest, nonfinite = kernel.compiled.reduce_chunk(
        raw, kernel.DTYPE_CODES[dtype], count, 0, 1, kernel.NO_AXES, DUMMY
    )
    reference = reduce_float64(exact_of(raw, dtype))
    assert nonfinite == reference.nonfinite
    assert largest == reference.max_abs
    assert l1 == pytest.approx(reference.l1, rel=1e-6, abs=1e-300)
    expected = reference.sum_squares * reference.scale**2
    assert squares == pytest.approx(expected, rel=1e-6, abs=1e-300)


@given(
    rows=st.integers(1, 40),
    columns=st.integers(1, 70),
    inner=st.sampled_from([1, 3, 9]),
    dtype=st.sampled_from(["float32", "bfloat16"]),
    mode=st.sampled_from([kernel.ROWS, kernel.COLUMNS, kernel.MATRIX]),
    poison=st.booleans(),
)
def test_axis_sums_equal_the_float64_reference(
    rows: int, columns: int, inner: int, dtype: str, mode: int, poison: bool
) -> None:
    values = np.random.default_rng(rows * columns).standard_normal(rows * columns * inner)
    if poison:
        values[values.size // 2] = np.nan
    raw = raw_of(values, dtype)
    exact = exact_of(raw, dtype)
    exact[~np.isfinite(exact)] = 0.0
    squares = (exact**2).reshape(rows, columns, inner).sum(axis=2)
    expected = {
        kernel.ROWS: squares.sum(axis=1),
        kernel.COLUMNS: squares.sum(axis=0),
        kernel.MATRIX: squares.reshape(-1),
    }[mode]
    out = np.zeros(max(rows * columns, 1))
    assert kernel.compiled is not None
    kernel.compiled.reduce_chunk(
        raw, kernel.DTYPE_CODES[dtype], raw.size, columns * inner, columns, mode, out
    )
    np.testing.assert_allclose(out[: expected.size], expected, rtol=1e-6)


@given(
    rows=st.integers(1, 120),
    width=st.sampled_from([1, 17, 3000, 40000]),
    dtype=st.sampled_from(["float32", "bfloat16"]),
    mode=st.sampled_from([kernel.NO_AXES, kernel.ROWS, kernel.COLUMNS, kernel.MATRIX]),
    poison=st.sampled_from([None, 0.0, 0.5, 0.99]),
    scale=st.sampled_from([1.0, 1e30]),
)
def test_reading_the_file_in_pieces_equals_one_chunk(
    tmp_path_factory: pytest.TempPathFactory,
    rows: int,
    width: int,
    dtype: str,
    mode: int,
    poison: float | None,
    scale: float,
) -> None:
    """reduce_range reads 256 KiB pieces of whole rows; its totals and axis sums equal
    reduce_chunk's over the same bytes, with a NaN or huge values in any piece."""
    values = np.random.default_rng(rows * width).standard_normal(rows * width) * scale
    if poison is not None:
        values[int(poison * (values.size - 1))] = np.nan
    raw = raw_of(values, dtype)
    path = tmp_path_factory.mktemp("range") / "data.bin"
    path.write_bytes(b"x" * 24 + raw.tobytes())
    code, columns = kernel.DTYPE_CODES[dtype], width
    expected_sums = np.zeros(2 * rows * width)
    sums = np.zeros(2 * rows * width)
    assert kernel.compiled is not None
    expected = kernel.compiled.reduce_chunk(
        raw, code, raw.size, width, columns, mode, expected_sums
    )
    descriptor = os.open(path, os.O_RDONLY)
    try:
        scratch = mmap.mmap(-1, max(256 << 10, raw.nbytes))
        got = kernel.compiled.reduce_range(
            descriptor, 24, scratch, code, raw.size, width, columns, mode, sums
        )
    finally:
        os.close(descriptor)
    # Pieces regroup the float blocks of 256 values: equal to float rounding, not bits.
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    used = {kernel.NO_AXES: 0, kernel.ROWS: rows, kernel.COLUMNS: width}.get(mode, rows * width)
    np.testing.assert_allclose(sums[:used], expected_sums[:used], rtol=1e-6)


def test_reading_past_the_end_is_an_eof_error(tmp_path: Path) -> None:
    path = tmp_path / "short.bin"
    path.write_bytes(np.ones(100, np.float32).tobytes())
    descriptor = os.open(path, os.O_RDONLY)
    assert kernel.compiled is not None
    try:
        with pytest.raises(EOFError):
            kernel.compiled.reduce_range(
                descriptor, 0, mmap.mmap(-1, 1 << 18), 0, 101, 0, 1, kernel.NO_AXES, DUMMY
            )
    finally:
        os.close(descriptor)


def test_bad_arguments_are_value_errors() -> None:
    assert kernel.compiled is not None
    with pytest.raises(ValueError, match="columns must divide"):
        kernel.compiled.reduce_chunk(np.zeros(10, np.float32), 0, 10, 4, 3, 1, np.zeros(4))
    with pytest.raises(ValueError, match="smaller than count"):
        kernel.compiled.reduce_chunk(np.zeros(10, np.float32), 0, 11, 0, 1, 0, DUMMY)
    with pytest.raises(ValueError, match="unknown mode"):
        kernel.compiled.reduce_chunk(np.zeros(12, np.float32), 0, 12, 0, 1, 7, np.zeros(4))
    with pytest.raises(ValueError, match="rows must be whole"):
        kernel.compiled.reduce_chunk(np.zeros(12, np.float32), 0, 12, 0, 1, 1, np.zeros(4))
    with pytest.raises(ValueError, match="output too small"):
        kernel.compiled.reduce_chunk(np.zeros(12, np.float32), 0, 12, 4, 4, 3, np.zeros(4))
    empty = np.zeros(0)
    with pytest.raises(ValueError, match="buffer smaller than count"):
        kernel.compiled.scale_chunk(
            data=np.zeros(11, np.float32),
            dtype_code=0,
            count=12,
            row_width=12,
            scalar=2.0,
            row_factors=empty,
            pattern=empty,
        )
    with pytest.raises(ValueError, match="buffers smaller than count"):
        kernel.compiled.check_values(
            old=np.zeros(12, np.float32),
            new=np.zeros(11, np.float32),
            count=12,
            row_width=12,
            scalar=2.0,
            row_factors=empty,
            pattern=empty,
            unit=0.0,
            floor=0.0,
        )
    with pytest.raises(ValueError, match="rows must be whole"):
        kernel.compiled.check_values(
            old=np.zeros(12, np.float32),
            new=np.zeros(12, np.float32),
            count=12,
            row_width=5,
            scalar=2.0,
            row_factors=empty,
            pattern=empty,
            unit=0.0,
            floor=0.0,
        )
    with pytest.raises(TypeError):  # keywords the kernel does not take
        kernel.compiled.reduce_chunk(data=np.zeros(4, np.float32), dtype=0)


def test_dead_units_found_by_the_kernel_equal_numpys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    generator = torch.Generator().manual_seed(3)
    state = {}
    for dtype in (torch.float32, torch.bfloat16):
        linear = torch.randn(300, 400, generator=generator)
        linear[7] = 0.0  # a dead row
        linear[:, 11] = 0.0  # a dead column
        linear[9, 3] = float("nan")  # never dead
        conv = torch.randn(64, 32, 3, 3, generator=generator)
        conv[:, 5] = 0.0
        conv[2] = -0.0
        name = str(dtype).removeprefix("torch.")
        state[f"linear.{name}"] = linear.to(dtype)
        state[f"conv.{name}"] = conv.to(dtype)
        state[f"bias.{name}"] = torch.randn(70000, generator=generator).to(dtype)
    path = write_safetensors(tmp_path / "dead.safetensors", state)
    with open_checkpoint(path) as checkpoint:
        compiled_stats, compiled_details, _ = compute_stats_and_details(
            checkpoint, chunk_elements=4096
        )
        monkeypatch.setattr(kernel, "compiled", None)
        numpy_stats, numpy_details, _ = compute_stats_and_details(checkpoint, chunk_elements=4096)
    for name in state:
        assert compiled_details[name].zero_rows == numpy_details[name].zero_rows, name
        assert compiled_details[name].zero_columns == numpy_details[name].zero_columns, name
        assert compiled_stats[name].nonfinite == numpy_stats[name].nonfinite
        assert compiled_stats[name].max_abs == numpy_stats[name].max_abs
        assert compiled_stats[name].fro_norm == pytest.approx(numpy_stats[name].fro_norm, rel=1e-6)
    assert compiled_details["linear.float32"].zero_rows == (7,)
    assert compiled_details["linear.bfloat16"].zero_columns == (11,)
    assert compiled_details["conv.float32"].zero_rows == (2,)
    assert compiled_details["conv.bfloat16"].zero_columns == (5,)


@given(
    rows=st.integers(1, 60),
    width=st.sampled_from([1, 5, 64, 3000]),
    dtype=st.sampled_from(["float32", "bfloat16"]),
    per_row=st.booleans(),
    per_column=st.booleans(),
    power_of_two=st.booleans(),
    corrupt=st.lists(st.floats(0, 1), max_size=3),
    poison=st.booleans(),
)
def test_the_kernel_value_check_counts_what_numpy_counts(
    tmp_path_factory: pytest.TempPathFactory,
    rows: int,
    width: int,
    dtype: str,
    per_row: bool,
    per_column: bool,
    power_of_two: bool,
    corrupt: list[float],
    poison: bool,
) -> None:
    """check_range: new == old × factor rounded once, with per-row and per-column factors,
    over several pieces; corrupted and NaN values are counted as bad. check_values, given
    the same values in memory as float32, finds the same."""
    rng = np.random.default_rng(rows * width)
    old = raw_of(rng.standard_normal(rows * width), dtype)
    row_factors = 2.0 ** rng.integers(-3, 4, rows) if per_row else np.ones(rows)
    column_factors = 2.0 ** rng.integers(-3, 4, width) if per_column else np.ones(width)
    scalar = 0.5 if power_of_two else 0.7
    if not power_of_two:
        row_factors = row_factors * (1 + rng.random(rows) / 3)
    factors = (scalar * row_factors[:, None] * column_factors[None, :]).reshape(-1)
    product = exact_of(old, dtype) * factors
    new = product.astype(np.float32)
    if dtype == "bfloat16":
        new = torch.from_numpy(new).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    bits = new.view(np.uint32 if dtype == "float32" else np.uint16).copy()
    wrong = sorted({int(c * (bits.size - 1)) for c in corrupt})
    bits[wrong] ^= 0x40  # a flipped mantissa bit: far outside any rounding allowance
    if poison:
        bits[bits.size // 2] = 0x7FC00000 if dtype == "float32" else 0x7FC0  # NaN
        wrong = sorted({*wrong, bits.size // 2})
    new = bits.view(new.dtype)
    unit = 0.0 if power_of_two else (2.0**-8 if dtype == "bfloat16" else 2.0**-24) + 3 * 2.0**-24
    allowance = np.abs(exact_of(new, dtype)) * unit + 2.0**-133
    deviation = np.abs(exact_of(new, dtype) - product)
    expected_bad = int(np.count_nonzero(~(deviation <= allowance)))
    folder = tmp_path_factory.mktemp("check")
    (folder / "old.bin").write_bytes(b"x" * 16 + old.tobytes())
    (folder / "new.bin").write_bytes(new.tobytes())
    old_fd = os.open(folder / "old.bin", os.O_RDONLY)
    new_fd = os.open(folder / "new.bin", os.O_RDONLY)
    assert kernel.compiled is not None
    arguments = (
        kernel.DTYPE_CODES[dtype],
        rows * width,
        width,
        scalar,
        row_factors if per_row or not power_of_two else np.zeros(0),
        column_factors if per_column else np.zeros(0),
        unit,
        2.0**-133,
    )
    try:
        checked, bad, worst, *totals = kernel.compiled.check_range(
            old_fd,
            16,
            new_fd,
            0,
            mmap.mmap(-1, max(1 << 20, width * 4)),
            mmap.mmap(-1, max(1 << 20, width * 4)),
            *arguments,
        )
    finally:
        os.close(old_fd)
        os.close(new_fd)
    in_memory = kernel.compiled.check_values(
        exact_of(old, dtype).astype(np.float32),
        exact_of(new, dtype).astype(np.float32),
        *arguments[1:],
    )
    assert in_memory == (checked, bad, worst)
    # the rewritten values' statistics, as reduce_chunk measures them
    measured = kernel.compiled.reduce_chunk(
        data=new,
        dtype_code=arguments[0],
        count=rows * width,
        row_width=0,
        columns=1,
        mode=kernel.NO_AXES,
        out=np.zeros(0),
    )
    np.testing.assert_allclose(measured[:2], totals[:2], rtol=1e-6)
    assert measured[2:] == tuple(totals[2:])
    assert checked == rows * width
    assert bad == expected_bad
    assert (bad > 0) == bool(wrong)
    if not wrong:
        assert worst <= 1.0


@given(
    rows=st.integers(1, 30),
    width=st.sampled_from([1, 3, 8, 37, 64]),
    dtype=st.sampled_from(["float32", "bfloat16"]),
    magnitude=st.integers(-40, 37),
    seed=st.integers(0, 2**16),
    per_column=st.booleans(),
    extras=st.lists(st.tuples(st.integers(0, 10**6), special), max_size=3),
    power_of_two=st.booleans(),
)
def test_kernel_scaling_is_bit_identical_to_numpys(
    rows: int,
    width: int,
    dtype: str,
    magnitude: int,
    seed: int,
    per_column: bool,
    extras: list[tuple[int, float]],
    power_of_two: bool,
) -> None:
    """scale_chunk (FMA round-to-odd, then one rounding) writes exactly the bits that
    ChunkScaler's float64 route writes, for real factors, specials and subnormals."""
    from weissi_cli.numpy_scaling import ChunkScaler

    rng = np.random.default_rng(seed)
    values = rng.standard_normal(rows * width) * 10.0**magnitude
    for index, value in extras:
        values[index % values.size] = value
    raw = raw_of(values, dtype)
    row_factors = np.exp(rng.standard_normal(rows) * 3)
    pattern = np.exp(rng.standard_normal(width)) if per_column else np.ones(width)
    scalar = float(np.exp(rng.standard_normal()))
    if power_of_two:  # the float32 route; factors past float32's normal range leave it
        row_factors = 2.0 ** np.round(np.log2(row_factors) * 20)
        pattern = 2.0 ** np.round(np.log2(pattern) * 20)
        scalar = 2.0 ** round(math.log2(scalar) * 4)
    full = (scalar * row_factors[:, None] * pattern[None, :]).reshape(-1)
    expected = np.array(ChunkScaler(raw.size).scale(raw.copy(), dtype, full, False))
    got = raw.copy()
    assert kernel.compiled is not None
    arguments = (
        kernel.DTYPE_CODES[dtype],
        raw.size,
        width,
        scalar,
        row_factors,
        pattern if per_column else np.zeros(0),
    )
    kernel.compiled.scale_chunk(got, *arguments)
    bits = np.uint32 if dtype == "float32" else np.uint16
    np.testing.assert_array_equal(got.view(bits), expected.view(bits))


@pytest.mark.parametrize("width", [300, 310, 1000, 33])
def test_details_read_from_the_file_equal_the_chunk_kernels(tmp_path: Path, width: int) -> None:
    """details_range (check's pass) gives reduce_chunk's totals, maxima's row maxima and
    its dead columns (the column marks are only zero or not: bits ORed, not a maximum).
    Widths cover 32- and 16-value steps, a scalar tail, and rows longer than a block; a
    column of -0.0 is dead, a column holding one subnormal is not."""
    rng = np.random.default_rng(5)
    rows = 700  # several 256 KiB pieces for the wider rows
    values = rng.standard_normal((rows, width))
    values[17] = 0.0
    values[:, 23] = 0.0
    values[:, 24] = -0.0
    values[:, width - 1] = 0.0
    values[:, width - 2] = 0.0
    values[650, width - 2] = 1e-40  # a float32 subnormal (bfloat16 keeps it too)
    values[400, 5] = np.nan
    for dtype in ("float32", "bfloat16"):
        raw = raw_of(values.reshape(-1), dtype)
        path = tmp_path / f"{dtype}.bin"
        path.write_bytes(b"y" * 40 + raw.tobytes())
        assert kernel.compiled is not None
        code = kernel.DTYPE_CODES[dtype]
        expected = kernel.compiled.reduce_chunk(raw, code, raw.size, 0, 1, kernel.NO_AXES, DUMMY)
        row_max, column_max = np.zeros(rows, np.uint32), np.zeros(width, np.uint32)
        kernel.compiled.maxima(raw, code, raw.size, width, width, row_max, column_max)
        got_rows, got_columns = np.zeros(rows, np.uint32), np.zeros(width, np.uint32)
        descriptor = os.open(path, os.O_RDONLY)
        try:
            got = kernel.compiled.details_range(
                descriptor,
                40,
                mmap.mmap(-1, 1 << 20),
                code,
                raw.size,
                width,
                width,
                got_rows,
                got_columns,
            )
        finally:
            os.close(descriptor)
        np.testing.assert_allclose(got, expected, rtol=1e-6)
        np.testing.assert_array_equal(got_rows, row_max)
        np.testing.assert_array_equal(got_columns == 0, column_max == 0)
        assert list(np.flatnonzero(got_rows == 0)) == [17]
        assert list(np.flatnonzero(got_columns == 0)) == [23, 24, width - 1]
