"""Per-tensor statistics in one streaming pass: sum of squares, L1, max |w|, non-finite count.

Each chunk is reduced by the kernel's backend for its dtype (see `kernel.backend_for`);
tensors below EXACT_BELOW values are reduced in float64 outright.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from weissi_cli import chunking, kernel
from weissi_cli.io.checkpoint import Checkpoint, TensorInfo, ended_early, read_buffer
from weissi_cli.io.dtypes import raw_numpy_dtype
from weissi_cli.numpy_reduce import Partial
from weissi_cli.progress import Stage
from weissi_cli.threads import run_round_robin, single_threaded_blas

# Tensors this small are reduced in float64 outright: exact, and cheap at this size.
EXACT_BELOW = 1 << 16
# Below this much data a second thread costs more than it saves.
THREADS_ABOVE_BYTES = 32 << 20


@dataclass(frozen=True)
class TensorStats:
    """Statistics of one tensor's finite values, accumulated in float64."""

    name: str
    elements: int
    sum_squares: float  # of values / scale
    l1: float
    max_abs: float
    nonfinite: int
    # 1 unless the values are so large or small that their squares would overflow or
    # underflow float64; then sum_squares is of values / scale.
    scale: float = 1.0

    @property
    def fro_norm(self) -> float:
        return self.scale * math.sqrt(self.sum_squares)

    @property
    def is_finite(self) -> bool:
        return self.nonfinite == 0

    @property
    def l1_direction(self) -> float | None:
        """‖W / ‖W‖_F‖_1, undefined for a zero tensor."""
        norm = self.fro_norm
        return self.l1 / norm if norm > 0 else None


# Per-chunk work items are NamedTuples, not dataclasses: a pass makes hundreds of them (see
# numpy_reduce.Partial).
class Task(NamedTuple):
    """One chunk of one tensor for a worker thread."""

    name: str
    dtype: str
    start: int
    elements: int
    exact: bool
    # For tensors whose axis squares are wanted: the task covers whole rows of this many
    # [columns, rest] elements, starting at row start // row_width (0: no squares).
    row_width: int = 0
    columns: int = 1
    tensor_rows: int = 1


class Worker:
    """Per-thread buffers, so a pass allocates a few MiB whatever the model."""

    def __init__(self, chunk_elements: int) -> None:
        capacity = max(chunk_elements, EXACT_BELOW)  # small tensors are read whole
        self.raw = read_buffer(capacity * 8)
        # a chunk's axis sums; twice the values, as the kernel's COLUMNS mode stages its pieces
        self.sums = np.zeros(2 * capacity, np.float64)
        self.row_maxima = np.zeros(capacity, np.uint32)

    def reduce(
        self, checkpoint: Checkpoint, task: Task, squares: SquaresSink | None = None
    ) -> Partial:
        mode = squares.mode(task) if squares is not None else kernel.NO_AXES
        backend = kernel.backend_for(task.dtype, exact=task.exact)
        dtype_code = kernel.DTYPE_CODES[task.dtype]
        row_width = task.row_width if mode else 0
        columns = task.columns if mode else 1
        located = checkpoint.locate(task.name)
        if located is not None:  # the backend reads the file itself, in cache-sized pieces
            fd, begin, path = located
            itemsize = raw_numpy_dtype(task.dtype).itemsize
            try:
                totals = backend.reduce_range(
                    fd=fd,
                    offset=begin + task.start * itemsize,
                    scratch=self.raw,
                    dtype_code=dtype_code,
                    count=task.elements,
                    row_width=row_width,
                    columns=columns,
                    mode=mode,
                    out=self.sums,
                )
            except EOFError:
                raise ended_early(path) from None
        else:
            raw = checkpoint.read_raw(task.name, task.start, task.elements, self.raw)
            totals = backend.reduce_chunk(
                data=np.ascontiguousarray(raw),
                dtype_code=dtype_code,
                count=task.elements,
                row_width=row_width,
                columns=columns,
                mode=mode,
                out=self.sums,
            )
        if squares is not None and mode:
            squares.store(task, mode, self.sums)
        return Partial(*totals)


def _sums_size(task: Task, mode: int) -> int:
    rows = task.elements // task.row_width
    return {kernel.ROWS: rows, kernel.COLUMNS: task.columns}.get(mode, rows * task.columns)


