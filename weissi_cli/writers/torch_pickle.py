"""The torch pickle writer: the pickle again with the rescaled tensors, and the helpers
every torch-saved output shares (scaled torch tensors, a staged and fsynced torch write)."""

from __future__ import annotations

import copy
import os
import shutil
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from weissi_cli import interrupts
from weissi_cli.errors import OutputError, UsageError
from weissi_cli.io import Checkpoint
from weissi_cli.io.checkpoint import read_buffer
from weissi_cli.io.torch_pickle import (
    TensorDictCheckpoint,
    TorchCheckpoint,
    optimizer_state_message,
)
from weissi_cli.scales import TensorScale
from weissi_cli.writers import scaling
from weissi_cli.writers.options import WriteOptions
from weissi_cli.writers.pending import PendingOutput, pending_file


def write(
    checkpoint: Checkpoint,
    factors: Mapping[str, TensorScale],
    output: Path,
    options: WriteOptions,
) -> PendingOutput:
    """The pickle again with the scaled tensors (parameters staying parameters), every other
    entry as it was, and the top-level entries in `options.drop` left out. Optimizer state
    must be among them: moments of the old weights do not fit the rescaled ones."""
    if not isinstance(checkpoint, TorchCheckpoint):
        raise TypeError(f"{checkpoint.path}: not a torch pickle")
    return _write_torch(checkpoint, factors, output, options.record, options.drop)


def _write_torch(
    checkpoint: TorchCheckpoint,
    factors: Mapping[str, TensorScale],
    output: Path,
    record: Mapping[str, Any],
    drop: tuple[str, ...],
) -> PendingOutput:
    import torch

    kept_optimizer = [key for key in checkpoint.optimizer_entries if key not in drop]
    if kept_optimizer:
        raise UsageError(optimizer_state_message(checkpoint.path, tuple(kept_optimizer)))
    # An OrderedDict, like torch's own state dicts, so the record can ride in `_metadata`
    # (which load_state_dict reads per module prefix) instead of adding a key.
    state: Any = OrderedDict()
    for name, value in checkpoint.state_dict.items():
        if name in drop and checkpoint.wrapper_key is None:
            continue
        if name not in factors:
            state[name] = checkpoint.real(value)
            continue
        scaled = scaled_torch_tensor(checkpoint, name, factors[name])
        if isinstance(value, torch.nn.Parameter):
            scaled = torch.nn.Parameter(scaled, requires_grad=value.requires_grad)
        elif value.requires_grad:
            scaled.requires_grad_()
        state[name] = scaled
    metadata = getattr(checkpoint.state_dict, "_metadata", None)
    state._metadata = OrderedDict(metadata) if metadata is not None else OrderedDict()
    state._metadata["weissi"] = dict(record)
    if checkpoint.wrapper_key is None:
        root: Any = state
    else:
        root = copy.copy(checkpoint.root)  # its own type (e.g. OrderedDict), keys in order
        for key in list(root):
            if key in drop:
                del root[key]
            else:
                root[key] = state if key == checkpoint.wrapper_key else checkpoint.real(root[key])
    return write_with_torch(
        output,
        lambda handle: torch.save(root, handle, _use_new_zipfile_serialization=checkpoint.is_zip),
    )


def write_with_torch(output: Path, save: Callable[[Any], None]) -> PendingOutput:
    """`save(handle)` into a fresh staged file for `output`, fsynced, pending commit."""
    pending = pending_file(output)
    try:
        with open(pending.readable_path, "wb") as handle:
            try:
                save(handle)
            except RuntimeError as error:  # torch's writers report I/O failures this way,
                # and an interrupt raised while they call back into Python as well
                interrupts.reraise_if_interrupted()
                raise OutputError(_torch_write_failure(output, error)) from None
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        pending.discard()
        raise
    return pending


def _torch_write_failure(output: Path, error: RuntimeError) -> str:
    free = shutil.disk_usage(output.parent).free
    if free < 1 << 20:
        return f"{output}: no space left on the device ({free} bytes free); nothing was written"
    detail = str(error).strip().splitlines()[0] if str(error).strip() else "RuntimeError"
    return f"{output}: torch could not write the file ({detail}); nothing was written"


def scaled_torch_tensor(checkpoint: TensorDictCheckpoint, name: str, scale: TensorScale) -> Any:
    import torch

    info = checkpoint.info(name)
    result = torch.empty(info.shape, dtype=getattr(torch, info.dtype))
    flat = result.reshape(-1)
    target = (
        flat.view(torch.int16).numpy().view(np.uint16)
        if result.dtype == torch.bfloat16
        else flat.numpy()
    )
    tasks = scaling.scale_tasks(info, scale, 0)
    buffer = read_buffer(max((task.count for task in tasks), default=1) * info.itemsize)
    own_buffer = np.frombuffer(buffer, np.uint8).ctypes.data
    for task in tasks:
        # A reader from a file fills the buffer; one holding the tensor in memory gives a
        # view of it, which is copied: the input is never scaled in place.
        raw = checkpoint.read_raw(name, task.start, task.count, buffer)
        if raw.ctypes.data != own_buffer:
            raw = raw.copy()
        scaling.scale_chunk(raw, task)
        target[task.start : task.start + task.count] = raw
    return result
