"""Both backends of `kernel.Kernel` (the C kernel where it was built, numpy always) against
independent float64 computations, and against each other."""

from __future__ import annotations

import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weissi_cli import kernel
from weissi_cli.headroom import shift_tables
from weissi_cli.io.dtypes import decode

BACKENDS = [
    pytest.param(
        "compiled",
        marks=pytest.mark.skipif(not kernel.AVAILABLE, reason="the C kernel was not built"),
    ),
    "numpy",
]
DTYPES = ["float32", "bfloat16"]
SPECIAL = [0.0, math.inf, -math.inf, math.nan, 3e38, -2e-38, 1e-42, 1e30, 7e-20]
# Counts around the C kernel's blocks (16 values a step, 256 and 512 a block) and numpy's rows.
COUNTS = st.sampled_from([0, 1, 2, 15, 16, 17, 255, 256, 257, 511, 513, 1000, 4099])


def backend_named(name: str) -> kernel.Kernel:
    if name == "compiled":
        assert kernel.compiled is not None
        return kernel.compiled
    return kernel.numpy_kernel()


def stored(values: np.ndarray, dtype: str) -> np.ndarray:
    """Storage bits of `values` (bfloat16 by truncation: any bits will do)."""
    as32 = values.astype(np.float32)
    if dtype == "float32":
        return as32
    return (as32.view(np.uint32) >> 16).astype(np.uint16)


def exact(raw: np.ndarray, dtype: str) -> np.ndarray:
    return decode(raw, dtype).astype(np.float64)


def random_raw(count: int, dtype: str, seed: int, scale: float = 1.0, specials: int = 0) -> Any:
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(count) * scale
    for index in rng.integers(0, max(count, 1), specials if count else 0):
        values[index] = SPECIAL[int(rng.integers(len(SPECIAL)))]
    return stored(values, dtype)


def reference_totals(values: np.ndarray) -> tuple[float, float, float, int]:
    finite = values[np.isfinite(values)]
    magnitudes = np.abs(finite)
    largest = float(magnitudes.max()) if finite.size else 0.0
    return float(np.sum(magnitudes**2)), float(magnitudes.sum()), largest, values.size - finite.size


def assert_totals(found: tuple[Any, ...], expected: tuple[float, float, float, int]) -> None:
    # Float32 block sums: within 1e-6 of the float64 sums wherever the values allow them.
    assert len(found) == 4
    assert found[3] == expected[3]
    assert found[2] == expected[2]
    assert found[1] == pytest.approx(expected[1], rel=1e-6, abs=1e-300)
    assert found[0] == pytest.approx(expected[0], rel=1e-6, abs=1e-300)


@pytest.mark.parametrize("name", BACKENDS)
@settings(max_examples=30, deadline=None)
@given(
    count=COUNTS,
    dtype=st.sampled_from(DTYPES),
    scale=st.sampled_from([1.0, 1e-30, 1e30, 1e-3]),
    seed=st.integers(0, 2**16),
    specials=st.integers(0, 3),
)
def test_reduce_chunk_gives_the_float64_statistics(
    name: str, count: int, dtype: str, scale: float, seed: int, specials: int
) -> None:
    raw = random_raw(count, dtype, seed, scale, specials)
    found = backend_named(name).reduce_chunk(
        data=raw,
        dtype_code=kernel.DTYPE_CODES[dtype],
        count=count,
        row_width=0,
        columns=1,
        mode=kernel.NO_AXES,
        out=bytearray(8),
    )
    assert_totals(found, reference_totals(exact(raw, dtype)))


def reference_sums(values: np.ndarray, rows: int, columns: int, mode: int) -> np.ndarray:
    squares = np.where(np.isfinite(values), values, 0.0) ** 2
    matrix = squares.reshape(rows, columns, -1).sum(axis=2)
    if mode == kernel.ROWS:
        return matrix.sum(axis=1)
    if mode == kernel.COLUMNS:
        return matrix.sum(axis=0)
    return matrix.reshape(-1)


