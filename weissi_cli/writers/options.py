"""What every writer is told besides the tensors and their scales."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WriteOptions:
    """`record`: what the output records of the rebalance (the applied scales among it).
    `folder`: the output is a model folder (the input's files keep their names, and the
    other files of its folder are copied). `drop`: top-level entries of a torch pickle to
    leave out (its optimizer state, which rescaling would make wrong). `force`: commit may
    replace what is at the output (and beside it: an ONNX model's data files)."""

    record: Mapping[str, Any]
    folder: bool = False
    drop: tuple[str, ...] = ()
    force: bool = False
