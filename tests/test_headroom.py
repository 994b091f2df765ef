"""Float16 headroom: the exact shift of every bit pattern, and its minima per row and column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import write_safetensors
from weissi_cli import chunking, kernel
from weissi_cli.headroom import MAX_SHIFT, measure_headroom, shift_tables
from weissi_cli.io import open_checkpoint


def expected_shifts(bits: int) -> tuple[int, int]:
    """(down, up) from float16's layout: v = M·2^E is exact down to E = −24, and finite up
    to exponent 15."""
    exponent, mantissa = (bits >> 10) & 0x1F, bits & 0x3FF
    if exponent == 0x1F or (exponent == 0 and mantissa == 0):
        return MAX_SHIFT, MAX_SHIFT
    if exponent == 0:
        significand, low_exponent = mantissa, -24
    else:
        significand, low_exponent = mantissa | 0x400, exponent - 25
    trailing = (significand & -significand).bit_length() - 1
    magnitude_exponent = low_exponent + significand.bit_length() - 1
    down = low_exponent + trailing + 24
    return min(down, MAX_SHIFT), min(15 - magnitude_exponent, MAX_SHIFT)


def test_shift_tables_follow_the_float16_bit_layout() -> None:
    down, up = shift_tables()
    for bits in range(1 << 16):
        assert (int(down[bits]), int(up[bits])) == expected_shifts(bits), hex(bits)


def test_the_tables_shifts_are_exact_and_one_more_is_not() -> None:
    down, up = shift_tables()
    values = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float64)
    finite = np.isfinite(values) & (values != 0)
    values, down, up = values[finite], down[finite], up[finite]
    for table, sign in ((down, -1), (up, 1)):
        shifted = np.ldexp(values, sign * table.astype(np.int64))
        assert np.all(shifted.astype(np.float16).astype(np.float64) == shifted)
        with np.errstate(over="ignore"):
            beyond = np.ldexp(values, sign * (table.astype(np.int64) + 1))
            rounded = beyond.astype(np.float16).astype(np.float64)
        assert not np.any((rounded == beyond)[table < MAX_SHIFT])


float16_values = st.one_of(
    st.just(0.0),
    st.floats(-(2.0**-12), 2.0**-12, width=16),  # subnormals and the smallest normals
    st.floats(-65504.0, 65504.0, width=16),
    st.sampled_from([float("inf"), float("-inf")]),
    st.just(float("nan")),
)


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from([(7,), (5, 3), (4, 6, 2), (3, 2, 2, 2), (0, 4)]),
    st.data(),
    st.integers(1, 64),
)
def test_measured_headroom_is_the_minimum_over_each_row_and_column(
    tmp_path_factory: pytest.TempPathFactory,
    shape: tuple[int, ...],
    data: st.DataObject,
    chunk: int,
) -> None:
    count = int(np.prod(shape))
    values = data.draw(st.lists(float16_values, min_size=count, max_size=count))
    tensor = torch.tensor(values, dtype=torch.float16).reshape(shape)
    path = tmp_path_factory.mktemp("headroom") / "m.safetensors"
    write_safetensors(path, {"w": tensor, "other": tensor.float()})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(chunking, "HEADROOM_ELEMENTS", chunk)  # many chunks of whole rows
        with open_checkpoint(path) as checkpoint:
            found = measure_headroom(checkpoint, ["w", "other"])
    assert set(found) == {"w"}  # float32 has no float16 headroom to measure
    down, up = shift_tables()
    columns = shape[1] if len(shape) > 1 else 1
    bits = tensor.numpy().view(np.uint16).reshape(shape[0], columns, -1 if count else 1)
    for table, rows, columns in (
        (down, found["w"].rows_down, found["w"].columns_down),
        (up, found["w"].rows_up, found["w"].columns_up),
    ):
        shifts = table[bits]
        assert np.array_equal(rows, shifts.min(axis=(1, 2), initial=MAX_SHIFT))
        assert np.array_equal(columns, shifts.min(axis=(0, 2), initial=MAX_SHIFT))


def test_a_realistic_float16_matrix_has_no_room_to_halve(tmp_path: Path) -> None:
    """N(0, 0.02) weights hold values below 2^-13 with the lowest bit set in most rows:
    the reason float16 power-of-two rebalancing must be limited to stay exact."""
    weights = (torch.randn(64, 256, generator=torch.Generator().manual_seed(0)) * 0.02).half()
    path = write_safetensors(tmp_path / "m.safetensors", {"w": weights})
    with open_checkpoint(path) as checkpoint:
        found = measure_headroom(checkpoint, ["w"])["w"]
    assert found.down == 0
    assert np.mean(found.rows_down == 0) > 0.3
    assert found.up >= 15 - 7  # |w| < 2^-7·... stays far from float16's largest value


@pytest.mark.skipif(not kernel.AVAILABLE, reason="the C kernel was not built")
@pytest.mark.parametrize("shape", [(300, 200), (64, 8, 3), (1000,)])
def test_the_kernel_finds_the_same_minima_as_the_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shape: tuple[int, ...]
) -> None:
    """Realistic weights (every column reaches 0 early, so rows are cut short) with a few
    large, infinite and NaN values, in chunks of a few rows."""
    generator = torch.Generator().manual_seed(2)
    tensor = torch.randn(shape, generator=generator) * 0.02
    flat = tensor.view(-1)
    flat[::97] = 3000.0
    flat[5], flat[6], flat[7] = float("inf"), float("-inf"), float("nan")
    path = write_safetensors(tmp_path / "m.safetensors", {"w": tensor.half()})
    monkeypatch.setattr(chunking, "HEADROOM_ELEMENTS", 4096)
    found = {}
    for compiled in (kernel.compiled, None):
        monkeypatch.setattr(kernel, "compiled", compiled)
        with open_checkpoint(path) as checkpoint:
            found[compiled is None] = measure_headroom(checkpoint, ["w"])["w"]
    for field in ("rows_down", "rows_up", "columns_down", "columns_up"):
        assert np.array_equal(getattr(found[True], field), getattr(found[False], field)), field
