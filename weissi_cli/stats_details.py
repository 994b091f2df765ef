"""Statistics with what `check` needs beyond them, in the same pass: dead rows and columns
(a whole slice of zeros), the axis squares its symmetry rules solve from and, on request,
how many values float16 or bfloat16 would overflow or flush to zero."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from weissi_cli import kernel
from weissi_cli.io.checkpoint import Checkpoint, TensorInfo, ended_early
from weissi_cli.io.dtypes import decode
from weissi_cli.numpy_reduce import Partial
from weissi_cli.stats import (
    EXACT_BELOW,
    THREADS_ABOVE_BYTES,
    SquaresSink,
    TensorStats,
    Worker,
    combine,
    pass_targets,
    row_tasks,
    task_elements,
)
from weissi_cli.threads import run_round_robin, single_threaded_blas

# float16 and bfloat16 limits: values above overflow to inf, non-zero values below flush to 0.
HEADROOM = {
    "float16": (65504.0, 2.0**-25),
    "bfloat16": (3.3895313892515355e38, 2.0**-134),
}


@dataclass(frozen=True)
class TensorDetails:
    """What `check` needs beyond the statistics: dead rows/columns and 16-bit headroom."""

    name: str
    zero_rows: tuple[int, ...]  # indices along axis 0 whose whole slice is zero
    zero_columns: tuple[int, ...]  # along axis 1 (tensors of 2+ dims)
    overflow: dict[str, int]  # dtype -> values that would become ±inf
    underflow: dict[str, int]  # dtype -> non-zero values that would become 0


class _DetailParts(NamedTuple):
    """check's findings in one chunk: non-zero rows, non-zero columns, 16-bit headroom."""

    rows: list[npt.NDArray[np.bool_]]
    columns: npt.NDArray[np.bool_] | None
    overflow: dict[str, int]
    underflow: dict[str, int]