@pytest.mark.parametrize("name", BACKENDS)
@settings(max_examples=30, deadline=None)
@given(
    rows=st.integers(0, 20),
    columns=st.integers(1, 40),
    inner=st.sampled_from([1, 3, 9]),
    dtype=st.sampled_from(DTYPES),
    mode=st.sampled_from([kernel.ROWS, kernel.COLUMNS, kernel.MATRIX]),
    specials=st.integers(0, 2),
    seed=st.integers(0, 2**16),
)
def test_axis_sums_have_the_layout_and_values_of_the_float64_sums(
    name: str, rows: int, columns: int, inner: int, dtype: str, mode: int, specials: int, seed: int
) -> None:
    width = columns * inner
    raw = random_raw(rows * width, dtype, seed, specials=specials)
    out = np.full(rows * columns + columns, -1.0)
    totals = backend_named(name).reduce_chunk(
        data=raw,
        dtype_code=kernel.DTYPE_CODES[dtype],
        count=rows * width,
        row_width=width,
        columns=columns,
        mode=mode,
        out=out,
    )
    values = exact(raw, dtype)
    assert_totals(totals, reference_totals(values))
    if rows:
        expected = reference_sums(values, rows, columns, mode)
        np.testing.assert_allclose(out[: expected.size], expected, rtol=1e-5, atol=1e-300)


def write(tmp_path: Path, raw: np.ndarray, lead: int = 24) -> tuple[int, Path]:
    path = tmp_path / "values.bin"
    path.write_bytes(b"\0" * lead + raw.tobytes())
    return os.open(path, os.O_RDONLY), path


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("mode", [kernel.NO_AXES, kernel.ROWS, kernel.COLUMNS, kernel.MATRIX])
@pytest.mark.parametrize("dtype", DTYPES)
def test_reduce_range_reads_in_pieces_what_reduce_chunk_gives(
    tmp_path: Path, name: str, mode: int, dtype: str
) -> None:
    backend = backend_named(name)
    rows, columns, inner = 1201, 37, 3  # more than one piece of the 256 KiB scratch
    width = columns * inner
    raw = random_raw(rows * width, dtype, 7, specials=2)
    arguments = {
        "dtype_code": kernel.DTYPE_CODES[dtype],
        "count": raw.size,
        "row_width": width,
        "columns": columns,
        "mode": mode,
    }
    whole = np.zeros(rows * columns + columns)
    expected = backend.reduce_chunk(data=raw, out=whole, **arguments)
    fd, _ = write(tmp_path, raw)
    try:
        pieces = np.zeros(rows * columns + 2 * columns)
        found = backend.reduce_range(
            fd=fd, offset=24, scratch=bytearray(1 << 18), out=pieces, **arguments
        )
        with pytest.raises(EOFError):
            backend.reduce_range(
                fd=fd, offset=28, scratch=bytearray(1 << 18), out=pieces.copy(), **arguments
            )
    finally:
        os.close(fd)
    assert found[2:] == expected[2:]
    assert found[:2] == pytest.approx(expected[:2], rel=1e-6)  # pieces: other float32 blocks
    size = {kernel.ROWS: rows, kernel.COLUMNS: columns, kernel.MATRIX: rows * columns}.get(mode, 0)
    np.testing.assert_allclose(pieces[:size], whole[:size], rtol=1e-6)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("mode", [kernel.ROWS, kernel.COLUMNS, kernel.MATRIX])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("specials", [0, 2])
