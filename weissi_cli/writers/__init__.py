"""Writing a rescaled copy of a checkpoint: streamed, same format and dtypes, atomic.

One module per output format implements `Writer`; `WRITERS` chooses by the input's format.
Every tensor without a scale is copied byte for byte; a scaled tensor is multiplied and
rounded once to its storage dtype (see `scaling`). Output goes to a staging folder beside
the destination and is put in place only by `PendingOutput.commit`, after verification.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from weissi_cli.errors import UsageError
from weissi_cli.io import Checkpoint
from weissi_cli.output_files import output_error
from weissi_cli.scales import TensorScale, uniform
from weissi_cli.writers import exported, onnx, safetensors, torch_pickle
from weissi_cli.writers.options import WriteOptions
from weissi_cli.writers.pending import PendingOutput, check_output_path, input_files

__all__ = [
    "WRITERS",
    "PendingOutput",
    "WriteOptions",
    "Writer",
    "check_output_path",
    "input_files",
    "write_rescaled",
]


class Writer(Protocol):
    """Writes `checkpoint` with each tensor in `factors` rescaled, to a staged output that
    commit puts at `output`."""

    def __call__(
        self,
        checkpoint: Checkpoint,
        factors: Mapping[str, TensorScale],
        output: Path,
        options: WriteOptions,
    ) -> PendingOutput: ...


# The input's format -> the writer of that format.
WRITERS: dict[str, Writer] = {
    "safetensors": safetensors.write,
    "safetensors-sharded": safetensors.write,
    "torch": torch_pickle.write,
    "torch.export": exported.write,
    "onnx": onnx.write,
}

Scale = TensorScale | float


def write_rescaled(
    checkpoint: Checkpoint,
    scales: Mapping[str, Scale],
    output: Path,
    record: Mapping[str, Any],
    output_format: str = "same",
    folder: bool = False,
    force: bool = False,
    drop: tuple[str, ...] = (),
) -> PendingOutput:
    """Write `checkpoint` with each named tensor multiplied by its scale, pending commit
    (which replaces what is at `output` only with `force`).

    `output_format="safetensors"` writes just the tensors (of a pickle or an exported
    program) as a safetensors file instead of the input's own format; see `WriteOptions`
    for the rest."""
    options = WriteOptions(record, folder=folder, drop=drop, force=force)
    factors: dict[str, TensorScale] = {}
    for name, scale in scales.items():
        if name not in checkpoint:
            raise ValueError(f"no tensor {name!r} to scale in {checkpoint.path}")
        info = checkpoint.info(name)
        factors[name] = scale if isinstance(scale, TensorScale) else uniform(info.shape, scale)
        if factors[name].shape != info.shape:
            raise ValueError(
                f"scale for {name!r} has shape {factors[name].shape}, not {info.shape}"
            )
    for name in factors:
        tied = checkpoint.shared_storage(name)
        if tied and any(not _same_scale(factors.get(other), factors[name]) for other in tied):
            raise UsageError(
                f"{checkpoint.path}: {name} shares memory with {', '.join(tied)}; they cannot take "
                "different scales"
            )
    if output_format == "safetensors" and not checkpoint.format.startswith("safetensors"):
        writer: Writer = safetensors.write_tensors
    elif checkpoint.format in WRITERS:
        writer = WRITERS[checkpoint.format]
    else:
        raise UsageError(
            f"{checkpoint.path}: writing {checkpoint.format} checkpoints is not supported"
        )
    try:
        pending = writer(checkpoint, factors, output, options)
    except OSError as error:
        raise output_error(output, error) from None
    pending.force = options.force
    return pending


def _same_scale(first: TensorScale | None, second: TensorScale) -> bool:
    if first is None:
        return False
    return bool(np.array_equal(np.asarray(first.whole()), np.asarray(second.whole())))
