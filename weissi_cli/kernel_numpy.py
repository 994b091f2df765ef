"""The kernel's functions in numpy: the backend where the C extension is absent or does not fit."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from weissi_cli.io.dtypes import decode, raw_numpy_dtype
from weissi_cli.kernel import COLUMNS, DTYPE_CODES, MATRIX, NO_AXES, ROWS, Kernel
from weissi_cli.numpy_compare import compare_blocks
from weissi_cli.numpy_reduce import ChunkReducer, Partial, add_partials
from weissi_cli.numpy_scaling import ChunkScaler

if TYPE_CHECKING:
    from weissi_cli.kernel import Checked, Comparison, Data, Totals

FloatArray = npt.NDArray[np.floating]
DTYPE_NAMES = {code: name for name, code in DTYPE_CODES.items()}
# The bits of a value's magnitude, per dtype code (as raw_numpy_dtype's unsigned twin).
_MAGNITUDE = {0: (np.uint32, 0x7FFFFFFF), 1: (np.uint16, 0x7FFF), 2: (np.uint16, 0x7FFF)}
_NO_LIMIT = np.iinfo(np.int8).max


class _Buffers(threading.local):
    """Each thread's reusable buffers, grown to the largest chunk it has seen."""

    reducer: ChunkReducer | None = None
    scaler: ChunkScaler | None = None
    widened: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None = None
    squared: tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]] | None = None

    def reducer_for(self, count: int) -> ChunkReducer:
        if self.reducer is None or self.reducer.capacity < count:
            self.reducer = ChunkReducer(max(count, 1))
        return self.reducer

    def scaler_for(self, count: int) -> ChunkScaler:
        if self.scaler is None or self.scaler.product.size < count:
            self.scaler = ChunkScaler(max(count, 1))
        return self.scaler

    def widened_for(self, count: int, slot: int) -> npt.NDArray[np.float32]:
        if self.widened is None or self.widened[0].size < count:
            self.widened = (
                np.empty(max(count, 1), np.float32),
                np.empty(max(count, 1), np.float32),
            )
        return self.widened[slot]

    def squares_for(self, count: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
        """`stored_squares`' float32 squares and their float64 copy, `count` long."""
        if self.squared is None or self.squared[0].size < count:
            self.squared = (np.empty(max(count, 1), np.float32), np.empty(max(count, 1)))
        return self.squared[0][:count], self.squared[1][:count]


_BUFFERS = _Buffers()


def _name(code: int) -> str:
    if code not in DTYPE_NAMES:
        raise ValueError("unknown dtype code")
    return DTYPE_NAMES[code]


def _itemsize(code: int) -> int:
    return raw_numpy_dtype(_name(code)).itemsize


def _bytes(data: Any) -> memoryview:
    """A buffer's bytes (numpy arrays, mmaps, bytearrays and memoryviews alike)."""
    return memoryview(data).cast("B")


def _nbytes(data: Any) -> int:
    return _bytes(data).nbytes


def _raw(data: Data | memoryview, code: int, count: int, offset: int = 0) -> npt.NDArray[Any]:
    """`count` stored values of dtype `code` from element `offset` of `data`, as a view."""
    if _nbytes(data) < (offset + count) * _itemsize(code):
        raise ValueError("buffer smaller than count")
    dtype = raw_numpy_dtype(_name(code))
    return np.frombuffer(data, dtype, count, offset * dtype.itemsize)


def _decoded(raw: npt.NDArray[Any], code: int, slot: int = 0) -> FloatArray:
    """The exact values as float32 (float64 for float64 storage), in a thread buffer."""
    return decode(raw, _name(code), _BUFFERS.widened_for(raw.size, slot))


def _doubles(out: Data) -> npt.NDArray[np.float64]:
    return np.frombuffer(out, np.float64)


def _totals(partial: Partial) -> Totals:
    if partial.scale == 1.0:
        return partial.sum_squares, partial.l1, partial.max_abs, partial.nonfinite
    return partial.sum_squares, partial.l1, partial.max_abs, partial.nonfinite, partial.scale


def _whole_rows(count: int, row_width: int, columns: int = 1) -> None:
    if count < 0 or row_width <= 0 or count % row_width or columns <= 0 or row_width % columns:
        raise ValueError("rows must be whole and columns must divide the row width")


def _factor_arrays(row_factors: Data, pattern: Data, rows: int, row_width: int) -> tuple[Any, Any]:
    """The row factors and pattern as float64 arrays (empty: ones), checked for length."""
    factors, along = np.frombuffer(row_factors, np.float64), np.frombuffer(pattern, np.float64)
    if factors.size and factors.size < rows:
        raise ValueError("row factors shorter than the rows")
    if along.size and along.size < row_width:
        raise ValueError("pattern shorter than a row")
    return factors[:rows] if factors.size else None, along[:row_width] if along.size else None


def element_factors(
    rows: npt.NDArray[np.float64] | None, scalar: float, pattern: Any, count: int, width: int
) -> float | npt.NDArray[np.float64]:
    """Factor of element (r, k) = rows[r] · pattern[k] (the scalar standing in for absent
    rows; an absent pattern for ones), flattened: the products the C kernel forms."""
    if pattern is None:
        return scalar if rows is None else np.repeat(rows, width)
    per_row = np.full(count // width, scalar) if rows is None else rows
    products: npt.NDArray[np.float64] = np.multiply.outer(per_row, pattern).reshape(-1)
    return products


def read_fully(fd: int, view: memoryview, offset: int) -> None:
    """Fill `view` from `fd` at `offset`; EOFError where the file ends first."""
    have = 0
    while have < view.nbytes:
        got = os.preadv(fd, [view[have:]], offset + have)
        if got <= 0:
            raise EOFError("a file ended before the tensor's data")
        have += got


def _pieces(count: int, unit: int, scratch: Data, itemsize: int) -> tuple[memoryview, int]:
    """The scratch as bytes, and how many values (whole units) one read takes."""
    view = _bytes(scratch)
    per_piece = view.nbytes // (unit * itemsize) * unit
    if per_piece < unit and count:
        raise ValueError("scratch smaller than a row")
    return view, max(per_piece, unit)


@np.errstate(invalid="ignore", over="ignore", divide="ignore", under="ignore")
def check_shares(
    old: FloatArray, new: FloatArray, factor: float | FloatArray, unit: float, floor: float
) -> tuple[int, int, float]:
    """(checked, bad, worst) of |new − f·old| against |new|·unit + floor, in the values'
    own dtype: the values outside their allowance (NaN counts) and the largest share of an
    allowance among the others."""
    share = np.multiply(old, np.asarray(factor, dtype=old.dtype))
    np.subtract(new, share, out=share)
    np.abs(share, out=share)  # the deviation ...
    allowance = np.abs(new)
    np.multiply(allowance, unit, out=allowance)
    allowance += floor  # ... and its allowance
    np.divide(share, allowance, out=share)
    top = float(share.max()) if share.size else 0.0
    if top <= 1.0:  # the common case: one reduction
        return share.size, 0, top
    worst = float(np.fmax.reduce(share, initial=0.0))
    return share.size, int(np.count_nonzero(~(share <= 1.0))), worst


@dataclass(frozen=True)
class _Side:
    """One side of a comparison: its dtype and factors (see `element_factors`)."""

    code: int
    scalar: float
    rows: npt.NDArray[np.float64] | None
    pattern: Any

    def factors(self, row: int, count: int, width: int) -> float | npt.NDArray[np.float64]:
        rows = None if self.rows is None else self.rows[row : row + count]
        return element_factors(rows, self.scalar, self.pattern, count * width, width)


def _side(
    code: int, scalar: float, row_factors: Data, pattern: Data, rows: int, width: int
) -> _Side:
    if code not in _MAGNITUDE:
        raise ValueError("the comparison reads float32, bfloat16 or float16")
    factors, along = _factor_arrays(row_factors, pattern, rows, width)
    return _Side(code, scalar, factors, along)


@np.errstate(over="ignore", under="ignore", invalid="ignore")
def stored_squares(values: FloatArray, rows: int, columns: int) -> npt.NDArray[np.float64]:
    """Decoded values' [rows, columns] squares as the statistics pass stores them: float32,
    summed over the axes after the second, non-finite values counted as 0; in float64 (a
    thread buffer, valid until the thread's next call)."""
    count = values.size
    if values.dtype == np.float32 and count == rows * columns:
        single, double = _BUFFERS.squares_for(count)
        # a float32 square is the float64 square rounded once: what the pass stores
        np.multiply(values, values, out=single)
        if np.isfinite(single.max(initial=0.0)):
            np.copyto(double, single)
            return double.reshape(rows, columns)
    wide = np.square(values.astype(np.float64))
    wide[~np.isfinite(values)] = 0.0
    inner = count // (rows * columns) if rows * columns else 1
    summed: npt.NDArray[np.float64] = wide.reshape(rows, columns, inner).sum(axis=2)
    return summed.astype(np.float32).astype(np.float64)


@dataclass(frozen=True)
class NumpyKernel:
    """`kernel.Kernel` by numpy, for every dtype code; `exact` reduces each chunk in float64.

    Its numerics are numpy's (float32 rows of 256 values summed in float64, the check in
    the values' own dtype); its results, their layout and its errors are the C kernel's.
    The *_range functions read as many whole rows at a time as the scratch holds."""

    exact: bool = False

    def reduce_chunk(
        self,
        data: Data,
        dtype_code: int,
        count: int,
        row_width: int,
        columns: int,
        mode: int,
        out: Data,
    ) -> Totals:
        return _totals(self._reduce(data, dtype_code, count, row_width, columns, mode, out))

    def _reduce(
        self,
        data: Data | memoryview,
        code: int,
        count: int,
        row_width: int,
        columns: int,
        mode: int,
        out: Data | npt.NDArray[np.float64],
    ) -> Partial:
        if mode not in (NO_AXES, ROWS, COLUMNS, MATRIX):
            raise ValueError("unknown mode")
        if mode != NO_AXES:
            _whole_rows(count, row_width, columns)
        if count < 0:
            raise ValueError("negative count")
        values = _decoded(_raw(data, code, count), code)
        rows = count // row_width if mode != NO_AXES else 0
        needed = {ROWS: rows, COLUMNS: columns, MATRIX: rows * columns}.get(mode, 0)
        sums = _doubles(out)
        if sums.size < needed:
            raise ValueError("output too small")
        reducer = _BUFFERS.reducer_for(count)
        partial = reducer.reduce(values, exact=self.exact)
        if needed and rows:  # no rows: the C kernel leaves `out` as it was
            reducer.axis_sums(values, partial, self.exact, rows, columns, mode, sums)
        return partial

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
    ) -> Totals:
        unit = 1 if mode == NO_AXES else max(row_width, 1)
        sums = _doubles(out)
        if mode == COLUMNS and sums.size < 2 * columns:
            raise ValueError("output too small")
        return self._reduce_pieces(
            fd, offset, scratch, dtype_code, count, (row_width, columns, unit), mode, sums
        )

    def _reduce_pieces(
        self,
        fd: int,
        offset: int,
        scratch: Data,
        dtype_code: int,
        count: int,
        layout: tuple[int, int, int],
        mode: int,
        sums: npt.NDArray[np.float64],
        each_piece: Callable[[memoryview, int, int], None] | None = None,
    ) -> Totals:
        """The *_range functions' loop: pieces of whole `unit`s (`layout` is row width,
        columns and unit) read into `scratch`, reduced into `sums` by `mode`, and handed to
        `each_piece(piece, values, first row)`."""
        row_width, columns, unit = layout
        itemsize = _itemsize(dtype_code)
        view, per_piece = _pieces(count, unit, scratch, itemsize)
        total = Partial(0.0, 0.0, 0.0, 0)
        for done in range(0, count, per_piece):
            n = min(per_piece, count - done)
            read_fully(fd, view[: n * itemsize], offset + done * itemsize)
            row = done // unit
            target = {ROWS: sums[row:], MATRIX: sums[row * columns :]}.get(
                mode, sums[columns:] if done else sums
            )
            piece = self._reduce(view, dtype_code, n, row_width, columns, mode, target)
            if mode == COLUMNS and done:
                sums[:columns] += sums[columns : 2 * columns]
            total = add_partials(total, piece)
            if each_piece is not None:
                each_piece(view, n, row)
        return _totals(total)

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
    ) -> tuple[int, int, float]:
        """The C kernel's check of float32 values; float64 arrays are checked in float64."""
        _whole_rows(count, row_width)
        code = 3 if isinstance(old, np.ndarray) and old.dtype == np.float64 else 0
        before, after = _raw(old, code, count), _raw(new, code, count)
        rows = count // row_width
        factors, along = _factor_arrays(row_factors, pattern, rows, row_width)
        per_row = None if factors is None else scalar * factors
        factor = element_factors(per_row, scalar, along, count, row_width)
        return check_shares(before, after, factor, unit, floor)

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
    ) -> Checked:
        _whole_rows(count, row_width)
        itemsize = _itemsize(dtype_code)
        rows = count // row_width
        factors, along = _factor_arrays(row_factors, pattern, rows, row_width)
        old_view, per_piece = _pieces(count, row_width, old_scratch, itemsize)
        new_view, per_new = _pieces(count, row_width, new_scratch, itemsize)
        per_piece = min(per_piece, per_new)
        checked, bad, worst = 0, 0, 0.0
        measured = Partial(0.0, 0.0, 0.0, 0)
        for done in range(0, count, per_piece):
            n = min(per_piece, count - done)
            skip = done * itemsize
            read_fully(old_fd, old_view[: n * itemsize], old_offset + skip)
            read_fully(new_fd, new_view[: n * itemsize], new_offset + skip)
            before = _decoded(_raw(old_view, dtype_code, n), dtype_code, 0)
            after = _decoded(_raw(new_view, dtype_code, n), dtype_code, 1)
            row = done // row_width
            per_row = None if factors is None else scalar * factors[row : row + n // row_width]
            factor = element_factors(per_row, scalar, along, n, row_width)
            found = check_shares(before, after, factor, unit, floor)
            checked, bad, worst = checked + found[0], bad + found[1], max(worst, found[2])
            reducer = _BUFFERS.reducer_for(n)
            measured = add_partials(measured, reducer.reduce(after, exact=self.exact))
        return (checked, bad, worst, *_totals(measured))

    def scale_chunk(
        self,
        data: Data,
        dtype_code: int,
        count: int,
        row_width: int,
        scalar: float,
        row_factors: Data,
        pattern: Data,
    ) -> None:
        _whole_rows(count, row_width)
        raw = _raw(data, dtype_code, count)
        rows = count // row_width
        factors, along = _factor_arrays(row_factors, pattern, rows, row_width)
        per_row = None if factors is None else scalar * factors
        factor = element_factors(per_row, scalar, along, count, row_width)
        scaled = _BUFFERS.scaler_for(count).scale(raw, _name(dtype_code), factor)
        if not np.shares_memory(scaled, raw):
            np.copyto(raw, scaled.view(raw.dtype))

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
        mode: int = NO_AXES,
        out: Data | None = None,
    ) -> Totals:
        _whole_rows(count, row_width, columns)
        if mode not in (NO_AXES, ROWS, COLUMNS, MATRIX):
            raise ValueError("unknown mode")
        row_maxima, column_maxima = self._maxima_outputs(
            count, row_width, columns, row_out, column_out
        )
        rows = count // row_width
        needed = {ROWS: rows, COLUMNS: 2 * columns, MATRIX: rows * columns}.get(mode, 0)
        sums = _doubles(out) if out is not None else np.zeros(0)
        if sums.size < needed:
            raise ValueError("output too small")

        def marks(piece: memoryview, values: int, row: int) -> None:
            self._maxima(piece, dtype_code, values, row_width, columns, row_maxima[row:],
                         column_maxima)  # fmt: skip

        return self._reduce_pieces(
            fd, offset, scratch, dtype_code, count, (row_width, columns, row_width), mode, sums,
            marks,
        )  # fmt: skip

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
    ) -> None:
        _whole_rows(count, row_width, columns)
        if mode not in (ROWS, COLUMNS):
            raise ValueError("square_products takes ROWS or COLUMNS")
        rows = count // row_width
        weights, sums = _doubles(vector), _doubles(out)
        wanted, given = (columns, rows) if mode == ROWS else (rows, columns)
        if weights.size < wanted or sums.size < given:
            raise ValueError("vector or output too small")
        squares = stored_squares(_decoded(_raw(data, dtype_code, count), dtype_code), rows, columns)
        if mode == ROWS:
            np.dot(squares, weights[:columns], out=sums[:rows])
        else:
            sums[:columns] = weights[:rows] @ squares

    def maxima(
        self,
        data: Data,
        dtype_code: int,
        count: int,
        row_width: int,
        columns: int,
        row_out: Data,
        column_out: Data,
    ) -> None:
        _whole_rows(count, row_width, columns)
        outputs = self._maxima_outputs(count, row_width, columns, row_out, column_out)
        self._maxima(data, dtype_code, count, row_width, columns, *outputs)

    @staticmethod
    def _maxima_outputs(
        count: int, row_width: int, columns: int, row_out: Data, column_out: Data
    ) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint32]]:
        rows_view, columns_view = (
            np.frombuffer(row_out, np.uint32),
            np.frombuffer(column_out, np.uint32),
        )
        if rows_view.size < count // row_width or columns_view.size < columns:
            raise ValueError("output too small")
        return rows_view, columns_view

    @staticmethod
    def _maxima(
        data: Data | memoryview,
        code: int,
        count: int,
        row_width: int,
        columns: int,
        row_out: npt.NDArray[np.uint32],
        column_out: npt.NDArray[np.uint32],
    ) -> None:
        """Per row and, max-accumulated, per column: the largest magnitude's bits (float64's
        top half, its last bit set where the bottom half is not: zero only for ±0)."""
        if code == 3:
            bits = _raw(data, code, count).view(np.uint64) & np.uint64(0x7FFFFFFFFFFFFFFF)
            low = (bits & np.uint64(0xFFFFFFFF)) != 0
            magnitudes = (bits >> np.uint64(32)).astype(np.uint32) | low.astype(np.uint32)
        elif code in _MAGNITUDE:
            unsigned, mask = _MAGNITUDE[code]
            raw = _raw(data, code, count).view(unsigned)
            magnitudes = (raw & unsigned(mask)).astype(np.uint32, copy=False)
        else:
            raise ValueError("unknown dtype code")
        rows = count // row_width
        shaped = magnitudes.reshape(rows, columns, row_width // columns)
        row_out[:rows] = shaped.max(axis=(1, 2), initial=0)
        np.maximum(
            column_out[:columns], shaped.max(axis=(0, 2), initial=0), out=column_out[:columns]
        )

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
    ) -> None:
        _whole_rows(count, row_width, columns)
        rows = count // row_width
        values = _raw(bits, DTYPE_CODES["bfloat16"], count).reshape(
            rows, columns, -1 if rows else 1
        )
        tables = [np.frombuffer(table, np.int8) for table in (down_table, up_table)]
        if any(table.size < 1 << 16 for table in tables):
            raise ValueError("tables too small")
        outputs = [
            np.frombuffer(out, np.int8) for out in (rows_down, rows_up, columns_down, columns_up)
        ]
        if (
            min(outputs[0].size, outputs[1].size) < rows
            or min(outputs[2].size, outputs[3].size) < columns
        ):
            raise ValueError("output too small")
        for table, row_part, column_part in zip(tables, outputs[:2], outputs[2:], strict=True):
            shifts = table[values]
            np.minimum(
                row_part[:rows], shifts.min(axis=(1, 2), initial=_NO_LIMIT), out=row_part[:rows]
            )
            column_min = shifts.min(axis=(0, 2), initial=_NO_LIMIT)
            np.minimum(column_part[:columns], column_min, out=column_part[:columns])

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
    ) -> Comparison:
        if fd_a < 0 or fd_b < 0:
            raise ValueError("negative file descriptor")
        _whole_rows(count, row_width)
        sides = (
            _side(dtype_code_a, scalar_a, row_factors_a, pattern_a, count // row_width, row_width),
            _side(dtype_code_b, scalar_b, row_factors_b, pattern_b, count // row_width, row_width),
        )
        places = ((fd_a, offset_a, scratch_a), (fd_b, offset_b, scratch_b))
        views = [_bytes(scratch) for _, _, scratch in places]
        widest = max(_itemsize(side.code) for side in sides)
        per_piece = min(block_rows, min(view.nbytes for view in views) // (row_width * widest))
        if per_piece < 1:
            raise ValueError("scratch smaller than a piece")

        def read(side: int, row: int, rows: int) -> npt.NDArray[Any]:
            fd, offset, _ = places[side]
            itemsize = _itemsize(sides[side].code)
            view = views[side][: rows * row_width * itemsize]
            read_fully(fd, view, offset + row * row_width * itemsize)
            return _raw(view, sides[side].code, rows * row_width)

        return _compare(
            sides, read, count // row_width, row_width, block_rows, per_piece, same_scale
        )

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
    ) -> Comparison:
        _whole_rows(count, row_width)
        rows = count // row_width
        sides = (
            _side(dtype_code_a, scalar_a, row_factors_a, pattern_a, rows, row_width),
            _side(dtype_code_b, scalar_b, row_factors_b, pattern_b, rows, row_width),
        )
        raws = (_raw(data_a, dtype_code_a, count), _raw(data_b, dtype_code_b, count))

        def read(side: int, row: int, rows: int) -> npt.NDArray[Any]:
            return raws[side][row * row_width : (row + rows) * row_width]

        return _compare(sides, read, rows, row_width, block_rows, block_rows, same_scale)


def _compare(
    sides: tuple[_Side, _Side],
    read: Callable[[int, int, int], npt.NDArray[Any]],
    rows: int,
    width: int,
    block_rows: int,
    per_piece: int,
    same_scale: bool,
) -> Comparison:
    def factors(side: int, row: int, count: int) -> float | npt.NDArray[np.float64]:
        return sides[side].factors(row, count, width)

    dtypes = _name(sides[0].code), _name(sides[1].code)
    return compare_blocks(dtypes, read, factors, rows, width, block_rows, per_piece, same_scale)


_: Kernel = NumpyKernel()  # mypy checks the numpy backend against the interface here
