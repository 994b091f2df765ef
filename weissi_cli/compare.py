"""`diff`'s comparison of two checkpoints' tensors, raw and after rebalancing both sides."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from weissi_cli import chunking, kernel
from weissi_cli.io.checkpoint import Checkpoint, ReadBuffer, ended_early, read_buffer
from weissi_cli.numpy_compare import compare_block, nan_max, same_bytes
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
            self.difference = nan_max(self.difference, difference)
            self.largest = nan_max(self.largest, largest)
            self.canonical = nan_max(self.canonical, canonical)
            self.canonical_largest = nan_max(self.canonical_largest, top)
            self.bitwise = self.bitwise and equal


def compare_tensors(
    a: Checkpoint,
    b: Checkpoint,
    names: Sequence[str],
    scales_a: Mapping[str, TensorScale],
    scales_b: Mapping[str, TensorScale],
    threads: int = 2,
) -> dict[str, Totals]:
    """Every tensor of `names` in A against B (same shapes), block by block as
    `numpy_compare.compare_block` compares them. The backend for both dtypes compares them,
    all tensors' tasks on one set of threads, reading both files in cache-sized pieces
    where the data lies in files; tensors whose factors the backend cannot take go through
    `compare_block` row block by row block."""
    totals = {name: Totals() for name in names}
    tasks: list[_Task] = []
    by_rows = []
    for name in names:
        shape = a.info(name).shape
        scale_a = scales_a.get(name) or TensorScale(shape)
        scale_b = scales_b.get(name) or TensorScale(shape)
        found = _tasks(a, b, name, scale_a, scale_b, totals[name])
        if found is None:
            by_rows.append((name, scale_a, scale_b))
        else:
            tasks += found
    total = sum(a.info(name).nbytes + b.info(name).nbytes for name in names)
    with Stage("comparing", total) as stage:
        if tasks:
            # a whole block fits, so that numpy compares each block in one piece
            scratch_bytes = max(1 << 20, *(task.block_bytes for task in tasks))

            def run(task: _Task, scratch: tuple[ReadBuffer, ReadBuffer]) -> None:
                task.run(scratch)
                stage.advance(task.nbytes)

            run_round_robin(
                tasks,
                lambda: (read_buffer(scratch_bytes), read_buffer(scratch_bytes)),
                run,
                threads,
            )
        for name, scale_a, scale_b in by_rows:
            _compare_by_rows(a, b, name, scale_a, scale_b, totals[name], threads)
            stage.advance(a.info(name).nbytes + b.info(name).nbytes)
    return totals


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
    """One checkpoint's share of a task: where the tensor lies (fd None: not in a file, read
    through the checkpoint), its dtype and factors."""

    checkpoint: Checkpoint
    name: str
    fd: int | None
    offset: int
    path: str
    dtype: str
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

    def values(self, row: int, rows: int, width: int, buffer: ReadBuffer) -> npt.NDArray[Any]:
        """The stored values of rows row..row+rows, read through the checkpoint."""
        raw = self.checkpoint.read_raw(self.name, row * width, rows * width, buffer)
        return np.ascontiguousarray(raw)


@dataclass(frozen=True)
class _Task:
    """Whole blocks of one tensor, compared by the backend for both dtypes."""

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
    def block_bytes(self) -> int:
        """A block of the wider side (the task's rows, where a side is read through its
        checkpoint)."""
        in_files = all(side.fd is not None for side in self.sides)
        rows = self.block_rows if in_files else self.rows
        return rows * self.width * max(side.itemsize for side in self.sides)

    def run(self, scratch: tuple[ReadBuffer, ReadBuffer]) -> None:
        first, second = self.sides
        backend = kernel.backend_for(first.dtype, second.dtype)
        codes = kernel.DTYPE_CODES[first.dtype], kernel.DTYPE_CODES[second.dtype]
        rows_a = first.row_factors(self.row, self.rows)
        rows_b = second.row_factors(self.row, self.rows)
        count = self.rows * self.width
        if first.fd is None or second.fd is None:
            found = backend.compare_chunk(
                data_a=first.values(self.row, self.rows, self.width, scratch[0]),
                dtype_code_a=codes[0],
                scalar_a=first.scalar,
                row_factors_a=rows_a,
                pattern_a=first.pattern,
                data_b=second.values(self.row, self.rows, self.width, scratch[1]),
                dtype_code_b=codes[1],
                scalar_b=second.scalar,
                row_factors_b=rows_b,
                pattern_b=second.pattern,
                count=count,
                row_width=self.width,
                block_rows=self.block_rows,
                same_scale=self.same_scale,
            )
            self.totals.add(found)
            return
        try:
            found = backend.compare_range(
                fd_a=first.fd,
                offset_a=first.offset_of(self.row, self.width),
                scratch_a=scratch[0],
                dtype_code_a=codes[0],
                scalar_a=first.scalar,
                row_factors_a=rows_a,
                pattern_a=first.pattern,
                fd_b=second.fd,
                offset_b=second.offset_of(self.row, self.width),
                scratch_b=scratch[1],
                dtype_code_b=codes[1],
                scalar_b=second.scalar,
                row_factors_b=rows_b,
                pattern_b=second.pattern,
                count=count,
                row_width=self.width,
                block_rows=self.block_rows,
                same_scale=self.same_scale,
            )
        except EOFError:
            short = first if self._ends_early(first, first.fd) else second
            raise ended_early(Path(short.path)) from None
        self.totals.add(found)

    def _ends_early(self, side: _Side, fd: int) -> bool:
        end = side.offset + (self.row + self.rows) * self.width * side.itemsize
        return os.fstat(fd).st_size < end


def _tasks(
    a: Checkpoint,
    b: Checkpoint,
    name: str,
    scale_a: TensorScale,
    scale_b: TensorScale,
    totals: Totals,
) -> list[_Task] | None:
    """The backend's tasks for one tensor (none without values); None where the factors are
    ones no single product per element reproduces (see `kernel_factors`)."""
    info, other = a.info(name), b.info(name)
    factor_a, factor_b = kernel_factors(scale_a), kernel_factors(scale_b)
    if factor_a is None or factor_b is None:
        return None
    if info.numel == 0:
        return []
    sides = []
    for checkpoint, factor, tensor in zip((a, b), (factor_a, factor_b), (info, other), strict=True):
        place = checkpoint.locate(name)
        fd, offset, path = place if place is not None else (None, 0, "")
        itemsize = tensor.nbytes // tensor.numel
        sides.append(
            _Side(checkpoint, name, fd, offset, str(path), tensor.dtype, itemsize, *factor)
        )
    blocks, width = row_blocks(name, info)
    block_rows = blocks[0].rows
    rows = blocks[-1].row + blocks[-1].rows
    # read through a checkpoint: a block at a time, the memory numpy's blocks take
    per_task = block_rows
    if all(side.fd is not None for side in sides):
        per_task *= max(1, chunking.COMPARE_TASK_ELEMENTS // (block_rows * width))
    same_scale = same_factors(scale_a, scale_b)
    pair = (sides[0], sides[1])
    return [
        _Task(pair, row, min(per_task, rows - row), width, block_rows, same_scale, totals)
        for row in range(0, rows, per_task)
    ]


def _compare_by_rows(
    a: Checkpoint,
    b: Checkpoint,
    name: str,
    scale_a: TensorScale,
    scale_b: TensorScale,
    totals: Totals,
    threads: int,
) -> None:
    """Row blocks of one tensor from both files on `threads` threads, through
    `compare_block` with each element's factor from `TensorScale.rows`. A block whose
    stored bytes are the same in both files, under the same factors, is equal raw and
    canonical alike and is not decoded (equal bytes are equal values; values that are equal
    in other bytes, -0.0 or another NaN, are found by the float comparison)."""
    info, other = a.info(name), b.info(name)
    blocks, width = row_blocks(name, info)
    same_storage = info.dtype == other.dtype
    same_scale = same_factors(scale_a, scale_b)

    def compare(block: Block, state: PairBuffers) -> None:
        start, size = block.row * width, block.rows * width
        raw_a = a.read_raw(name, start, size, state.buffers[0])
        raw_b = b.read_raw(name, start, size, state.buffers[1])
        if same_storage and same_scale and same_bytes(raw_a, raw_b):
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
