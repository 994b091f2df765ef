"""`diff`'s comparison of two blocks by numpy: the numpy backend's compare functions."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from weissi_cli.io.dtypes import FloatArray, decode

if TYPE_CHECKING:
    from weissi_cli.kernel import Comparison


def compare_block(
    raw_a: npt.NDArray[np.generic],
    raw_b: npt.NDArray[np.generic],
    dtype_a: str,
    dtype_b: str,
    factors_a: float | npt.NDArray[np.float64],
    factors_b: float | npt.NDArray[np.float64],
    same_scale: bool,
    widened: tuple[FloatArray, FloatArray] | None = None,
) -> Comparison | None:
    """One block of A against B, decoded to float64 so that the factors apply without
    rounding: (max |b - a|, max |a|, max |cb - ca|, max |ca|, equal), where ca and cb are
    the canonical values (each value times its factor) and equal says every value of A
    equals its B (two NaNs are equal). None when the block adds nothing: the factors are
    the same on both sides and every value equal. `widened` receives 16-bit values decoded
    to float32."""
    out_a, out_b = widened or (None, None)
    old = decode(raw_a, dtype_a, out_a).astype(np.float64, copy=False)
    new = decode(raw_b, dtype_b, out_b).astype(np.float64, copy=False)
    equal = bool(np.array_equal(old, new, equal_nan=True))
    if equal and same_scale:  # nothing differs, raw or canonical: skip the arithmetic
        return None
    if not old.size:
        return 0.0, 0.0, 0.0, 0.0, equal
    with np.errstate(invalid="ignore", over="ignore"):
        canon_a = old * np.asarray(factors_a).reshape(-1)
        canon_b = new * np.asarray(factors_b).reshape(-1)
        return (
            float(np.max(np.abs(new - old))),
            float(np.max(np.abs(old))),
            float(np.max(np.abs(canon_b - canon_a))),
            float(np.max(np.abs(canon_a))),
            equal,
        )


def nan_max(first: float, second: float) -> float:
    """The larger of two maxima, NaN when either is (a maximum over a NaN is NaN)."""
    return math.nan if math.isnan(first) or math.isnan(second) else max(first, second)


def _merge(first: Comparison | None, second: Comparison) -> Comparison:
    if first is None:
        return second
    maxima = [nan_max(a, b) for a, b in zip(first[:4], second[:4], strict=True)]
    return maxima[0], maxima[1], maxima[2], maxima[3], first[4] and second[4]


def compare_blocks(
    dtypes: tuple[str, str],
    read: Callable[[int, int, int], npt.NDArray[Any]],
    factors: Callable[[int, int, int], float | npt.NDArray[np.float64]],
    rows: int,
    width: int,
    block_rows: int,
    per_piece: int,
    same_scale: bool,
) -> Comparison:
    """Blocks of `block_rows` rows read `per_piece` rows at a time, the findings of those
    that count merged as the C kernel merges them: under the same factors, a block whose
    bytes are the same on both sides is not decoded, and one whose values are all equal adds
    nothing. `read(side, row, rows)` gives side 0's or 1's stored values of those rows,
    `factors(side, row, rows)` their factors (see `TensorScale.rows`)."""
    if block_rows <= 0:
        raise ValueError("rows must be whole and blocks at least a row")
    total: Comparison = (0.0, 0.0, 0.0, 0.0, True)
    for block in range(0, rows, block_rows):
        end = min(rows, block + block_rows)
        starts = range(block, end, per_piece)
        loaded: tuple[int, npt.NDArray[Any], npt.NDArray[Any]] | None = None
        if same_scale and dtypes[0] == dtypes[1]:
            same = True
            for row in starts:
                n = min(per_piece, end - row)
                loaded = (row, read(0, row, n), read(1, row, n))
                if not same_bytes(loaded[1], loaded[2]):
                    same = False
                    break
            if same:
                continue
        found: Comparison | None = None
        for row in starts:
            n = min(per_piece, end - row)
            if loaded is not None and loaded[0] == row and row == block:
                raw_a, raw_b = loaded[1], loaded[2]
            else:
                raw_a, raw_b = read(0, row, n), read(1, row, n)
            piece = compare_block(
                raw_a, raw_b, *dtypes, factors(0, row, n), factors(1, row, n), same_scale=False
            )
            assert piece is not None  # only equal blocks under the same factors are None
            found = _merge(found, piece)
        if found is None or (same_scale and found[4]):
            continue
        maxima = [nan_max(a, b) for a, b in zip(total[:4], found[:4], strict=True)]
        total = maxima[0], maxima[1], maxima[2], maxima[3], total[4] and found[4]
    return total


def same_bytes(first: npt.NDArray[Any], second: npt.NDArray[Any]) -> bool:
    """Whether two raw blocks hold the same bytes (floats compared as integers: a NaN is
    its own bit pattern), eight bytes at a time where the length allows (3x faster)."""
    if first.nbytes != second.nbytes:
        return False
    word = np.uint64 if first.nbytes % 8 == 0 else np.uint8
    return bool(np.array_equal(first.view(word), second.view(word)))