class SquaresSink:
    """Axis squares (see `axis_squares`) filled by the statistics pass while each chunk is
    still in cache: a chunk's sums (per row, per column, or per row and column) go into
    the tensor's target. Where the target sums over rows, the chunks' sums are added in
    float64 in the order of the rows, whichever thread finishes first: float addition is
    not associative, and added as they came, a tensor's squares (and the scales solved
    from them) differed in their last bits from run to run. A chunk that arrives early
    waits for the ones before it. The threads take chunks alternately, so that is one or
    two while they keep pace; if one stalls, at most the other's half of one tensor's
    chunks, each one row of columns in float64 (13 MB for a 70B model's down_proj, 8192 x
    28672 in 112 chunks)."""

    def __init__(self, targets: dict[str, npt.NDArray[np.float32]]) -> None:
        self.targets = targets
        self.lock = threading.Lock()
        # per tensor: the float64 sum so far, the first element not yet added, and the
        # chunks' sums that came before their turn (by first element)
        self._sums: dict[str, npt.NDArray[np.float64]] = {}
        self._next: dict[str, int] = {}
        self._early: dict[str, dict[int, tuple[int, npt.NDArray[np.float64]]]] = {}

    def mode(self, task: Task) -> int:
        """Which sums a chunk of `task` contributes to its tensor's target."""
        if not task.row_width or task.name not in self.targets:
            return kernel.NO_AXES
        target = self.targets[task.name]
        if target.shape[1] == 1:  # one column, or columns summed out
            return kernel.ROWS
        return kernel.COLUMNS if self._rows_summed(task, target) else kernel.MATRIX

    def store(self, task: Task, mode: int, sums: npt.NDArray[np.float64]) -> None:
        target = self.targets[task.name]
        rows = task.elements // task.row_width
        first = task.start // task.row_width
        if mode == kernel.ROWS and self._rows_summed(task, target):
            self._add_in_order(task, np.array([sums[:rows].sum()]))
        elif mode == kernel.ROWS:
            target[first : first + rows, 0] = sums[:rows]
        elif mode == kernel.COLUMNS:
            self._add_in_order(task, sums[: task.columns].copy())
        else:
            target[first : first + rows] = sums[: rows * task.columns].reshape(rows, task.columns)

    def _add_in_order(self, task: Task, piece: npt.NDArray[np.float64]) -> None:
        name = task.name
        with self.lock:
            early = self._early.setdefault(name, {})
            early[task.start] = (task.elements, piece)
            start = self._next.get(name, 0)
            while start in early:
                elements, ready = early.pop(start)
                total = self._sums.get(name)
                self._sums[name] = ready if total is None else total + ready
                start += elements
            self._next[name] = start
            if start == task.tensor_rows * task.row_width:  # every chunk is in
                self.targets[name][0] = self._sums.pop(name)

    @staticmethod
    def _rows_summed(task: Task, target: npt.NDArray[np.float32]) -> bool:
        return target.shape[0] == 1 and task.tensor_rows > 1


def _tasks(
    infos: Iterable[TensorInfo],
    chunk_elements: int,
    squared: Mapping[str, tuple[bool, bool]] | None = None,
) -> Iterator[Task]:
    for info in infos:
        total = info.numel
        if squared is not None and info.name in squared and total:
            yield from row_tasks(info, chunk_elements)
            continue
        if total < EXACT_BELOW:
            yield Task(info.name, info.dtype, 0, total, exact=True)
            continue
        for start in range(0, total, chunk_elements):
            yield Task(info.name, info.dtype, start, min(chunk_elements, total - start), False)


