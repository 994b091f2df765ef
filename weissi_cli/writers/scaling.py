"""Scaling storage values by planned factors, chunk by chunk, rounding once to the storage
dtype: by the kernel's backend for the dtype (the C kernel for float32 and bfloat16, numpy
otherwise, bit-identical)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from weissi_cli import chunking, kernel
from weissi_cli.io import Checkpoint, TensorInfo
from weissi_cli.io.checkpoint import ReadBuffer, read_buffer
from weissi_cli.io.dtypes import raw_numpy_dtype
from weissi_cli.progress import Stage
from weissi_cli.scales import TensorScale
from weissi_cli.threads import run_round_robin
from weissi_cli.writers import disk

WRITER_THREADS = 2


@dataclass(frozen=True)
class ScaleTask:
    name: str
    dtype: str
    scale: TensorScale
    start: int  # first element
    count: int
    offset: int  # byte offset of the chunk in the output


def scale_chunk(raw: npt.NDArray[np.generic], task: ScaleTask) -> None:
    """Scale a chunk in place by the backend for its dtype: each value times its factor,
    rounded once (the C kernel's FMA round-to-odd product and numpy's float64 route give
    the same bits)."""
    row_width, scalar, row_factors, pattern = task.scale.chunk_arguments(task.start, task.count)
    kernel.backend_for(task.dtype).scale_chunk(
        data=raw,
        dtype_code=kernel.DTYPE_CODES[task.dtype],
        count=task.count,
        row_width=row_width,
        scalar=scalar,
        row_factors=row_factors,
        pattern=pattern,
    )


def scale_tasks(info: TensorInfo, scale: TensorScale, offset: int) -> list[ScaleTask]:
    """The chunks of one tensor: whole rows when the factor varies along the axes."""
    itemsize = raw_numpy_dtype(info.dtype).itemsize
    row_width = scale.row_width if scale.vectors else None
    pieces = chunking.row_pieces(info.numel, row_width, chunking.SCALE_ELEMENTS)
    return [
        ScaleTask(
            info.name,
            info.dtype,
            scale,
            start,
            count,
            offset + start * itemsize,
        )
        for start, count in pieces
    ]


def write_scaled(
    checkpoint: Checkpoint,
    tasks: list[ScaleTask],
    descriptor: int,
    stage: Stage,
    alongside: Callable[[], None],
) -> None:
    """Read, scale and write every task's chunk on the writer threads while `alongside`
    (the untouched bytes) runs on this one; each chunk written advances `stage`."""

    def write_chunk(task: ScaleTask, buffer: ReadBuffer) -> None:
        raw = checkpoint.read_raw(task.name, task.start, task.count, buffer)
        scale_chunk(raw, task)
        disk.write_all(descriptor, raw.data.cast("B"), task.offset)
        stage.advance(raw.nbytes)

    capacity = max((task.count for task in tasks), default=1)
    run_round_robin(
        tasks, lambda: read_buffer(capacity * 8), write_chunk, WRITER_THREADS, alongside=alongside
    )
