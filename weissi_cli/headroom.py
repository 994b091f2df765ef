"""Float16 power-of-two headroom: how far each row and column can be scaled without rounding.

A float16 value v = M·2^E (M odd) times 2^k is exact while E + k ≥ −24 (the spacing of
float16's subnormals) and |v|·2^k stays finite. Realistic float16 weights hold values below
2^−13 with low bits set in nearly every row, so halving them would round: a power-of-two
rebalance of float16 is exact only within this headroom. bfloat16 and float32 share the
exponent range of float32 (values would need to be below 2^−126 + k), so weissi measures
float16 only; verification reports any rounding that happens elsewhere.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from weissi_cli import chunking, kernel
from weissi_cli.io.checkpoint import Checkpoint, read_buffer

Shifts = npt.NDArray[np.int8]

# Shifts beyond this are reported as this: no solver moves a scale by 2^64.
MAX_SHIFT = 64
MEASURED_DTYPES = ("float16",)


@dataclass(frozen=True)
class Headroom:
    """Per index of axis 0 (rows) and axis 1 (columns; one entry for a 1-D tensor): the
    largest k such that every value there times 2^−k (down) and 2^k (up) is exact."""

    name: str
    shape: tuple[int, ...]
    rows_down: Shifts
    rows_up: Shifts
    columns_down: Shifts
    columns_up: Shifts

    @property
    def down(self) -> int:
        """The largest exact shift down of the whole tensor."""
        return int(self.rows_down.min(initial=MAX_SHIFT))

    @property
    def up(self) -> int:
        return int(self.rows_up.min(initial=MAX_SHIFT))


@functools.cache
def shift_tables() -> tuple[Shifts, Shifts]:
    """(down, up) per float16 bit pattern: the largest exact shift each way. Zero, ±inf and
    NaN scale to themselves, so they allow MAX_SHIFT."""
    values = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float64)
    fixed = ~np.isfinite(values) | (values == 0)
    tables = []
    for sign in (-1, 1):
        exact_so_far = np.ones(values.size, dtype=bool)
        allowed = np.zeros(values.size, dtype=np.int8)
        with np.errstate(over="ignore", invalid="ignore"):
            for shift in range(1, MAX_SHIFT + 1):
                scaled = np.ldexp(values, sign * shift)
                back = scaled.astype(np.float16).astype(np.float64)
                exact_so_far &= (back == scaled) | fixed
                allowed += exact_so_far
        tables.append(allowed)
    return tables[0], tables[1]


def measure_headroom(checkpoint: Checkpoint, names: Iterable[str]) -> dict[str, Headroom]:
    """The headroom of every float16 tensor among `names`, in one pass over whole rows."""
    down_table, up_table = shift_tables()
    found: dict[str, Headroom] = {}
    for name in names:
        info = checkpoint.info(name)
        if info.dtype not in MEASURED_DTYPES:
            continue
        rows = info.shape[0] if info.shape else 1
        columns = info.shape[1] if len(info.shape) > 1 else 1
        width = info.numel // rows if rows else 0
        limits = [np.full(size, MAX_SHIFT, np.int8) for size in (rows, columns, rows, columns)]
        if width:
            per_chunk = max(1, chunking.HEADROOM_ELEMENTS // width)
            buffer = read_buffer(per_chunk * width * info.itemsize)
            for row in range(0, rows, per_chunk):
                count = min(per_chunk, rows - row)
                raw = checkpoint.read_raw(name, row * width, count * width, buffer)
                bits = raw.view(np.uint16)
                rows_part = [limit[row : row + count] for limit in (limits[0], limits[2])]
                kernel.backend_for().shift_minima(
                    bits=bits,
                    count=count * width,
                    row_width=width,
                    columns=columns,
                    down_table=down_table,
                    up_table=up_table,
                    rows_down=rows_part[0],
                    rows_up=rows_part[1],
                    columns_down=limits[1],
                    columns_up=limits[3],
                )
        found[name] = Headroom(name, info.shape, limits[0], limits[2], limits[1], limits[3])
    return found
