"""`diff`'s comparison of two checkpoints' tensors, raw and after rebalancing both sides."""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from weissi_cli import chunking, kernel
from weissi_cli.io.checkpoint import Checkpoint, ReadBuffer, ended_early, read_buffer
from weissi_cli.io.dtypes import FloatArray, decode
from weissi_cli.progress import Stage
from weissi_cli.scales import NO_FACTORS, TensorScale, Vector
from weissi_cli.threads import run_round_robin
from weissi_cli.verify_pairs import Block, PairBuffers, row_blocks

# (max |b - a|, max |a|, max |cb - ca|, max |ca|, all values equal) of compared blocks, as
# the kernel's comparison returns them.
Found = kernel.Comparison


class Totals:
    """One tensor's comparison so far, merged from its blocks under a lock: the maxima of
    the blocks that count (see `compare_block`), 0.0 and equal when none does."""

    def __init__(self) -> None:
        self.difference = self.largest = self.canonical = self.canonical_largest = 0.0
        self.bitwise = True
        self.lock = threading.Lock()

    def add(self, found: Found) -> None:
        difference, largest, canonical, top, equal = found
        with self.lock:
            self.difference = _max(self.difference, difference)
            self.largest = _max(self.largest, largest)
            self.canonical = _max(self.canonical, canonical)
            self.canonical_largest = _max(self.canonical_largest, top)
            self.bitwise = self.bitwise and equal


def compare_tensors(
    a: Checkpoint,
    b: Checkpoint,
    names: Sequence[str],
    scales_a: Mapping[str, TensorScale],
    scales_b: Mapping[str, TensorScale],
    threads: int = 2,
) -> dict[str, Totals]:
    """Every tensor of `names` in A against B (same shapes), as `compare_block` compares
    them block by block. Tensors the C kernel can read from both files go through it, all
    of them on one set of threads, each thread reading both files in cache-sized pieces;
    the others through numpy."""
    totals = {name: Totals() for name in names}
    tasks: list[_Task] = []
    by_numpy = []
    for name in names:
        shape = a.info(name).shape
        scale_a = scales_a.get(name) or TensorScale(shape)
        scale_b = scales_b.get(name) or TensorScale(shape)
        found = _kernel_tasks(a, b, name, scale_a, scale_b, totals[name])
        if found is None:
            by_numpy.append((name, scale_a, scale_b))
        else:
            tasks += found
    total = sum(a.info(name).nbytes + b.info(name).nbytes for name in names)
    with Stage("comparing", total) as stage:
        if tasks:
            scratch_bytes = max(1 << 20, *(task.row_bytes for task in tasks))

            def run(task: _Task, scratch: tuple[ReadBuffer, ReadBuffer]) -> None:
                task.run(scratch)
                stage.advance(task.nbytes)

            run_round_robin(
                tasks,
                lambda: (read_buffer(scratch_bytes), read_buffer(scratch_bytes)),
                run,
                threads,
            )
        for name, scale_a, scale_b in by_numpy:
            _compare_in_numpy(a, b, name, scale_a, scale_b, totals[name], threads)
            stage.advance(a.info(name).nbytes + b.info(name).nbytes)
    return totals


def compare_block(
    raw_a: npt.NDArray[np.generic],
    raw_b: npt.NDArray[np.generic],
    dtype_a: str,
    dtype_b: str,
    factors_a: float | Vector,
    factors_b: float | Vector,
    same_scale: bool,
    widened: tuple[FloatArray, FloatArray] | None = None,
) -> Found | None:
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


def kernel_factors(scale: TensorScale) -> tuple[float, Vector, Vector] | None:
    """(scalar, row factors, pattern) for the kernel, whose factor of element (r, k) is
    rows[r] · pattern[k] (the scalar standing in for absent rows, an absent pattern for
    ones): the one product numpy rounds last in `TensorScale.rows`, the scalar folded
    into the side numpy multiplies it with. None when the rows come neither first among
    one other axis nor last, which no single product reproduces."""
    if not scale.vectors:
        return scale.scalar, NO_FACTORS, NO_FACTORS
    axes = list(scale.vectors)
    others = {axis: vector for axis, vector in scale.vectors.items() if axis != 0}
    if 0 not in scale.vectors:
        return 1.0, NO_FACTORS, _pattern(TensorScale(scale.shape, scale.scalar, others))
    rows = np.ascontiguousarray(scale.vectors[0], np.float64)
    if not others:
        return 1.0, np.ascontiguousarray(scale.scalar * rows), NO_FACTORS
    if axes[0] == 0 and len(others) == 1 and scale.row_pattern is not None:
        return 1.0, np.ascontiguousarray(scale.scalar * rows), scale.row_pattern
    if axes[-1] == 0:
        return 1.0, rows, _pattern(TensorScale(scale.shape, scale.scalar, others))
    return None


def same_factors(first: TensorScale, second: TensorScale) -> bool:
    """Whether two scales multiply every element by the same factor (bit for bit)."""
    if first.scalar != second.scalar or first.vectors.keys() != second.vectors.keys():
        return False
    return all(np.array_equal(first.vectors[axis], second.vectors[axis]) for axis in first.vectors)


def _pattern(scale: TensorScale) -> Vector:
    return np.ascontiguousarray(scale.rows(0, 1), np.float64)


@dataclass(frozen=True)
class _Side:
    """One file's share of a kernel task: where the tensor lies, its dtype and factors."""

    fd: int
    offset: int
    path: str
    dtype: int
    itemsize: int
    scalar: float
    rows: Vector
    pattern: Vector

    def row_factors(self, row: int, count: int) -> Vector:
        """The factors of rows row..row+count (empty: none)."""
        return self.rows[row : row + count] if self.rows.size else NO_FACTORS

    def offset_of(self, row: int, width: int) -> int:
        """Where row `row` starts in the file."""
        return self.offset + row * width * self.itemsize