def row_tasks(info: TensorInfo, chunk_elements: int) -> Iterator[Task]:
    """Chunks of whole rows (at least one), so each chunk's axis squares are complete; a
    tensor of no rows has none, one of empty rows a single chunk."""
    rows = info.shape[0] if info.shape else 1
    width = info.numel // rows if rows else 0
    columns = info.shape[1] if len(info.shape) > 1 else 1
    exact = info.numel < EXACT_BELOW
    per_task = max(1, rows if exact else chunk_elements // max(width, 1))
    for row in range(0, rows, per_task):
        count = min(per_task, rows - row)
        yield Task(info.name, info.dtype, row * width, count * width, exact, width, columns, rows)


def task_elements() -> int:
    """Values per task when the caller does not say: larger where the C kernel reads."""
    return chunking.KERNEL_TASK_ELEMENTS if kernel.AVAILABLE else chunking.NUMPY_ELEMENTS


def compute_stats(
    checkpoint: Checkpoint,
    names: Iterable[str] | None = None,
    threads: int = 2,
    chunk_elements: int | None = None,
) -> dict[str, TensorStats]:
    """Statistics of the named tensors (default: every supported float tensor)."""
    return compute_stats_and_squares(checkpoint, names, threads, chunk_elements)[0]


def compute_stats_and_squares(
    checkpoint: Checkpoint,
    names: Iterable[str] | None = None,
    threads: int = 2,
    chunk_elements: int | None = None,
    squared: Mapping[str, tuple[bool, bool]] | None = None,
) -> tuple[dict[str, TensorStats], dict[str, npt.NDArray[np.float32]]]:
    """Statistics of the named tensors and, in the same pass, the axis squares (see
    `axis_squares`) of the tensors in `squared`, which maps a name to the axes to keep.
    Tasks are `chunk_elements` long (default: by who reads, see `task_elements`)."""
    chunk_elements = chunk_elements or task_elements()
    squared = squared or {}
    infos, targets = pass_targets(checkpoint, names, squared)
    sink = SquaresSink(targets) if targets else None
    tasks = list(_tasks(infos, chunk_elements, squared))
    partials: list[Partial | None] = [None] * len(tasks)
    total_bytes = sum(info.nbytes for info in infos)
    workers = max(1, threads) if total_bytes > THREADS_ABOVE_BYTES else 1
    capacity = max([chunk_elements, *(task.elements for task in tasks if task.row_width)])

    itemsize = {info.name: info.nbytes // max(info.numel, 1) for info in infos}

    with Stage("reading", total_bytes) as stage:

        def reduce(index: int, worker: Worker) -> None:
            task = tasks[index]
            partials[index] = worker.reduce(checkpoint, task, sink)
            stage.advance(task.elements * itemsize[task.name])

        with single_threaded_blas():
            run_round_robin(range(len(tasks)), lambda: Worker(capacity), reduce, workers)
    return _combine(infos, tasks, partials), targets


def pass_targets(
    checkpoint: Checkpoint,
    names: Iterable[str] | None,
    squared: Mapping[str, tuple[bool, bool]],
) -> tuple[list[TensorInfo], dict[str, npt.NDArray[np.float32]]]:
    """The tensors a pass reads (`names`, else every supported float tensor) and a zeroed
    target for the axis squares of each tensor in `squared` (all of which it must read)."""
    if names is None:
        infos = [info for info in checkpoint.tensors if info.is_supported_float]
    else:
        infos = [checkpoint.info(name) for name in names]
    in_pass = {info.name for info in infos}
    missing = [name for name in squared if name not in in_pass]
    if missing:
        raise ValueError(f"axis squares asked for tensors outside the pass: {missing}")
    targets = {
        info.name: squares_target(info, *squared[info.name])
        for info in infos
        if info.name in squared
    }
    return infos, targets


def squares_target(
    info: TensorInfo, keep_rows: bool, keep_columns: bool
) -> npt.NDArray[np.float32]:
    rows = info.shape[0] if info.shape else 1
    columns = info.shape[1] if len(info.shape) > 1 else 1
    return np.zeros((rows if keep_rows else 1, columns if keep_columns else 1), np.float32)


def _combine(
    infos: list[TensorInfo], tasks: list[Task], partials: list[Partial | None]
) -> dict[str, TensorStats]:
    grouped: dict[str, list[Partial]] = {info.name: [] for info in infos}
    for task, partial in zip(tasks, partials, strict=True):
        assert partial is not None
        grouped[task.name].append(partial)
    return {info.name: combine(info, grouped[info.name]) for info in infos}


def combine(info: TensorInfo, parts: Iterable[Partial]) -> TensorStats:
    """A tensor's statistics from the partials of all its chunks."""
    parts = list(parts)
    scale = max((part.scale for part in parts if part.sum_squares > 0), default=1.0)
    return TensorStats(
        name=info.name,
        elements=info.numel,
        sum_squares=math.fsum(part.sum_squares * (part.scale / scale) ** 2 for part in parts),
        scale=scale,
        l1=math.fsum(part.l1 for part in parts),
        max_abs=max((part.max_abs for part in parts), default=0.0),
        nonfinite=sum(part.nonfinite for part in parts),
    )


def axis_squares(
    checkpoint: Checkpoint,
    names: Iterable[str],
    threads: int = 2,
    keep: Mapping[str, tuple[bool, bool]] | None = None,
) -> dict[str, npt.NDArray[np.float32]]:
    """Per tensor, the sums of squares Q[i, k] over all axes after the second: an
    [out, in] matrix for a weight (a conv's kernel summed), [n, 1] for a 1-D tensor.

    What per-channel rebalancing needs: the squared norm of any slice along axis 0 or 1,
    under any per-row and per-column factors, is a weighted sum of Q. Kept in float32, so
    a linear layer's Q is as large as the layer itself. `keep[name]` = (rows, columns):
    which of the two axes any scale moves; an axis no scale moves is summed out (a
    transformer's projections are scaled along one axis each by default, so their Q
    shrinks to a vector).
    """
    names = list(names)
    keep = {name: (keep or {}).get(name, (True, True)) for name in names}
    return compute_stats_and_squares(checkpoint, names, threads, squared=keep)[1]
