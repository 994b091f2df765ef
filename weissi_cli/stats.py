"""Per-tensor statistics in one streaming pass: sum of squares, L1, max |w|, non-finite count.

Each chunk is reduced while it is in cache, in its own precision (float32 for 32- and
16-bit storage), and the chunk partials are summed as Python floats (float64): whole-
tensor float32 reductions are off by percents on large tensors, chunked ones by ~1e-6.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from weissi_cli.io.checkpoint import Checkpoint, TensorInfo
from weissi_cli.io.dtypes import compute_numpy_dtype, decode

CHUNK_ELEMENTS = 1 << 17
# Tensors this small are reduced in float64 outright: exact, and cheap at this size.
EXACT_BELOW = 1 << 16
# Below this much data a second thread costs more than it saves.
THREADS_ABOVE_BYTES = 32 << 20


@dataclass(frozen=True)
class TensorStats:
    """Statistics of one tensor's finite values, accumulated in float64."""

    name: str
    elements: int
    sum_squares: float
    l1: float
    max_abs: float
    nonfinite: int

    @property
    def fro_norm(self) -> float:
        return math.sqrt(self.sum_squares)

    @property
    def is_finite(self) -> bool:
        return self.nonfinite == 0

    @property
    def l1_direction(self) -> float | None:
        """‖W / ‖W‖_F‖_1, undefined for a zero tensor."""
        norm = self.fro_norm
        return self.l1 / norm if norm > 0 else None


@dataclass(frozen=True)
class _Partial:
    sum_squares: float
    l1: float
    max_abs: float
    nonfinite: int


@dataclass(frozen=True)
class _Task:
    name: str
    dtype: str
    start: int
    count: int


class _Worker:
    """Reusable per-thread buffers, so a pass allocates a few MiB whatever the model."""

    def __init__(self, chunk_elements: int) -> None:
        self.raw = bytearray(chunk_elements * 8)
        self.widened = np.empty(chunk_elements, np.float32)
        self.magnitudes: dict[np.dtype[np.floating], npt.NDArray[np.floating]] = {
            np.dtype(np.float32): np.empty(chunk_elements, np.float32),
            np.dtype(np.float64): np.empty(chunk_elements, np.float64),
        }
        self.ones: dict[np.dtype[np.floating], npt.NDArray[np.floating]] = {
            np.dtype(np.float32): np.ones(chunk_elements, np.float32),
            np.dtype(np.float64): np.ones(chunk_elements, np.float64),
        }

    def reduce(self, checkpoint: Checkpoint, task: _Task) -> _Partial:
        raw = checkpoint.read_raw(task.name, task.start, task.count, self.raw)
        values = decode(raw, task.dtype, self.widened)
        if task.count < EXACT_BELOW:
            return _reduce_float64(values.astype(np.float64))
        kind = compute_numpy_dtype(task.dtype)
        magnitudes = np.abs(values, out=self.magnitudes[kind][: task.count])
        sum_squares = float(np.dot(values, values))
        l1 = float(np.dot(magnitudes, self.ones[kind][: task.count]))
        if math.isfinite(sum_squares) and math.isfinite(l1):
            return _Partial(sum_squares, l1, float(magnitudes.max()), 0)
        # A non-finite value, or finite values whose squares overflow float32.
        return _reduce_float64(values.astype(np.float64))


@np.errstate(over="ignore", under="ignore")
def _reduce_float64(values: npt.NDArray[np.float64]) -> _Partial:
    finite = np.isfinite(values)
    nonfinite = int(values.size - np.count_nonzero(finite))
    if nonfinite:
        values = values[finite]
    if values.size == 0:
        return _Partial(0.0, 0.0, 0.0, nonfinite)
    magnitudes = np.abs(values)
    # Rescale before squaring so float64 cannot overflow either.
    largest = float(magnitudes.max())
    if largest == 0.0:
        return _Partial(0.0, 0.0, 0.0, nonfinite)
    scaled = magnitudes / largest
    sum_squares = float(np.dot(scaled, scaled)) * largest * largest
    return _Partial(sum_squares, float(magnitudes.sum()), largest, nonfinite)


def _tasks(infos: Iterable[TensorInfo], chunk_elements: int) -> Iterator[_Task]:
    for info in infos:
        total = info.numel
        if total < EXACT_BELOW:
            yield _Task(info.name, info.dtype, 0, total)
            continue
        for start in range(0, total, chunk_elements):
            yield _Task(info.name, info.dtype, start, min(chunk_elements, total - start))


def compute_stats(
    checkpoint: Checkpoint,
    names: Iterable[str] | None = None,
    threads: int = 2,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> dict[str, TensorStats]:
    """Statistics of the named tensors (default: every supported float tensor)."""
    if names is None:
        infos = [info for info in checkpoint.tensors if info.is_supported_float]
    else:
        infos = [checkpoint.info(name) for name in names]
    tasks = list(_tasks(infos, chunk_elements))
    partials: list[_Partial | None] = [None] * len(tasks)
    total_bytes = sum(info.nbytes for info in infos)
    workers = max(1, threads) if total_bytes > THREADS_ABOVE_BYTES else 1
    errors: list[BaseException] = []

    def run(offset: int) -> None:
        worker = _Worker(chunk_elements)
        try:
            for index in range(offset, len(tasks), workers):
                if errors:
                    return
                partials[index] = worker.reduce(checkpoint, tasks[index])
        except BaseException as error:  # re-raised in the calling thread
            errors.append(error)

    if workers == 1:
        run(0)
    else:
        pool = [threading.Thread(target=run, args=(offset,)) for offset in range(workers)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    if errors:
        raise errors[0]
    return _combine(infos, tasks, partials)


def _combine(
    infos: list[TensorInfo], tasks: list[_Task], partials: list[_Partial | None]
) -> dict[str, TensorStats]:
    grouped: dict[str, list[_Partial]] = {info.name: [] for info in infos}
    for task, partial in zip(tasks, partials, strict=True):
        assert partial is not None
        grouped[task.name].append(partial)
    result = {}
    for info in infos:
        parts = grouped[info.name]
        result[info.name] = TensorStats(
            name=info.name,
            elements=info.numel,
            sum_squares=math.fsum(part.sum_squares for part in parts),
            l1=math.fsum(part.l1 for part in parts),
            max_abs=max((part.max_abs for part in parts), default=0.0),
            nonfinite=sum(part.nonfinite for part in parts),
        )
    return result
