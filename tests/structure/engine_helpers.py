"""Helpers for the engine's tests: export a module, find its symmetries, and check them by
running the module itself before and after a random rescaling."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import torch

from tests.exported_models import member_factors
from weissi_cli.ir import Structure, Symmetry
from weissi_cli.structure.engine import structure_from_graph

MemberKey = tuple[str, int, int, int, int]  # tensor, axis, exponent, block, offset


def engine_structure(model: torch.nn.Module, args: tuple[Any, ...]) -> Structure:
    """The engine's symmetries of `model` exported on `args` (float64)."""
    program = torch.export.export(model, args, strict=False)
    signature = program.graph_signature
    placeholders = dict(signature.inputs_to_parameters)
    placeholders.update(signature.inputs_to_buffers)
    used = {n.name for n in program.graph.nodes if n.op == "placeholder" and n.users}
    read = {t for p, t in placeholders.items() if p in used}
    state = model.state_dict()
    shapes = {name: tuple(value.shape) for name, value in state.items() if name in read}
    return structure_from_graph(
        program.graph, placeholders, shapes, buffers=frozenset(signature.inputs_to_buffers.values())
    )


def keys(symmetry: Symmetry) -> tuple[int, frozenset[MemberKey]]:
    """A symmetry as (size, members), with the sign chosen so that comparisons ignore which
    side the engine called +1."""
    members = frozenset((m.tensor, m.axis, m.exponent, m.block, m.offset) for m in symmetry.members)
    flipped = frozenset((t, a, -e, b, o) for t, a, e, b, o in members)
    return symmetry.size, min(members, flipped, key=sorted)


def channels(symmetries: Iterable[Symmetry]) -> set[frozenset[tuple[str, int, int, int]]]:
    """Every channel of every symmetry as its set of (tensor, axis, index, exponent), sign
    normalised: two structures that group channels differently compare equal."""
    found = set()
    for symmetry in symmetries:
        for channel in range(symmetry.size):
            entries = frozenset(
                (m.tensor, m.axis, m.offset + channel * m.block + k, m.exponent)
                for m in symmetry.members
                for k in range(m.block)
            )
            flipped = frozenset((t, a, i, -e) for t, a, i, e in entries)
            found.add(min(entries, flipped, key=sorted))
    return found


def _outputs(model: torch.nn.Module, args: tuple[Any, ...]) -> torch.Tensor:
    with torch.no_grad():
        result = model(*args)
    if hasattr(result, "logits"):
        result = result.logits
    if isinstance(result, tuple | list):
        return torch.cat([r.reshape(-1) for r in result])
    return result.reshape(-1)


def rescaled_change(
    model: torch.nn.Module,
    args: tuple[Any, ...],
    symmetries: Iterable[Symmetry],
    seed: int = 0,
    spread: float = 1.0,
) -> float:
    """The largest relative change of the outputs after scaling every symmetry by random
    positive factors (e^N(0, spread²)), run with the module's own code."""
    symmetries = list(symmetries)
    state = {name: value.clone() for name, value in model.state_dict().items()}
    shapes = {name: tuple(value.shape) for name, value in state.items()}
    generator = torch.Generator().manual_seed(seed)
    scales = {
        s.id: torch.exp(spread * torch.randn(s.size, generator=generator, dtype=torch.float64))
        for s in symmetries
    }
    factors = member_factors(symmetries, scales, shapes)
    before = _outputs(model, args)
    try:
        model.load_state_dict(
            {n: v * factors[n].to(v.dtype) if n in factors else v for n, v in state.items()}
        )
        after = _outputs(model, args)
    finally:
        model.load_state_dict(state)
    return float((after - before).abs().max() / before.abs().max())


ROUNDING = 1e-10  # float64 outputs of these small models agree to ~1e-15 when unchanged


def assert_exact_and_tight(
    model: torch.nn.Module, args: tuple[Any, ...], structure: Structure, tolerance: float = ROUNDING
) -> None:
    """Scaling along every exact symmetry keeps the outputs (to float64 rounding), and
    leaving out any one member of a symmetry changes them, unless that member is inert on
    its own (a key's bias: softmax ignores a shift common to all keys) — so no rule is too
    permissive."""
    exact = [s for s in structure.symmetries if s.exact]
    assert rescaled_change(model, args, exact) < tolerance
    for symmetry in exact:
        for dropped in range(len(symmetry.members)):
            members = symmetry.members[:dropped] + symmetry.members[dropped + 1 :]
            broken = replace(symmetry, members=members)
            change = rescaled_change(model, args, [broken], seed=dropped + 1, spread=3.0)
            if change > tolerance:
                continue
            alone = replace(symmetry, members=(symmetry.members[dropped],))
            inert = rescaled_change(model, args, [alone], seed=dropped + 1, spread=3.0)
            assert inert < tolerance, (symmetry.id, symmetry.members[dropped])