def test_details_range_gives_reduce_ranges_squares_beside_the_marks(
    tmp_path: Path, name: str, mode: int, dtype: str, specials: int
) -> None:
    """check's pass takes the symmetry rules' axis squares with the dead-unit marks: the
    same pieces, so the same squares as reduce_range to the last bit, and the totals of
    the pass without them (which sums in another order)."""
    backend = backend_named(name)
    rows, columns, inner = 1201, 37, 3  # more than one piece of the 256 KiB scratch
    width = columns * inner
    raw = random_raw(rows * width, dtype, 11, specials=specials)
    raw.reshape(rows, width)[5] = 0  # a dead row
    arguments = {
        "dtype_code": kernel.DTYPE_CODES[dtype],
        "count": raw.size,
        "row_width": width,
        "columns": columns,
        "scratch": bytearray(1 << 18),
        "offset": 24,
    }
    fd, _ = write(tmp_path, raw)
    try:
        alone = np.zeros(rows * columns + 2 * columns)
        expected = backend.reduce_range(fd=fd, mode=mode, out=alone, **arguments)
        marks = np.zeros(rows, np.uint32), np.zeros(columns, np.uint32)
        plain = backend.details_range(fd=fd, row_out=marks[0], column_out=marks[1], **arguments)
        found_marks = np.zeros(rows, np.uint32), np.zeros(columns, np.uint32)
        beside = np.full(rows * columns + 2 * columns, 7.0)
        found = backend.details_range(
            fd=fd,
            row_out=found_marks[0],
            column_out=found_marks[1],
            mode=mode,
            out=beside,
            **arguments,
        )
        with pytest.raises(ValueError, match="output too small"):
            backend.details_range(
                fd=fd,
                row_out=found_marks[0],
                column_out=found_marks[1],
                mode=mode,
                out=np.zeros(1),
                **arguments,
            )
    finally:
        os.close(fd)
    size = {kernel.ROWS: rows, kernel.COLUMNS: columns, kernel.MATRIX: rows * columns}[mode]
    assert np.array_equal(beside[:size], alone[:size], equal_nan=True)
    assert found == plain or (math.isnan(found[0]) and found[1:] == plain[1:])
    assert found[2:] == expected[2:]
    assert np.array_equal(found_marks[0] != 0, marks[0] != 0)
    assert np.array_equal(found_marks[1] != 0, marks[1] != 0)
    assert not found_marks[0][5]


def rounded_once(value: float, factor: float, dtype: str) -> int:
    """The storage bits of value · factor rounded once, to nearest even, from the exact
    product (Fractions): the double-rounded candidate and its neighbours are compared."""
    product = Fraction(value) * Fraction(factor)
    guess = stored(np.array([float(product)]), dtype)
    bits = int(guess.view(np.uint32 if dtype == "float32" else np.uint16)[0])
    if dtype == "bfloat16":  # truncation above: the candidates span both neighbours
        bits = int(stored(np.array([float(product)]), "float32").view(np.uint32)[0] >> 16)
    best = None
    for candidate in (bits - 1, bits, bits + 1):
        raw = np.array([candidate], np.uint32 if dtype == "float32" else np.uint16)
        decoded = float(exact(raw.view(np.float32) if dtype == "float32" else raw, dtype)[0])
        if not math.isfinite(decoded):
            continue
        distance = abs(Fraction(decoded) - product)
        key = (distance, candidate % 2)
        if best is None or key < best[0]:
            best = (key, candidate)
    assert best is not None
    return best[1]