def compute_stats_and_details(
    checkpoint: Checkpoint,
    names: Iterable[str] | None = None,
    headroom: bool = False,
    threads: int = 2,
    chunk_elements: int | None = None,
    squared: Mapping[str, tuple[bool, bool]] | None = None,
) -> tuple[dict[str, TensorStats], dict[str, TensorDetails], dict[str, npt.NDArray[np.float32]]]:
    """Statistics, details and, for the tensors in `squared` (a name to the axes to keep),
    the axis squares of `stats.axis_squares`, in one pass over row-aligned chunks."""
    chunk_elements = chunk_elements or task_elements()
    infos, targets = pass_targets(checkpoint, names, squared or {})
    sink = SquaresSink(targets)
    tasks = [task for info in infos for task in row_tasks(info, chunk_elements)]
    partials: list[Partial | None] = [None] * len(tasks)
    parts: dict[str, list[tuple[int, _DetailParts]]] = {info.name: [] for info in infos}
    lock = threading.Lock()
    capacity = max([chunk_elements, EXACT_BELOW, *(task.elements for task in tasks)])

    def reduce(index: int, worker: Worker) -> None:
        task = tasks[index]
        info = checkpoint.info(task.name)
        width = task.row_width
        row, count = (task.start // width, task.elements // width) if width else (0, 0)
        # headroom counts need the values decoded by numpy: the statistics beside them are
        # numpy's too, from one backend for the whole chunk
        backend = kernel.backend_for(info.dtype, exact=task.exact, numpy=headroom)
        mode = sink.mode(task)
        matrix = len(info.shape) >= 2 and width > 0
        located = checkpoint.locate(info.name) if matrix and not headroom else None
        if located is not None:
            partials[index], found = _details_in_file(
                backend, located, info, row, count, worker, mode
            )
        else:
            raw = checkpoint.read_raw(info.name, task.start, task.elements, worker.raw)
            raw = np.ascontiguousarray(raw)
            partials[index], found = _chunk_details(backend, raw, info, count, width, worker, mode)
            if headroom:
                overflow, underflow = _headroom(decode(raw, info.dtype))
                found = _DetailParts(found.rows, found.columns, overflow, underflow)
        if mode:
            sink.store(task, mode, worker.sums)
        with lock:
            parts[info.name].append((row, found))

    workers = max(1, threads) if sum(i.nbytes for i in infos) > THREADS_ABOVE_BYTES else 1
    with single_threaded_blas():
        run_round_robin(range(len(tasks)), lambda: Worker(capacity), reduce, workers)
    grouped: dict[str, list[Partial]] = {info.name: [] for info in infos}
    for task, partial in zip(tasks, partials, strict=True):
        assert partial is not None
        grouped[task.name].append(partial)
    stats = {info.name: combine(info, grouped[info.name]) for info in infos}
    details = {info.name: _merge_details(info, parts[info.name]) for info in infos}
    return stats, details, targets


def _details_in_file(
    backend: kernel.Kernel,
    located: tuple[int, int, Path],
    info: TensorInfo,
    row: int,
    rows: int,
    worker: Worker,
    mode: int,
) -> tuple[Partial, _DetailParts]:
    """_chunk_details with the backend reading the file itself, in cache-sized pieces."""
    fd, begin, path = located
    itemsize = info.nbytes // info.numel
    width = info.numel // info.shape[0]
    columns = info.shape[1]
    row_maxima = np.zeros(rows, np.uint32)
    column_maxima = np.zeros(columns, np.uint32)
    try:
        totals = backend.details_range(
            fd=fd,
            offset=begin + row * width * itemsize,
            scratch=worker.raw,
            dtype_code=kernel.DTYPE_CODES[info.dtype],
            count=rows * width,
            row_width=width,
            columns=columns,
            row_out=row_maxima,
            column_out=column_maxima,
            mode=mode,
            out=worker.sums,
        )
    except EOFError:
        raise ended_early(path) from None
    return Partial(*totals), _DetailParts([row_maxima != 0], column_maxima != 0, {}, {})


def _chunk_details(
    backend: kernel.Kernel,
    raw: npt.NDArray[np.generic],
    info: TensorInfo,
    rows: int,
    width: int,
    worker: Worker,
    mode: int,
) -> tuple[Partial, _DetailParts]:
    """Statistics, axis squares by `mode` (into `worker.sums`) and dead rows/columns of a
    row-aligned chunk: two passes over the chunk while it is in cache. A zero largest
    magnitude marks a dead row or column (a NaN's bits are not zero)."""
    code = kernel.DTYPE_CODES[info.dtype]
    count = rows * width
    totals = backend.reduce_chunk(
        data=raw, dtype_code=code, count=count, row_width=0, columns=1, mode=kernel.NO_AXES,
        out=worker.sums,
    )  # fmt: skip
    if mode:  # the totals stay those without axes, which the kernel sums in another order
        backend.reduce_chunk(
            data=raw, dtype_code=code, count=count, row_width=width,
            columns=info.shape[1] if len(info.shape) > 1 else 1, mode=mode, out=worker.sums,
        )  # fmt: skip
    partial = Partial(*totals)
    if len(info.shape) < 2 or not width:
        return partial, _DetailParts([], None, {}, {})
    columns = info.shape[1]
    row_maxima = worker.row_maxima[:rows]
    column_maxima = np.zeros(columns, np.uint32)
    backend.maxima(
        data=raw,
        dtype_code=code,
        count=count,
        row_width=width,
        columns=columns,
        row_out=row_maxima,
        column_out=column_maxima,
    )
    return partial, _DetailParts([row_maxima != 0], column_maxima != 0, {}, {})


@np.errstate(invalid="ignore")
def _headroom(values: npt.NDArray[np.floating]) -> tuple[dict[str, int], dict[str, int]]:
    """How many values float16 and bfloat16 would overflow and flush to zero."""
    magnitudes = np.abs(values)
    overflow: dict[str, int] = {}
    underflow: dict[str, int] = {}
    for dtype, (largest, smallest) in HEADROOM.items():
        overflow[dtype] = int(np.count_nonzero(magnitudes > largest))
        underflow[dtype] = int(np.count_nonzero((magnitudes < smallest) & (magnitudes > 0)))
    return overflow, underflow


def _merge_details(info: TensorInfo, parts: list[tuple[int, _DetailParts]]) -> TensorDetails:
    parts = sorted(parts, key=lambda item: item[0])
    pieces = [row for _, part in parts for row in part.rows]
    rows = np.concatenate(pieces) if pieces else np.ones(0, bool)
    columns = None
    for _, part in parts:
        if part.columns is not None:
            columns = part.columns if columns is None else columns | part.columns
    overflow: dict[str, int] = {}
    underflow: dict[str, int] = {}
    for _, part in parts:
        for dtype, count in part.overflow.items():
            overflow[dtype] = overflow.get(dtype, 0) + count
        for dtype, count in part.underflow.items():
            underflow[dtype] = underflow.get(dtype, 0) + count
    return TensorDetails(
        info.name,
        tuple(int(i) for i in np.flatnonzero(~rows)) if len(info.shape) >= 2 else (),
        tuple(int(i) for i in np.flatnonzero(~columns)) if columns is not None else (),
        overflow,
        underflow,
    )
