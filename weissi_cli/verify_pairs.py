"""Reading a tensor's rows from two checkpoints side by side, in blocks, on two threads."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from weissi_cli import chunking, kernel
from weissi_cli.io.checkpoint import Checkpoint, ReadBuffer, TensorInfo, read_buffer
from weissi_cli.io.dtypes import decode, raw_numpy_dtype
from weissi_cli.numpy_reduce import ChunkReducer, Partial
from weissi_cli.scales import NO_FACTORS
from weissi_cli.stats import EXACT_BELOW, TensorStats, combine
from weissi_cli.threads import run_round_robin

FloatArray = npt.NDArray[np.floating]


@dataclass(frozen=True)
class Block:
    name: str
    row: int
    rows: int
    width: int


def row_blocks(name: str, info: TensorInfo) -> tuple[list[Block], int]:
    """A tensor's rows in blocks of about chunking.NUMPY_ELEMENTS values (at least one row
    each), and the row width."""
    rows = info.shape[0] if info.shape else 1
    width = info.numel // rows if rows else 0
    pieces = chunking.row_pieces(rows * width, width, chunking.NUMPY_ELEMENTS) if width else []
    blocks = [Block(name, start // width, count // width, width) for start, count in pieces]
    if rows and not width:  # rows of no values: one block, for their statistics
        blocks = [Block(name, 0, rows, 0)]
    return blocks, width


class PairBuffers:
    """One thread's buffers for a block of each file (rows of `width`): raw, and decoded to
    float32."""

    def __init__(self, width: int) -> None:
        self.capacity = max(chunking.NUMPY_ELEMENTS, width)  # a row may be wider than a block
        self.buffers = [read_buffer(self.capacity * 8) for _ in range(2)]
        self.widened = [np.empty(self.capacity, np.float32) for _ in range(2)]


class PairReader:
    """Row blocks of a tensor from both files, decoded, on two threads; measures the
    rewritten side as it goes."""

    def __init__(
        self,
        original: Checkpoint,
        rewritten: Checkpoint,
        compute: type[np.floating],
        threads: int = 2,
    ) -> None:
        self.original, self.rewritten, self.compute = original, rewritten, compute
        self.threads = threads
        self.partials: dict[str, list[Partial]] = defaultdict(list)
        self._lock = threading.Lock()

    def for_each_block(
        self, name: str, work: Callable[[Block, FloatArray, FloatArray], None]
    ) -> None:
        """Call `work(block, old rows, new rows)` for every row block of `name`."""
        info = self.original.info(name)
        blocks, width = row_blocks(name, info)
        exact = info.numel < EXACT_BELOW
        partials = self.partials[name]  # list.append is atomic under the GIL

        new_dtype = self.rewritten.info(name).dtype
        backend = kernel.backend_for(new_dtype, exact=exact)

        def read_and_work(block: Block, state: PairBuffers) -> None:
            start, size = block.row * width, block.rows * width
            old = self._read(self.original, name, start, size, state.buffers[0], state.widened[0])
            raw = self.rewritten.read_raw(name, start, size, state.buffers[1])
            # The values read_raw returned: a reader may hand back its own memory (a torch
            # pickle's tensor) instead of filling the buffer it was given.
            raw = np.ascontiguousarray(raw).view(raw_numpy_dtype(new_dtype))
            totals = backend.reduce_chunk(
                data=raw,
                dtype_code=kernel.DTYPE_CODES[new_dtype],
                count=size,
                row_width=0,
                columns=1,
                mode=kernel.NO_AXES,
                out=NO_FACTORS,
            )
            partials.append(Partial(*totals))
            new = decode(raw, new_dtype, state.widened[1]).astype(self.compute, copy=False)
            shape = (block.rows, width)
            work(block, old.reshape(shape), new.reshape(shape))

        run_round_robin(blocks, lambda: PairBuffers(width), read_and_work, self.threads)

    def vector(self, name: str) -> tuple[FloatArray, FloatArray]:
        """A whole (small) tensor from both files, flattened."""
        info = self.original.info(name)
        old = self._read(self.original, name, 0, info.numel)
        new = self._read(self.rewritten, name, 0, info.numel)
        self.partials[name].append(
            ChunkReducer(new.size).reduce(new, exact=info.numel < EXACT_BELOW)
        )
        return old, new

    def _read(
        self,
        checkpoint: Checkpoint,
        name: str,
        start: int,
        count: int,
        buffer: ReadBuffer | None = None,
        widened: FloatArray | None = None,
    ) -> FloatArray:
        dtype = checkpoint.info(name).dtype
        raw = checkpoint.read_raw(name, start, count, buffer)
        return decode(raw, dtype, widened).astype(self.compute, copy=False)

    def measured(self) -> dict[str, TensorStats]:
        return {
            name: combine(self.rewritten.info(name), parts) for name, parts in self.partials.items()
        }