@pytest.mark.parametrize("name", BACKENDS)
@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 6),
    width=st.integers(1, 21),
    dtype=st.sampled_from(DTYPES),
    kind=st.sampled_from(["scalar", "rows", "pattern", "both"]),
    power_of_two=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_scale_chunk_rounds_the_exact_product_once(
    name: str, rows: int, width: int, dtype: str, kind: str, power_of_two: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    raw = random_raw(rows * width, dtype, seed)
    pick = (
        (lambda n: 2.0 ** rng.integers(-3, 4, n))
        if power_of_two
        else (lambda n: rng.uniform(0.3, 3.0, n))
    )
    scalar = float(pick(1)[0])
    row_factors = pick(rows) if kind in ("rows", "both") else np.zeros(0)
    pattern = pick(width) if kind in ("pattern", "both") else np.zeros(0)
    scaled = raw.copy()
    backend_named(name).scale_chunk(
        data=scaled,
        dtype_code=kernel.DTYPE_CODES[dtype],
        count=raw.size,
        row_width=width,
        scalar=scalar,
        row_factors=row_factors,
        pattern=pattern,
    )
    values = exact(raw, dtype)
    bits = scaled.view(np.uint32 if dtype == "float32" else np.uint16)
    for index in range(raw.size):
        row, column = divmod(index, width)
        factor = scalar * (row_factors[row] if row_factors.size else 1.0)
        factor = factor * pattern[column] if pattern.size else factor
        assert bits[index] == rounded_once(float(values[index]), factor, dtype), index


def reference_check(
    old: np.ndarray, new: np.ndarray, factor: np.ndarray, unit: float, floor: float
) -> int:
    with np.errstate(invalid="ignore"):
        deviation = np.abs(new - old * factor)
        return int(np.count_nonzero(~(deviation <= np.abs(new) * unit + floor)))


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("count", [1, 17, 4099])
def test_the_value_check_counts_the_values_outside_their_allowance(
    tmp_path: Path, name: str, dtype: str, count: int
) -> None:
    backend = backend_named(name)
    rng = np.random.default_rng(count)
    width = 1 if count < 17 else 17 if count == 17 else 4099
    rows = count // width
    old_raw = random_raw(count, dtype, count)
    row_factors, pattern = rng.uniform(0.5, 2.0, rows), rng.uniform(0.5, 2.0, width)
    factor = (0.75 * row_factors[:, None] * pattern[None, :]).reshape(-1)
    old = exact(old_raw, dtype)
    new_values = old * factor
    new_values[:: max(1, count // 5)] *= 1.01  # outside any rounding allowance
    if count > 1:
        new_values[count // 2] = math.nan
    new_raw = stored(new_values, "float32").astype(np.float32)
    if dtype == "bfloat16":  # round to nearest, so unperturbed values are within the allowance
        bits = new_raw.view(np.uint32)
        new_raw = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    unit, floor = 2.0**-8 if dtype == "bfloat16" else 2.0**-24 * 4, 2.0**-133
    new = exact(new_raw, dtype)
    expected = reference_check(old, new, factor, unit * 1.01, floor)
    arguments = {
        "count": count,
        "row_width": width,
        "scalar": 0.75,
        "row_factors": row_factors,
        "pattern": pattern,
        "unit": unit,
        "floor": floor,
    }
    checked, bad, worst = backend.check_values(
        old=old.astype(np.float32), new=new.astype(np.float32), **arguments
    )
    assert (checked, bad) == (count, expected)
    assert math.isfinite(worst)
    assert worst >= 0.0
    old_fd, _ = write(tmp_path, old_raw)
    new_path = tmp_path / "new.bin"
    new_path.write_bytes(b"\0" * 8 + new_raw.tobytes())
    new_fd = os.open(new_path, os.O_RDONLY)
    try:
        found = backend.check_range(
            old_fd=old_fd,
            old_offset=24,
            new_fd=new_fd,
            new_offset=8,
            old_scratch=bytearray(1 << 18),
            new_scratch=bytearray(1 << 18),
            dtype_code=kernel.DTYPE_CODES[dtype],
            **arguments,
        )
        with pytest.raises(EOFError):
            backend.check_range(
                old_fd=old_fd,
                old_offset=24,
                new_fd=new_fd,
                new_offset=12,
                old_scratch=bytearray(1 << 18),
                new_scratch=bytearray(1 << 18),
                dtype_code=kernel.DTYPE_CODES[dtype],
                **arguments,
            )
    finally:
        os.close(old_fd)
        os.close(new_fd)
    assert found[:2] == (count, expected)
    assert found[2] == pytest.approx(worst, rel=1e-6)
    assert_totals(found[3:], reference_totals(new))


@pytest.mark.parametrize("name", BACKENDS)
@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(0, 12),
    columns=st.integers(1, 20),
    inner=st.sampled_from([1, 2, 5]),
    dtype=st.sampled_from(DTYPES),
    zeros=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_maxima_and_details_mark_the_dead_rows_and_columns(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    rows: int,
    columns: int,
    inner: int,
    dtype: str,
    zeros: int,
    seed: int,
) -> None:
    backend = backend_named(name)
    rng = np.random.default_rng(seed)
    width = columns * inner
    values = rng.standard_normal((rows, columns, inner))
    values[rng.integers(0, max(rows, 1), zeros) if rows else [], :, :] = 0.0
    values[:, rng.integers(0, columns, zeros), :] = -0.0
    if rows and zeros:
        values[0, 0, 0] = math.nan
    raw = stored(values.reshape(-1), dtype)
    code = kernel.DTYPE_CODES[dtype]
    row_out, column_out = np.zeros(rows, np.uint32), np.zeros(columns, np.uint32)
    backend.maxima(
        data=raw,
        dtype_code=code,
        count=raw.size,
        row_width=width,
        columns=columns,
        row_out=row_out,
        column_out=column_out,
    )
    magnitudes = np.abs(exact(raw, dtype)).reshape(rows, columns, inner)
    assert np.array_equal(row_out != 0, ~(magnitudes.max(axis=(1, 2), initial=0) == 0))
    assert np.array_equal(column_out != 0, ~(magnitudes.max(axis=(0, 2), initial=0) == 0))
    fd, _ = write(tmp_path_factory.mktemp("details"), raw)
    try:
        rows_found, columns_found = np.zeros(rows, np.uint32), np.zeros(columns, np.uint32)
        totals = backend.details_range(
            fd=fd,
            offset=24,
            scratch=bytearray(1 << 18),
            dtype_code=code,
            count=raw.size,
            row_width=width,
            columns=columns,
            row_out=rows_found,
            column_out=columns_found,
        )
    finally:
        os.close(fd)
    assert np.array_equal(rows_found != 0, row_out != 0)
    assert np.array_equal(columns_found != 0, column_out != 0)
    assert_totals(totals, reference_totals(exact(raw, dtype)))


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize(
    ("rows", "columns", "inner"), [(0, 3, 1), (1, 1, 1), (7, 33, 1), (5, 6, 4)]
)
def test_shift_minima_take_the_tables_minima(
    name: str, rows: int, columns: int, inner: int
) -> None:
    down, up = shift_tables()
    rng = np.random.default_rng(rows * columns)
    values = (rng.standard_normal(rows * columns * inner) * 2.0 ** rng.integers(-20, 10)).astype(
        np.float16
    )
    bits = values.view(np.uint16)
    outputs = [np.full(size, 64, np.int8) for size in (rows, rows, columns, columns)]
    outputs[2][0] = 3  # columns accumulate over calls: a limit found before stays
    backend_named(name).shift_minima(
        bits=bits,
        count=bits.size,
        row_width=columns * inner,
        columns=columns,
        down_table=down,
        up_table=up,
        rows_down=outputs[0],
        rows_up=outputs[1],
        columns_down=outputs[2],
        columns_up=outputs[3],
    )
    shaped = bits.reshape(rows, columns, inner)
    for row in range(rows):
        assert outputs[0][row] == min([64, *(int(down[b]) for b in shaped[row].reshape(-1))])
        assert outputs[1][row] == min([64, *(int(up[b]) for b in shaped[row].reshape(-1))])
    for column in range(columns):
        column_bits = shaped[:, column].reshape(-1)
        assert outputs[2][column] == min(
            [3 if column == 0 else 64, *(int(down[b]) for b in column_bits)]
        )
        assert outputs[3][column] == min([64, *(int(up[b]) for b in column_bits)])


def reference_comparison(
    a: np.ndarray,
    b: np.ndarray,
    fa: np.ndarray,
    fb: np.ndarray,
    width: int,
    block_rows: int,
    same_scale: bool,
) -> tuple[Any, ...]:
    totals, equal_all = [0.0, 0.0, 0.0, 0.0], True
    for start in range(0, a.size, block_rows * width):
        block = slice(start, start + block_rows * width)
        o, n = a[block], b[block]
        equal = bool(np.all((o == n) | (np.isnan(o) & np.isnan(n))))
        if same_scale and equal:
            continue
        with np.errstate(invalid="ignore", over="ignore"):
            found = [
                np.abs(n - o),
                np.abs(o),
                np.abs(n * fb[block] - o * fa[block]),
                np.abs(o * fa[block]),
            ]
        for index, values in enumerate(found):
            top = math.nan if np.isnan(values).any() else float(values.max())
            totals[index] = (
                math.nan
                if math.isnan(top) or math.isnan(totals[index])
                else max(totals[index], top)
            )
        equal_all = equal_all and equal
    return (*totals, equal_all)


@pytest.mark.parametrize("name", BACKENDS)
@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 30),
    width=st.integers(1, 9),
    block_rows=st.integers(1, 8),
    dtypes=st.sampled_from(
        [("float32", "float32"), ("bfloat16", "bfloat16"), ("float32", "bfloat16")]
    ),
    same=st.booleans(),
    nan=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_compare_gives_the_float64_block_maxima(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    rows: int,
    width: int,
    block_rows: int,
    dtypes: tuple[str, str],
    same: bool,
    nan: bool,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    count = rows * width
    raw_a = random_raw(count, dtypes[0], seed)
    values_b = exact(raw_a, dtypes[0])
    values_b[rng.integers(0, count, 2)] *= 1.5  # some blocks differ, others are equal
    if nan:
        values_b[0] = math.nan
    raw_b = stored(values_b, dtypes[1])
    rows_a = np.zeros(0) if same else rng.uniform(0.5, 2.0, rows)
    pattern_b = np.zeros(0) if same else rng.uniform(0.5, 2.0, width)
    factors_a = np.repeat(rows_a, width) if rows_a.size else np.full(count, 0.5)
    factors_b = np.tile(0.5 * pattern_b, rows) if pattern_b.size else np.full(count, 0.5)
    sides = {
        "dtype_code_a": kernel.DTYPE_CODES[dtypes[0]],
        "scalar_a": 0.5,
        "row_factors_a": rows_a,
        "pattern_a": np.zeros(0),
        "dtype_code_b": kernel.DTYPE_CODES[dtypes[1]],
        "scalar_b": 0.5,
        "row_factors_b": np.zeros(0),
        "pattern_b": pattern_b,
        "count": count,
        "row_width": width,
        "block_rows": block_rows,
        "same_scale": same,
    }
    if not same:  # the scalar stands for absent rows; with a pattern it is folded into it
        sides["pattern_b"] = 0.5 * pattern_b
        sides["scalar_b"] = 1.0
    expected = reference_comparison(
        exact(raw_a, dtypes[0]),
        exact(raw_b, dtypes[1]),
        factors_a,
        factors_b,
        width,
        block_rows,
        same,
    )
    backend = backend_named(name)
    found = backend.compare_chunk(data_a=raw_a, data_b=raw_b, **sides)
    np.testing.assert_array_equal(np.array(found[:4]), np.array(expected[:4]))
    assert found[4] == expected[4]
    folder = tmp_path_factory.mktemp("compare")
    fd_a, _ = write(folder, raw_a)
    path_b = folder / "b.bin"
    path_b.write_bytes(raw_b.tobytes())
    fd_b = os.open(path_b, os.O_RDONLY)
    try:
        ranged = backend.compare_range(
            fd_a=fd_a,
            offset_a=24,
            scratch_a=bytearray(1 << 18),
            fd_b=fd_b,
            offset_b=0,
            scratch_b=bytearray(1 << 18),
            **sides,
        )
        with pytest.raises(EOFError):
            backend.compare_range(
                fd_a=fd_a,
                offset_a=24,
                scratch_a=bytearray(1 << 18),
                fd_b=fd_b,
                offset_b=4,
                scratch_b=bytearray(1 << 18),
                **sides,
            )
    finally:
        os.close(fd_a)
        os.close(fd_b)
    np.testing.assert_array_equal(np.array(ranged[:4]), np.array(found[:4]))
    assert ranged[4] == found[4]


@pytest.mark.parametrize("name", BACKENDS)
def test_bad_arguments_are_value_errors(name: str) -> None:
    backend = backend_named(name)
    data = np.zeros(12, np.float32)
    with pytest.raises(ValueError, match="unknown dtype code"):
        backend.reduce_chunk(
            data=data, dtype_code=9, count=12, row_width=0, columns=1, mode=0, out=data
        )
    with pytest.raises(ValueError, match="rows must be whole"):
        backend.reduce_chunk(
            data=data, dtype_code=0, count=12, row_width=5, columns=1, mode=1, out=data
        )
    with pytest.raises(ValueError, match="smaller than count"):
        backend.reduce_chunk(
            data=data, dtype_code=0, count=13, row_width=0, columns=1, mode=0, out=data
        )
    with pytest.raises(ValueError, match="row factors shorter"):
        backend.scale_chunk(
            data=data,
            dtype_code=0,
            count=12,
            row_width=4,
            scalar=2.0,
            row_factors=np.ones(2),
            pattern=np.zeros(0),
        )
    with pytest.raises(ValueError, match="columns must divide"):
        backend.maxima(
            data=data,
            dtype_code=0,
            count=12,
            row_width=4,
            columns=3,
            row_out=np.zeros(1, np.uint32),
            column_out=np.zeros(3, np.uint32),
        )


@settings(max_examples=25, deadline=None)
@given(
    count=COUNTS,
    dtype=st.sampled_from(DTYPES),
    specials=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_the_backends_agree(count: int, dtype: str, specials: int, seed: int) -> None:
    """Non-finite counts, maxima and scaled bits exactly; sums to 1e-6 (float32 blocks
    summed in different orders)."""
    if kernel.compiled is None:
        pytest.skip("the C kernel was not built")
    raw = random_raw(count, dtype, seed, specials=specials)
    code = kernel.DTYPE_CODES[dtype]
    results = []
    for backend in (kernel.compiled, kernel.numpy_kernel()):
        totals = backend.reduce_chunk(
            data=raw,
            dtype_code=code,
            count=count,
            row_width=0,
            columns=1,
            mode=kernel.NO_AXES,
            out=bytearray(8),
        )
        scaled = raw.copy()
        backend.scale_chunk(
            data=scaled,
            dtype_code=code,
            count=count,
            row_width=max(count, 1),
            scalar=1.37,
            row_factors=np.zeros(0),
            pattern=np.zeros(0),
        )
        results.append((totals, scaled))
    (first, scaled_first), (second, scaled_second) = results
    assert first[2:] == second[2:]
    assert first[:2] == pytest.approx(second[:2], rel=1e-6, abs=1e-300)
    assert np.array_equal(scaled_first.view(np.uint8), scaled_second.view(np.uint8))


def test_the_numpy_backend_reads_float16_and_float64_and_keeps_float64_scales() -> None:
    numpy_backend = kernel.numpy_kernel()
    half = np.array([1.5, -2.0, np.inf, 0.0], np.float16)
    found = numpy_backend.reduce_chunk(
        data=half,
        dtype_code=kernel.DTYPE_CODES["float16"],
        count=4,
        row_width=0,
        columns=1,
        mode=kernel.NO_AXES,
        out=bytearray(8),
    )
    assert found == (6.25, 3.5, 2.0, 1)
    huge = np.array([1e300, -3e300])
    found = numpy_backend.reduce_chunk(
        data=huge,
        dtype_code=kernel.DTYPE_CODES["float64"],
        count=2,
        row_width=0,
        columns=1,
        mode=kernel.NO_AXES,
        out=bytearray(8),
    )
    assert len(found) == 5  # squares of values / scale, which float64 holds
    assert math.sqrt(found[0]) * found[4] == pytest.approx(math.hypot(1e300, 3e300), rel=1e-12)


def test_the_selector_takes_numpy_where_the_kernel_does_not_fit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    numpy_backend = kernel.numpy_kernel()
    assert kernel.backend_for("float16") is numpy_backend
    assert kernel.backend_for("float32", "float64") is numpy_backend
    assert kernel.backend_for("float32", exact=True) is kernel.numpy_kernel(True)
    assert kernel.backend_for("bfloat16") is (kernel.compiled or numpy_backend)
    monkeypatch.setattr(kernel, "compiled", None)
    assert kernel.backend_for("float32") is numpy_backend


def reference_squares(
    raw: np.ndarray, dtype: str, rows: int, columns: int, inner: int
) -> np.ndarray:
    """What the statistics pass stores: each entry's finite squares summed in float64,
    rounded once to float32."""
    values = exact(raw, dtype).reshape(rows, columns, inner)
    squares = np.where(np.isfinite(values), values, 0.0) ** 2
    with np.errstate(over="ignore"):
        return squares.sum(axis=2).astype(np.float32).astype(np.float64)


@pytest.mark.parametrize("name", BACKENDS)
@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(0, 9),
    columns=st.sampled_from([1, 3, 7, 8, 9, 16, 17, 33]),
    inner=st.sampled_from([1, 1, 4, 9]),
    dtype=st.sampled_from([*DTYPES, "float16"]),
    specials=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_square_products_multiply_the_stored_squares_in_double(
    name: str, rows: int, columns: int, inner: int, dtype: str, specials: int, seed: int
) -> None:
    """The channel solver's products over streamed squares: Q @ v per row and w @ Q per
    column, Q being the squares the statistics pass stores, to float64 rounding."""
    backend = backend_named(name)
    count = rows * columns * inner
    rng = np.random.default_rng(seed)
    if dtype == "float16":
        raw = (rng.standard_normal(count) * 4).astype(np.float16)
        raw[rng.integers(0, max(count, 1), specials if count else 0)] = np.inf
    else:
        raw = random_raw(count, dtype, seed, specials=specials)
        raw = raw if dtype == "float32" else raw.astype(np.uint16)
    squares = reference_squares(raw, dtype, rows, columns, inner)
    vector, weights = rng.random(columns) + 0.5, rng.random(rows) + 0.5
    arguments = {
        "data": raw,
        "dtype_code": kernel.DTYPE_CODES[dtype],
        "count": count,
        "row_width": columns * inner,
        "columns": columns,
    }
    per_row = np.full(rows + 1, 7.0)
    backend.square_products(mode=kernel.ROWS, vector=vector, out=per_row, **arguments)
    per_column = np.full(columns + 1, 7.0)  # written, not added to
    backend.square_products(mode=kernel.COLUMNS, vector=weights, out=per_column, **arguments)
    with np.errstate(invalid="ignore", over="ignore"):
        np.testing.assert_allclose(per_row[:rows], squares @ vector, rtol=1e-13)
        np.testing.assert_allclose(per_column[:columns], weights @ squares, rtol=1e-13)
    assert per_row[rows] == per_column[columns] == 7.0
    with pytest.raises(ValueError, match="too small"):
        backend.square_products(mode=kernel.ROWS, vector=vector[:-1], out=per_row, **arguments)
    with pytest.raises(ValueError, match="ROWS or COLUMNS"):
        backend.square_products(mode=kernel.MATRIX, vector=vector, out=per_row, **arguments)
