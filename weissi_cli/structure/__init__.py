"""Structure discovery: a spec file, an exported graph, a Hugging Face config, or names."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from weissi_cli.io.checkpoint import Checkpoint
from weissi_cli.ir import Stop, Structure, Symmetry
from weissi_cli.structure.architectures import (
    describe_unknown,
    family_for,
    find_config,
    known_families,
    structure_from_config,
)
from weissi_cli.structure.heuristic import infer_structure

__all__ = ["discover", "emit_spec", "is_approximate"]


def emit_spec(structure: Structure, source: str) -> str:
    """`structure.spec.emit_spec`, imported when called (the spec module loads tomllib)."""
    from weissi_cli.structure.spec import emit_spec as emit

    return emit(structure, source)


APPROXIMATE_FLAG = "--allow-approximate"


def discover(
    checkpoint: Checkpoint, spec: Path | None = None, allow_approximate: bool = False
) -> Structure:
    """A spec file wins; an exported program's graph is exact; a known architecture's
    config.json is exact; otherwise names and shapes (an assumption)."""
    if spec is not None:
        from weissi_cli.structure.spec import structure_from_spec  # tomllib: only for specs

        return structure_from_spec(spec, checkpoint).folded()
    program = getattr(checkpoint, "program", None)
    if program is not None:
        from weissi_cli.structure.graph import structure_from_program

        structure, _ = structure_from_program(program, [info.name for info in checkpoint.tensors])
        return structure
    config = find_config(checkpoint.path)
    if config is not None:
        family = family_for(config)
        if family is not None:
            shapes = {info.name: info.shape for info in checkpoint.tensors}
            found = structure_from_config(config, family, shapes)
            return found if allow_approximate else without_approximate(found)
        guessed = infer_structure(checkpoint).folded()
        unknown = (
            f"{config.path.name} names architecture {config.label!r}, which has no exact "
            f"structure in weissi ({known_families()}): names and shapes cannot tell its "
            "attention and MLP projections apart"
        )
        return replace(
            guessed,
            assumptions=(describe_unknown(config), *guessed.assumptions),
            refusals=(unknown, *guessed.refusals),
        )
    return infer_structure(checkpoint).folded()


def is_approximate(symmetry: Symmetry) -> bool:
    """An architecture's symmetry across a non-homogeneous activation (a GELU MLP): it
    changes the function a little, so it needs consent. (A batch norm's `exact=False` is
    its eps, which the graph walk bounds; that one is rebalanced.)"""
    return not symmetry.exact and symmetry.origin.startswith("config:")


def without_approximate(structure: Structure) -> Structure:
    """Approximate symmetries become stops: reported, never rebalanced."""
    kept = tuple(s for s in structure.symmetries if not is_approximate(s))
    if len(kept) == len(structure.symmetries):
        return structure
    stops = tuple(
        Stop(
            producers=tuple(dict.fromkeys(m.tensor for m in s.members if m.exponent > 0)),
            node=s.id,
            reason=f"{s.note}; not rebalanced without {APPROXIMATE_FLAG}",
        )
        for s in structure.symmetries
        if s not in kept
    )
    return replace(structure, symmetries=kept, stops=structure.stops + stops)
