"""Types of weissi's compiled kernel (`_kernel.c`). Every function takes its arguments by
position or by keyword; buffers are numpy arrays, mmaps or bytearrays of the stated dtype.
`weissi_cli.kernel.Kernel` is the same interface as a protocol."""

import mmap
from typing import Any

import numpy.typing as npt

# What the kernel reads and writes through the buffer protocol.
Data = npt.NDArray[Any] | mmap.mmap | bytearray

Totals = tuple[float, float, float, int]  # (sum of squares, L1, max |x|, non-finite count)
# (max |b - a|, max |a|, max |cb - ca|, max |ca|, all equal) over the blocks that count
Comparison = tuple[float, float, float, float, bool]

def reduce_chunk(
    data: Data,
    dtype_code: int,
    count: int,
    row_width: int,
    columns: int,
    mode: int,
    out: Data,
) -> Totals: ...
def reduce_range(
    fd: int,
    offset: int,
    scratch: Data,
    dtype_code: int,
    count: int,
    row_width: int,
    columns: int,
    mode: int,
    out: Data,
) -> Totals: ...
def check_values(
    old: Data,
    new: Data,
    count: int,
    row_width: int,
    scalar: float,
    row_factors: Data,
    pattern: Data,
    unit: float,
    floor: float,
) -> tuple[int, int, float]: ...
def check_range(
    old_fd: int,
    old_offset: int,
    new_fd: int,
    new_offset: int,
    old_scratch: Data,
    new_scratch: Data,
    dtype_code: int,
    count: int,
    row_width: int,
    scalar: float,
    row_factors: Data,
    pattern: Data,
    unit: float,
    floor: float,
) -> tuple[int, int, float, float, float, float, int]: ...
def scale_chunk(
    data: Data,
    dtype_code: int,
    count: int,
    row_width: int,
    scalar: float,
    row_factors: Data,
    pattern: Data,
) -> None: ...
def details_range(
    fd: int,
    offset: int,
    scratch: Data,
    dtype_code: int,
    count: int,
    row_width: int,
    columns: int,
    row_out: Data,
    column_out: Data,
    mode: int = ...,
    out: Data = ...,
) -> Totals: ...
def square_products(
    data: Data,
    dtype_code: int,
    count: int,
    row_width: int,
    columns: int,
    mode: int,
    vector: Data,
    out: Data,
) -> None: ...
def maxima(
    data: Data,
    dtype_code: int,
    count: int,
    row_width: int,
    columns: int,
    row_out: Data,
    column_out: Data,
) -> None: ...
def shift_minima(
    bits: Data,
    count: int,
    row_width: int,
    columns: int,
    down_table: Data,
    up_table: Data,
    rows_down: Data,
    rows_up: Data,
    columns_down: Data,
    columns_up: Data,
) -> None: ...
def compare_range(
    fd_a: int,
    offset_a: int,
    scratch_a: Data,
    dtype_code_a: int,
    scalar_a: float,
    row_factors_a: Data,
    pattern_a: Data,
    fd_b: int,
    offset_b: int,
    scratch_b: Data,
    dtype_code_b: int,
    scalar_b: float,
    row_factors_b: Data,
    pattern_b: Data,
    count: int,
    row_width: int,
    block_rows: int,
    same_scale: bool,
) -> Comparison: ...
def compare_chunk(
    data_a: Data,
    dtype_code_a: int,
    scalar_a: float,
    row_factors_a: Data,
    pattern_a: Data,
    data_b: Data,
    dtype_code_b: int,
    scalar_b: float,
    row_factors_b: Data,
    pattern_b: Data,
    count: int,
    row_width: int,
    block_rows: int,
    same_scale: bool,
) -> Comparison: ...
