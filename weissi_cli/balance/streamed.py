"""Axis squares read back from the checkpoint on every use, for tensors too large to hold."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from weissi_cli import chunking, kernel
from weissi_cli.io.checkpoint import Checkpoint, read_buffer
from weissi_cli.io.dtypes import decode
from weissi_cli.kernel_numpy import stored_squares
from weissi_cli.stats import row_tasks
from weissi_cli.threads import run_round_robin, single_threaded_blas

Vector = npt.NDArray[np.float64]

# The axis-square matrices held in memory together: up to this many bytes of float32, the
# smallest first; larger ones are streamed. A solver step costs a pass over each streamed
# tensor, so small tensors stay (a sweep over them costs nothing next to the big ones),
# and the cap keeps private memory bounded at any model size.
HELD_BYTES = 32 << 20
# Tensors of fewer elements are streamed on one thread: a second costs more than it saves.
THREADS_ABOVE_ELEMENTS = 1 << 21


@dataclass(frozen=True)
class StreamedSquares:
    """The [rows, columns] axis squares of one tensor (see `stats.axis_squares`), never held
    whole: each product reads the tensor again in the statistics pass's row chunks, and the
    backend squares each chunk in float32 (rounded once, as the pass stores the squares)
    and multiplies in float64: the products feed the penalty, which the descent compares
    to 1e-10."""

    checkpoint: Checkpoint
    name: str
    threads: int = 2

    @property
    def shape(self) -> tuple[int, int]:
        shape = self.checkpoint.info(self.name).shape
        return (shape[0] if shape else 1, shape[1] if len(shape) > 1 else 1)

    @property
    def nbytes(self) -> int:
        """Bytes one product reads from the checkpoint."""
        return self.checkpoint.info(self.name).nbytes

    def matvec(self, vector: Vector) -> Vector:
        """Q @ vector, one value per row."""
        result = np.zeros(self.shape[0])
        self._products(vector, result, None)
        return result

    def rmatvec(self, vector: Vector) -> Vector:
        """vector @ Q, one value per column: the chunks' partial sums are added in the order
        of their rows, whichever thread finishes first, so that the result does not depend
        on the threads' timing."""
        ordered = _InOrder(np.zeros(self.shape[1]))
        self._products(None, None, (lambda first, rows: vector[first : first + rows], ordered))
        return ordered.total

    def matvec_rmatvec(
        self, vector: Vector, rows_after: Callable[[int, Vector], Vector]
    ) -> tuple[Vector, Vector]:
        """Q @ vector, and r @ Q in the same pass, where a chunk's r is `rows_after(its
        first row, its rows of Q @ vector)`: the caller sets a row's factor from that
        row's product alone."""
        result = np.zeros(self.shape[0])
        ordered = _InOrder(np.zeros(self.shape[1]))

        def weights(first: int, rows: int) -> Vector:
            return rows_after(first, result[first : first + rows])

        self._products(vector, result, (weights, ordered))
        return result, ordered.total

    def _products(
        self,
        vector: Vector | None,
        result: Vector | None,
        columns: tuple[Callable[[int, int], Vector], _InOrder] | None,
    ) -> None:
        """One pass over the tensor: per chunk, its rows of Q @ `vector` into `result`
        (when given), then `columns`' weights for its rows (from those products) @ its
        rows of Q, added in order. The backend squares and multiplies each chunk as read:
        the squares never exist as a matrix."""
        info = self.checkpoint.info(self.name)
        width = self.shape[1]
        backend = kernel.backend_for(info.dtype)
        code = kernel.DTYPE_CODES[info.dtype]

        def each(first: int, rows: int, raw: npt.NDArray[np.generic], _: _Buffers) -> None:
            data = np.ascontiguousarray(raw)
            shape = {"dtype_code": code, "count": raw.size, "row_width": raw.size // rows}
            if vector is not None and result is not None:
                backend.square_products(
                    data=data, columns=width, mode=kernel.ROWS, vector=vector,
                    out=result[first : first + rows], **shape,
                )  # fmt: skip
            if columns is not None:
                weights, ordered = columns
                piece = np.empty(width)
                backend.square_products(
                    data=data, columns=width, mode=kernel.COLUMNS,
                    vector=np.ascontiguousarray(weights(first, rows)), out=piece, **shape,
                )  # fmt: skip
                ordered.add(first, piece, rows)

        self._chunks(each)

    def entries(self, rows: npt.NDArray[np.intp], columns: npt.NDArray[np.intp]) -> Vector:
        """Q[rows[k, a], columns[k, b]] as [k, a, b], gathered in one pass (each chunk
        writes only the rows it holds)."""
        found = np.zeros((*rows.shape, columns.shape[1]))
        flat = rows.ravel()

        def product(first: int, squares: Vector) -> None:
            where = np.flatnonzero((flat >= first) & (flat < first + squares.shape[0]))
            if where.size:
                channels, entries = np.unravel_index(where, rows.shape)
                found[channels, entries] = squares[flat[where, None] - first, columns[channels]]

        self._stream(product)
        return found

    def _stream(self, product: Callable[[int, Vector], None]) -> None:
        """`product(first row, squares)` for each chunk's [rows, columns] squares."""
        dtype, columns = self.checkpoint.info(self.name).dtype, self.shape[1]

        def each(first: int, rows: int, raw: npt.NDArray[np.generic], buffers: _Buffers) -> None:
            values = decode(raw, dtype, buffers.widened)
            product(first, stored_squares(values, rows, columns))

        self._chunks(each)

    def _chunks(self, each: Callable[[int, int, npt.NDArray[np.generic], _Buffers], None]) -> None:
        """`each(first row, rows, raw values, the thread's buffers)` for each of the statistics
        pass's row chunks, read on the solver's threads."""
        info = self.checkpoint.info(self.name)
        tasks = list(row_tasks(info, chunking.NUMPY_ELEMENTS))
        capacity = max(task.elements for task in tasks)
        threads = self.threads if info.numel > THREADS_ABOVE_ELEMENTS else 1

        def work(index: int, buffers: _Buffers) -> None:
            task = tasks[index]
            raw = self.checkpoint.read_raw(self.name, task.start, task.elements, buffers.raw)
            each(task.start // task.row_width, task.elements // task.row_width, raw, buffers)

        with single_threaded_blas():
            run_round_robin(range(len(tasks)), lambda: _Buffers(capacity), work, threads)


class _Buffers:
    """One thread's chunk buffers, reused for every chunk it takes."""

    def __init__(self, capacity: int) -> None:
        self.raw = read_buffer(capacity * 8)
        self.widened = np.empty(capacity, np.float32)


class _InOrder:
    """Per-chunk partial sums added in the order of their first row: a chunk that arrives
    before its turn waits (one or two while the threads keep pace)."""

    def __init__(self, total: Vector) -> None:
        self.total = total
        self.lock = threading.Lock()
        self.next = 0
        self.early: dict[int, tuple[int, Vector]] = {}

    def add(self, first: int, piece: Vector, rows: int) -> None:
        with self.lock:
            self.early[first] = (rows, piece)
            while self.next in self.early:
                count, ready = self.early.pop(self.next)
                self.total += ready
                self.next += count


def streamed_names(checkpoint: Checkpoint, plan: Mapping[str, tuple[bool, bool]]) -> set[str]:
    """The tensors of `plan` (name -> axes kept) whose axis squares are streamed: every
    [rows, columns] matrix beyond the first HELD_BYTES of them, smallest first. Squares
    with an axis summed out are vectors, always held."""
    matrices: list[tuple[int, str]] = []
    for name, (rows_kept, columns_kept) in plan.items():
        shape = checkpoint.info(name).shape
        if rows_kept and columns_kept and len(shape) >= 2 and shape[0] > 1 and shape[1] > 1:
            matrices.append((shape[0] * shape[1] * 4, name))
    budget = HELD_BYTES
    streamed: set[str] = set()
    held = 0
    for nbytes, name in sorted(matrices):
        if held + nbytes <= budget:
            held += nbytes
        else:
            streamed.add(name)
    return streamed
