"""Structure discovery: a spec file, an exported graph, a Hugging Face config, or names."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from weissi_cli.errors import StructureError
from weissi_cli.io.checkpoint import Checkpoint
from weissi_cli.ir import Stop, Structure, Symmetry, Unassigned
from weissi_cli.structure.architectures import (
    describe_unknown,
    family_for,
    find_config,
    known_families,
    structure_from_config,
)
from weissi_cli.structure.heuristic import infer_structure
from weissi_cli.structure.source import StructureSource

if TYPE_CHECKING:
    from weissi_cli.structure.trace import TracedGraph

__all__ = ["discover", "emit_spec", "is_approximate"]


def emit_spec(structure: Structure, source: str) -> str:
    """`structure.spec.emit_spec`, imported when called (the spec module loads tomllib)."""
    from weissi_cli.structure.spec import emit_spec as emit

    return emit(structure, source)


APPROXIMATE_FLAG = "--allow-approximate"
UNREAD = "not read by the traced graph"  # the start of an unread tensor's reason


def discover(
    checkpoint: Checkpoint,
    spec: Path | StructureSource | None = None,
    allow_approximate: bool = False,
) -> Structure:
    """The checkpoint's scale symmetries, from the best source there is: a spec file; the
    model's own code (`--model`); an exported program's graph; a Hugging Face config (a
    registered family's exact structure, or the architecture traced with transformers);
    otherwise names and shapes (an assumption, labelled as one)."""
    source = StructureSource.of(spec, allow_approximate)
    if source.spec is not None:
        from weissi_cli.structure.spec import structure_from_spec  # tomllib: only for specs

        return structure_from_spec(source.spec, checkpoint).folded()
    names = [info.name for info in checkpoint.tensors]
    if source.model is not None:
        from weissi_cli.structure.trace import from_module

        traced = from_module(source.model, source.example_shapes, source.example_dtype, names)
        return structure_from_traced(traced, checkpoint)
    program = getattr(checkpoint, "program", None)
    if program is not None:
        from weissi_cli.structure.trace import from_program

        return structure_from_traced(from_program(program, names), checkpoint)
    if checkpoint.format == "onnx":  # the ONNX modules load only for ONNX files
        from weissi_cli.io.onnx_file import OnnxCheckpoint
        from weissi_cli.structure.onnx_front import from_onnx

        assert isinstance(checkpoint, OnnxCheckpoint)
        return structure_from_traced(from_onnx(checkpoint), checkpoint)
    config = find_config(checkpoint.path)
    if config is not None:
        family = family_for(config)
        if family is not None:
            shapes = {info.name: info.shape for info in checkpoint.tensors}
            found = structure_from_config(config, family, shapes)
            return found if source.allow_approximate else without_approximate(found)
        if tracing_available():
            from weissi_cli.structure.trace import from_transformers

            return structure_from_traced(from_transformers(config.path, names), checkpoint)
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


def tracing_available() -> bool:
    """Whether torch and transformers can be imported (without importing them)."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers"))


def structure_from_traced(traced: TracedGraph, checkpoint: Checkpoint) -> Structure:
    from weissi_cli.structure.engine import structure_from_graph

    # A placeholder the graph never uses is a tensor this forward does not read (a head
    # only training uses): it may depend on rescaled tensors in a way nothing here saw.
    read = {
        name
        for node in traced.graph.nodes
        if (name := traced.placeholders.get(node.name)) is not None and node.users
    }
    every = {info.name: info.shape for info in checkpoint.tensors}
    shapes = {name: shape for name, shape in every.items() if name in read}
    for node in traced.graph.nodes:
        name = traced.placeholders.get(node.name)
        if name is None or name not in every:
            continue
        value = node.meta.get("val")
        if value is not None and tuple(value.shape) != tuple(every[name]):
            raise StructureError(
                f"{name}: shape {tuple(every[name])} in the checkpoint, but the traced model "
                f"({traced.origin}) has {tuple(value.shape)}; is this the checkpoint its "
                "config.json (or --model) describes?"
            )
    structure = structure_from_graph(
        traced.graph,
        traced.placeholders,
        shapes,
        origin=traced.origin,
        aliases=traced.aliases,
        buffers=traced.buffers,
    )
    claimed = {m.tensor for s in structure.symmetries for m in s.members}
    unread = tuple(
        Unassigned(info.name, f"{UNREAD} ({traced.forward})")
        for info in checkpoint.tensors
        if info.name not in read and info.name not in claimed
    )
    return replace(
        structure,
        unassigned=structure.unassigned + unread,
        notes=traced.notes + structure.notes,
    )


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
