"""Statistics of decoded chunks by numpy: sums of squares, L1, max |x| and axis squares.

Each chunk is reduced while it is in cache, in its own precision (float32 for 32- and
16-bit storage) as rows of 256 values, and the row partials are summed in float64:
whole-tensor float32 reductions are off by percents on large tensors, and even one
float32 dot per megabyte drifts by 1e-5; rows keep the error near 1e-7.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from weissi_cli.kernel import COLUMNS, ROWS

# Chunks are reduced as rows of this many elements: each row's float32 sum is accurate
# (~1e-7) where one float32 dot over a whole chunk drifts by up to ~1e-5.
ROW = 256
# Where float32 squares and their row sums can neither overflow nor underflow.
SAFE_LOW, SAFE_HIGH = 2.0**-50, 2.0**56
FLOAT64_SAFE_LOW, FLOAT64_SAFE_HIGH = 2.0**-400, 2.0**400


# Per-chunk partial results are NamedTuples, not dataclasses: a pass makes hundreds of
# them, and defining a frozen dataclass costs about 1 ms of every command's start-up on
# this machine (its methods are generated and compiled at import).
class Partial(NamedTuple):
    """Statistics of one chunk, combined into a tensor's TensorStats."""

    sum_squares: float  # of values / scale
    l1: float
    max_abs: float
    nonfinite: int
    scale: float = 1.0


class ChunkReducer:
    """Statistics of chunks of up to `capacity` values, with reusable buffers."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.magnitudes: dict[np.dtype[np.floating], npt.NDArray[np.floating]] = {
            np.dtype(np.float32): np.empty(capacity, np.float32),
            np.dtype(np.float64): np.empty(capacity, np.float64),
        }
        self.ones: dict[np.dtype[np.floating], npt.NDArray[np.floating]] = {
            np.dtype(np.float32): np.ones(ROW, np.float32),
            np.dtype(np.float64): np.ones(ROW, np.float64),
        }

    def reduce(self, values: npt.NDArray[np.floating], exact: bool = False) -> Partial:
        """Sum of squares, L1 and max |x| of a float32/float64 chunk (partials in float64)."""
        count = values.size
        if exact or count < ROW:
            with np.errstate(invalid="ignore"):  # a signalling NaN widens to a quiet one
                wide = values.astype(np.float64)
            return reduce_float64(wide)
        magnitudes = np.abs(values, out=self.magnitudes[values.dtype][:count])
        largest = float(magnitudes.max())
        if largest == 0.0:
            return Partial(0.0, 0.0, 0.0, 0)
        if not SAFE_LOW <= largest <= SAFE_HIGH:
            # NaN, Inf, or values whose squares would overflow/underflow float32.
            return reduce_float64(values.astype(np.float64))
        body = count - count % ROW
        rows = values[:body].reshape(-1, ROW)
        sum_squares = float((rows[:, None, :] @ rows[:, :, None]).sum(dtype=np.float64))
        l1 = float(
            (magnitudes[:body].reshape(-1, ROW) @ self.ones[values.dtype]).sum(dtype=np.float64)
        )
        if body < count:
            tail = reduce_float64(values[body:].astype(np.float64))
            sum_squares += tail.sum_squares
            l1 += tail.l1
        return Partial(sum_squares, l1, largest, 0)

    @np.errstate(over="ignore", under="ignore", invalid="ignore")
    def axis_sums(
        self,
        values: npt.NDArray[np.floating],
        partial: Partial,
        exact: bool,
        rows: int,
        columns: int,
        mode: int,
        out: npt.NDArray[np.float64],
    ) -> None:
        """The sums of squares a `mode` asks for (see `kernel.Kernel.reduce_chunk`), written
        to `out`: per-row sums along the contiguous axis are pairwise float32 sums (accurate
        to ~1e-7), sums over rows are taken in float64; non-finite values count as 0, as
        the statistics report them."""
        safe = SAFE_LOW <= partial.max_abs <= SAFE_HIGH and partial.nonfinite == 0
        if exact or not safe or values.dtype != np.float32:
            squares = np.square(values.astype(np.float64))
            squares[~np.isfinite(squares)] = 0.0
        else:
            buffer = self.magnitudes[values.dtype][: values.size]
            squares = np.multiply(values, values, out=buffer)
        matrix = squares.reshape(rows, columns, -1)
        if mode == ROWS:
            out[:rows] = matrix.reshape(rows, -1).sum(axis=1)
        elif mode == COLUMNS:
            out[:columns] = matrix.sum(axis=(0, 2), dtype=np.float64)
        else:
            out[: rows * columns] = matrix.sum(axis=2).reshape(-1)


@np.errstate(over="ignore", under="ignore")
def reduce_float64(values: npt.NDArray[np.float64]) -> Partial:
    """Exact-as-float64 statistics of the finite values, safe from overflow."""
    finite = np.isfinite(values)
    nonfinite = int(values.size - np.count_nonzero(finite))
    if nonfinite:
        values = values[finite]
    if values.size == 0:
        return Partial(0.0, 0.0, 0.0, nonfinite)
    magnitudes = np.abs(values)
    largest = float(magnitudes.max())
    if largest == 0.0:
        return Partial(0.0, 0.0, 0.0, nonfinite)
    if FLOAT64_SAFE_LOW <= largest <= FLOAT64_SAFE_HIGH:
        return Partial(
            float(np.dot(magnitudes, magnitudes)), float(magnitudes.sum()), largest, nonfinite
        )
    scaled = magnitudes / largest  # squares of these cannot overflow or underflow
    return Partial(
        float(np.dot(scaled, scaled)), float(magnitudes.sum()), largest, nonfinite, largest
    )


def add_partials(first: Partial, second: Partial) -> Partial:
    """Two chunks' statistics as one (squares under the larger scale of those with any)."""
    parts = [part for part in (first, second) if part.sum_squares > 0]
    scale = max((part.scale for part in parts), default=1.0)
    return Partial(
        sum(part.sum_squares * (part.scale / scale) ** 2 for part in parts),
        first.l1 + second.l1,
        max(first.max_abs, second.max_abs),
        first.nonfinite + second.nonfinite,
        scale,
    )
