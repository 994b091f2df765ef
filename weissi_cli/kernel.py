"""The kernel's typed interface, its two backends (the compiled C extension and numpy), and
the one place that chooses between them."""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import mmap
    from typing import Any, TypeAlias

    import numpy.typing as npt

    # What the kernel reads and writes through the buffer protocol.
    Data: TypeAlias = npt.NDArray[Any] | mmap.mmap | bytearray

DISABLE_VARIABLE = "WEISSI_NO_KERNEL"  # =1: the numpy backend does all the work

# The storage dtypes' codes. The C kernel reads the first two; the numpy backend all four.
DTYPE_CODES = {"float32": 0, "bfloat16": 1, "float16": 2, "float64": 3}
COMPILED_DTYPES = frozenset({"float32", "bfloat16"})
NO_AXES, ROWS, COLUMNS, MATRIX = 0, 1, 2, 3

# (sum of squares, L1, max |x|, non-finite count); float64 values whose squares would
# overflow or underflow float64 add a scale: the sum of squares is then of values / scale.
Totals = tuple[float, float, float, int] | tuple[float, float, float, int, float]
# (checked, bad, worst share) then the rewritten values' Totals
Checked = (
    tuple[int, int, float, float, float, float, int]
    | tuple[int, int, float, float, float, float, int, float]
)
# (max |b - a|, max |a|, max |cb - ca|, max |ca|, all equal) over the blocks that count
Comparison = tuple[float, float, float, float, bool]


class Kernel(Protocol):
    """What `_kernel.c` provides (its stub is `_kernel.pyi`) and `kernel_numpy.NumpyKernel`
    implements again: call it with keywords."""

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
    ) -> Checked: ...
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
        mode: int = ...,
        out: Data = ...,
    ) -> Totals: ...
    def square_products(
        self,
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


def numpy_kernel(exact: bool = False) -> Kernel:
    """The numpy backend; `exact` reduces every chunk in float64 (small tensors' statistics)."""
    return _numpy_kernel(exact)


@functools.cache
def _numpy_kernel(exact: bool) -> Kernel:
    from weissi_cli.kernel_numpy import NumpyKernel

    return NumpyKernel(exact=exact)


def backend_for(*dtypes: str, exact: bool = False, numpy: bool = False) -> Kernel:
    """The backend for data of these storage dtypes (none: no storage dtype is read, as for
    float16 shift tables or decoded float32 values): the compiled kernel where it was built
    and reads them all, else numpy. `exact` statistics (float64 throughout), and callers
    that count more from numpy's decoded values (`numpy`), take numpy."""
    if compiled is None or exact or numpy:
        return numpy_kernel(exact)
    if all(dtype in COMPILED_DTYPES for dtype in dtypes):
        return compiled
    return numpy_kernel(False)
