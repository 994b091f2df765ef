"""The exported-program writer: the same `.pt2` program with rescaled parameters."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from weissi_cli.io import Checkpoint
from weissi_cli.io.exported import ExportedCheckpoint
from weissi_cli.scales import TensorScale
from weissi_cli.writers.options import WriteOptions
from weissi_cli.writers.pending import PendingOutput
from weissi_cli.writers.torch_pickle import scaled_torch_tensor, write_with_torch


def write(
    checkpoint: Checkpoint,
    factors: Mapping[str, TensorScale],
    output: Path,
    options: WriteOptions,
) -> PendingOutput:
    """The same program with rescaled parameters: a fresh copy read the way the input was
    (nothing from the archive unpickled or run), its tensors overwritten in place, saved with
    the record as an extra file."""
    import torch

    if not isinstance(checkpoint, ExportedCheckpoint):
        raise TypeError(f"{checkpoint.path}: not an exported program")
    program = checkpoint.program_to_save()
    with torch.no_grad():
        for name, scale in factors.items():
            target = (
                program.state_dict[name] if name in program.state_dict else program.constants[name]
            )
            target.copy_(scaled_torch_tensor(checkpoint, name, scale))
    extra = {"weissi.json": json.dumps(options.record)}
    return write_with_torch(
        output, lambda handle: torch.export.save(program, handle, extra_files=extra)
    )