@dataclass(frozen=True)
class _Task:
    """Whole blocks of one tensor, compared by the kernel reading both files."""

    sides: tuple[_Side, _Side]
    row: int
    rows: int
    width: int
    block_rows: int
    same_scale: bool
    totals: Totals

    @property
    def nbytes(self) -> int:
        return self.rows * self.width * sum(side.itemsize for side in self.sides)

    @property
    def row_bytes(self) -> int:
        return self.width * max(side.itemsize for side in self.sides)

    def run(self, scratch: tuple[ReadBuffer, ReadBuffer]) -> None:
        assert kernel.compiled is not None
        first, second = self.sides
        try:
            found = kernel.compiled.compare_range(
                fd_a=first.fd,
                offset_a=first.offset_of(self.row, self.width),
                scratch_a=scratch[0],
                dtype_code_a=first.dtype,
                scalar_a=first.scalar,
                row_factors_a=first.row_factors(self.row, self.rows),
                pattern_a=first.pattern,
                fd_b=second.fd,
                offset_b=second.offset_of(self.row, self.width),
                scratch_b=scratch[1],
                dtype_code_b=second.dtype,
                scalar_b=second.scalar,
                row_factors_b=second.row_factors(self.row, self.rows),
                pattern_b=second.pattern,
                count=self.rows * self.width,
                row_width=self.width,
                block_rows=self.block_rows,
                same_scale=self.same_scale,
            )
        except EOFError:
            short = first if self._ends_early(first) else second
            raise ended_early(Path(short.path)) from None
        self.totals.add(found)

    def _ends_early(self, side: _Side) -> bool:
        end = side.offset + (self.row + self.rows) * self.width * side.itemsize
        return os.fstat(side.fd).st_size < end


def _kernel_tasks(
    a: Checkpoint,
    b: Checkpoint,
    name: str,
    scale_a: TensorScale,
    scale_b: TensorScale,
    totals: Totals,
) -> list[_Task] | None:
    """The kernel's tasks for one tensor; None where the kernel does not apply: no kernel,
    a dtype it does not read, no values, data not lying in a file, or factors it cannot
    reproduce."""
    info, other = a.info(name), b.info(name)
    if (
        kernel.compiled is None
        or info.dtype not in kernel.DTYPE_CODES
        or other.dtype not in kernel.DTYPE_CODES
        or info.numel == 0
    ):
        return None
    places = a.locate(name), b.locate(name)
    factors = kernel_factors(scale_a), kernel_factors(scale_b)
    sides = []
    for place, factor, tensor in zip(places, factors, (info, other), strict=True):
        if place is None or factor is None:
            return None
        fd, offset, path = place
        itemsize = tensor.nbytes // tensor.numel
        sides.append(
            _Side(fd, offset, str(path), kernel.DTYPE_CODES[tensor.dtype], itemsize, *factor)
        )
    blocks, width = row_blocks(name, info)
    block_rows = blocks[0].rows
    rows = blocks[-1].row + blocks[-1].rows
    per_task = block_rows * max(1, chunking.COMPARE_TASK_ELEMENTS // (block_rows * width))
    same_scale = same_factors(scale_a, scale_b)
    pair = (sides[0], sides[1])
    return [
        _Task(pair, row, min(per_task, rows - row), width, block_rows, same_scale, totals)
        for row in range(0, rows, per_task)
    ]


def _compare_in_numpy(
    a: Checkpoint,
    b: Checkpoint,
    name: str,
    scale_a: TensorScale,
    scale_b: TensorScale,
    totals: Totals,
    threads: int,
) -> None:
    """Row blocks of one tensor from both files on `threads` threads, through
    `compare_block`. A block whose stored bytes are the same in both files, under the same
    factors, is equal raw and canonical alike and is not decoded (equal bytes are equal
    values; values that are equal in other bytes, -0.0 or another NaN, are found by the
    float comparison)."""
    info, other = a.info(name), b.info(name)
    blocks, width = row_blocks(name, info)
    same_storage = info.dtype == other.dtype
    same_scale = same_factors(scale_a, scale_b)

    def compare(block: Block, state: PairBuffers) -> None:
        start, size = block.row * width, block.rows * width
        raw_a = a.read_raw(name, start, size, state.buffers[0])
        raw_b = b.read_raw(name, start, size, state.buffers[1])
        if same_storage and same_scale and _same_bytes(raw_a, raw_b):
            return
        found = compare_block(
            raw_a,
            raw_b,
            info.dtype,
            other.dtype,
            scale_a.rows(block.row, block.rows),
            scale_b.rows(block.row, block.rows),
            same_scale,
            (state.widened[0], state.widened[1]),
        )
        if found is not None:
            totals.add(found)

    run_round_robin(blocks, lambda: PairBuffers(width), compare, threads)


def _same_bytes(first: npt.NDArray[np.generic], second: npt.NDArray[np.generic]) -> bool:
    """Whether two raw blocks hold the same bytes (floats compared as integers: a NaN is
    its own bit pattern), eight bytes at a time where the length allows (3x faster)."""
    word = np.uint64 if first.nbytes % 8 == 0 else np.uint8
    return bool(np.array_equal(first.view(word), second.view(word)))


def _max(first: float, second: float) -> float:
    return math.nan if math.isnan(first) or math.isnan(second) else max(first, second)
