"""The compiled kernel when it was built, else None (numpy does the work): its typed
interface, and the one place that chooses it."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import mmap
    from typing import Any, TypeAlias

    import numpy.typing as npt

    # What the kernel reads and writes through the buffer protocol.
    Data: TypeAlias = npt.NDArray[Any] | mmap.mmap | bytearray

DISABLE_VARIABLE = "WEISSI_NO_KERNEL"  # =1: use the numpy kernel (tests compare the two)

# Codes the C kernel takes for the storage dtypes it reads directly.
DTYPE_CODES = {"float32": 0, "bfloat16": 1}
NO_AXES, ROWS, COLUMNS, MATRIX = 0, 1, 2, 3

Totals = tuple[float, float, float, int]  # (sum of squares, L1, max |x|, non-finite count)
# (max |b - a|, max |a|, max |cb - ca|, max |ca|, all equal) over the blocks that count
Comparison = tuple[float, float, float, float, bool]


class Kernel(Protocol):
    """What `_kernel.c` provides (its stub is `_kernel.pyi`): call it with keywords."""

    def reduce_chunk(
        self,
        data: Data,
        dtype_code: int,
        count: int,
        row_width: int,
        columns: int,
        mode: int,
        out: Data,
    ) -> Totals: ...
    def reduce_range(
        self,
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
        self,
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
        self,
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
        self,
        data: Data,
        dtype_code: int,
        count: int,
        row_width: int,
        scalar: float,
        row_factors: Data,
        pattern: Data,
    ) -> None: ...
    def details_range(
        self,
        fd: int,
        offset: int,
        scratch: Data,
        dtype_code: int,
        count: int,
        row_width: int,
        columns: int,
        row_out: Data,
        column_out: Data,
    ) -> Totals: ...
    def maxima(
        self,
        data: Data,
        dtype_code: int,
        count: int,
        row_width: int,
        columns: int,
        row_out: Data,
        column_out: Data,
    ) -> None: ...
    def shift_minima(
        self,
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
        self,
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
        self,
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


def _load() -> Kernel | None:
    if os.environ.get(DISABLE_VARIABLE) == "1":
        return None
    try:
        from weissi_cli import _kernel
    except ImportError:
        return None
    return _kernel


compiled: Kernel | None = _load()
AVAILABLE = compiled is not None
