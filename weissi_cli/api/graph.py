"""`graph`: the structure weissi finds, without reading any tensor data."""

from __future__ import annotations

import os
from pathlib import Path

from weissi_cli.io import open_checkpoint
from weissi_cli.report.common import Source
from weissi_cli.report.graph import GraphReport
from weissi_cli.structure import discover, emit_spec
from weissi_cli.structure.source import StructureSource


def graph_checkpoint(
    path: str | os.PathLike[str], spec: str | os.PathLike[str] | StructureSource | None = None
) -> GraphReport:
    """The structure weissi finds in the checkpoint at `path` (its chains, its scale
    symmetries with their members, the tensors left out and why), without reading any
    tensor data; `spec`: a structure spec file, or a `StructureSource`."""
    path = Path(path)
    with open_checkpoint(path) as checkpoint:
        structure = discover(checkpoint, StructureSource.of(spec))
        return GraphReport(
            source=Source.of(checkpoint, str(path)),
            structure=structure,
            dtypes={info.name: info.dtype for info in checkpoint.tensors},
            spec=emit_spec(structure, path.name),
            warnings=(
                *checkpoint.notes,
                *structure.assumptions,
                *(f"rebalance refuses this guessed structure: {r}" for r in structure.refusals),
            ),
        )
