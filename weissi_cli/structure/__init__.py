"""Structure discovery: a spec file when given, otherwise the name/shape heuristic."""

from __future__ import annotations

from pathlib import Path

from weissi_cli.io.checkpoint import Checkpoint
from weissi_cli.ir import Structure
from weissi_cli.structure.heuristic import infer_structure
from weissi_cli.structure.spec import emit_spec, structure_from_spec

__all__ = ["discover", "emit_spec"]


def discover(checkpoint: Checkpoint, spec: Path | None = None) -> Structure:
    """A spec file wins; an exported program's graph is exact; otherwise names and shapes."""
    if spec is not None:
        return structure_from_spec(spec, checkpoint).folded()
    program = getattr(checkpoint, "program", None)
    if program is not None:
        from weissi_cli.structure.graph import structure_from_program

        structure, _ = structure_from_program(program, [info.name for info in checkpoint.tensors])
        return structure
    return infer_structure(checkpoint).folded()
